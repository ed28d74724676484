"""``python -m qtvit`` (also under torchrun: ``torchrun --nproc_per_node=N -m qtvit train ...``)."""
import sys

from .cli import main

sys.exit(main())
