"""Evaluation of pretrained backbones: cached frozen features, kNN, linear probes, low-shot subsets,
fine-tuning and the online kNN monitor (docs/evaluation.md)."""

from openseer.eval.features import Features, available_layers, extract_features, feature_extractor
from openseer.eval.knn import check_label_sets, format_table, knn_classify, run_knn
from openseer.eval.linear import linear_probe, stratified_split
from openseer.eval.lowshot import class_balanced_subset, run_lowshot

__all__ = [
    "Features",
    "available_layers",
    "check_label_sets",
    "class_balanced_subset",
    "extract_features",
    "feature_extractor",
    "format_table",
    "knn_classify",
    "linear_probe",
    "run_knn",
    "run_lowshot",
    "stratified_split",
]
