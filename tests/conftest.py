import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# beside the repository; CURATE_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("CURATE_SHARED_DATA") or ROOT.parent / "shared" / "data")
sys.path.insert(0, str(ROOT))  # so `tests.servers` imports when the package is installed non-editable


def shared(*parts: str) -> Path:
    """A file of the real public datasets beside the repo (tests and benchmarks only)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


def run_recipe_cli(recipe: str, out: Path, timeout: int = 1700) -> dict:
    """Run a recipe (a path from the repo root, e.g. "recipes/magpie.yaml") through the real CLI in
    a subprocess, as a user would, and return its report.json."""
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "run", recipe, "--out", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "report.json").read_text())


def assert_funnel_adds_up(steps: list[dict], filters_from: int = 2) -> None:
    """Each step starts from the rows the one before it kept, and each filter (from index
    `filters_from` of report["steps"]) keeps or drops, with a reason, every row it got."""
    for prev, s in zip(steps, steps[1:]):
        assert s["rows_in"] == prev["rows_out"], (prev, s)
    for s in steps[filters_from:]:
        assert s["rows_in"] == s["rows_out"] + sum(s["dropped"].values()), s
