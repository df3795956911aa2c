"""Evaluation: exact metrics, protocol trials, re-ranking, the protocol runner and reports."""

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

__all__ = [
    "DEDUPLICATED_CMC_RULES",
    "RULES",
    "PerQueryMetrics",
    "RetrievalResult",
    "cmc_variant",
    "evaluate",
    "evaluate_embeddings",
    "evaluate_similarity",
    "per_query_metrics",
]
