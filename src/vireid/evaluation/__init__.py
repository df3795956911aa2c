"""Evaluation: exact metrics, protocol trials, re-ranking, the protocol runner and reports.

``evaluate`` / ``evaluate_similarity`` / ``evaluate_embeddings`` score one query set against one gallery;
``run_protocol`` runs every trial of a protocol for any embedder and returns a ``ProtocolResult``
(mean +- std, per-trial values, metadata, table, JSON, CMC plot). Re-ranking is off unless a
``RerankOptions`` is passed, and is then labelled everywhere.
"""

from vireid.evaluation.metrics import (
    DEDUPLICATED_CMC_RULES,
    RULES,
    PerQueryMetrics,
    RetrievalResult,
    cmc_variant,
    evaluate,
    evaluate_embeddings,
    evaluate_similarity,
    per_query_metrics,
)
from vireid.evaluation.report import ProtocolResult, TrialResult, format_metric, summary_table
from vireid.evaluation.rerank import RerankOptions, k_reciprocal_distance
from vireid.evaluation.runner import ImageEmbedder, TextPairEmbedder, run_protocol

__all__ = [
    "DEDUPLICATED_CMC_RULES",
    "RULES",
    "ImageEmbedder",
    "PerQueryMetrics",
    "ProtocolResult",
    "RerankOptions",
    "RetrievalResult",
    "TextPairEmbedder",
    "TrialResult",
    "cmc_variant",
    "evaluate",
    "evaluate_embeddings",
    "evaluate_similarity",
    "format_metric",
    "k_reciprocal_distance",
    "per_query_metrics",
    "run_protocol",
    "summary_table",
]
