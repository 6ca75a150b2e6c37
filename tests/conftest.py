import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))  # so `tests.servers` imports when the package is installed non-editable


def shared(*parts: str) -> Path:
    """A file of the real public datasets beside the repo (tests and benchmarks only)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path
