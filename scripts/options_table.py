"""Regenerate the option table of docs/training.md from the declarations in src/qtvit/train/config.py:
``PYTHONPATH=src python scripts/options_table.py`` (tests/test_options.py fails while the table is out of date)."""
from pathlib import Path

from qtvit._io import write_text
from qtvit.options import options_table, replace_table
from qtvit.train.config import TrainConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"

if __name__ == "__main__":
    write_text(DOC, replace_table(DOC.read_text(), options_table(TrainConfig)))
    print(f"wrote the option table of {DOC}")
