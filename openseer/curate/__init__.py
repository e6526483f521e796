"""``openseer curate``: deduplication, evaluation-set leakage removal and balanced sampling of an image pool
(docs/curation.md). `curate` is the whole workflow; the stages are usable on their own."""

from openseer.curate.options import CurateOptions
from openseer.curate.workflow import curate

__all__ = ["CurateOptions", "curate"]
