"""Kept importable (viz_seg.py imports from here): segmentation's evaluation and masks moved to qtvit.tasks."""
from ..tasks import get_task
from ..tasks.seg_evaluate import evaluate_segmentation  # noqa: F401
from ..tasks.seg_metrics import main_logits  # noqa: F401
from ..tasks.seg_predict import seg_palette, segment_images  # noqa: F401
from ..tasks.segmentation import eval_batch_size  # noqa: F401


def open_task_data(task: str, data, num_classes: int | None = None):
    """The dataset `data` names, read as `task` reads it (``qtvit.tasks.get_task(task).open_data``)."""
    return get_task(task).open_data(data, num_classes)
