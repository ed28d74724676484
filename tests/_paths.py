"""Where the team's shared parity fixtures are: beside the checkout (CI clones main with ../shared beside it)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shared_fixtures() -> Path:
    for candidate in (os.environ.get("QTVIT_SHARED_FIXTURES"), REPO.parent / "shared" / "fixtures",
                      Path("/work/shared/fixtures")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return REPO.parent / "shared" / "fixtures"


SHARED_FIXTURES = _shared_fixtures()
