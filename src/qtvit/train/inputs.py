"""Kept importable: moved to qtvit.tasks.inputs."""
from ..tasks.inputs import autocast, model_input  # noqa: F401
