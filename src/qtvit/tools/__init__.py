"""The applications built on the library: ONNX export (``tools.export``), speed and memory benchmarks
(``tools.bench``), the kernel study (``tools.study``) and the figures (``tools.figures``), with what they share:
timing and peak memory (``tools.measure``) and the results writer (``tools.results``: CSV with a provenance line,
figures).

The import direction is one way: the applications import the library, never the reverse (attention, layers, models,
data, checkpoints, tasks and train import nothing from here; tests/test_import_direction.py checks it)."""
