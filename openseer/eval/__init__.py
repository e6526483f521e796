"""Evaluation of frozen features: extraction once, then kNN (and later linear probes, low-shot)."""

from openseer.eval.features import Features, extract_features
from openseer.eval.knn import check_label_sets, format_table, knn_classify, run_knn

__all__ = ["Features", "check_label_sets", "extract_features", "format_table", "knn_classify", "run_knn"]
