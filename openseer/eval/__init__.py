"""Evaluation of pretrained backbones: cached frozen features, kNN, linear probes, low-shot subsets,
fine-tuning and the online kNN monitor (docs/evaluation.md). `openseer.eval.pipeline` is the path from a
checkpoint to a result; `openseer.eval.settings.EvalSettings` says how images are prepared; `openseer.eval.registry`
holds every evaluation (adding one: docs/evaluation.md)."""

from openseer.eval.features import Features, available_layers, extract_features, feature_extractor, source_features
from openseer.eval.knn import align_labels, check_label_sets, format_table, knn_classify, knn_result
from openseer.eval.linear import linear_probe, stratified_split
from openseer.eval.lowshot import class_balanced_subset, run_lowshot
from openseer.eval.pipeline import frozen_pair, knn_from_checkpoint, random_init_backbone, run_evaluation
from openseer.eval.registry import Evaluation, SuiteRole, get_evaluation, load_evaluations, register_evaluation
from openseer.eval.settings import EvalSettings

__all__ = [
    "EvalSettings",
    "Evaluation",
    "Features",
    "SuiteRole",
    "align_labels",
    "available_layers",
    "check_label_sets",
    "class_balanced_subset",
    "extract_features",
    "feature_extractor",
    "format_table",
    "frozen_pair",
    "get_evaluation",
    "knn_classify",
    "knn_from_checkpoint",
    "knn_result",
    "linear_probe",
    "load_evaluations",
    "random_init_backbone",
    "register_evaluation",
    "run_evaluation",
    "run_lowshot",
    "source_features",
    "stratified_split",
]
