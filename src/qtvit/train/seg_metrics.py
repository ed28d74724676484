"""Kept importable: moved to qtvit.tasks.seg_metrics."""
from ..tasks.seg_metrics import SegmentationMetrics, scores_from_confusion, upsample_logits  # noqa: F401
