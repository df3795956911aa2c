"""Datasets: readers of the official layouts, the synthetic generator, samplers and transforms."""

from vireid.data.records import CaptionRecord, ImageRecord, Modality, relabel

__all__ = ["CaptionRecord", "ImageRecord", "Modality", "relabel"]
