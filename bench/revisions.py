"""Load the project's modules from another git revision beside this working tree's, in one process,
so that a bench can time or compare both on the same data under the same machine load."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("curate", "filters")


def _forget() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in _PACKAGES]:
        del sys.modules[name]


def load(revision: str | None, *modules: str) -> dict:
    """{name: module} for `modules` imported from `revision` (a git revision, or None for this
    working tree). The module objects keep working after their names leave sys.modules, so the
    modules of several revisions can live side by side; the caller's own modules are put back
    (so a test process keeps one CurateError class)."""
    tree = ROOT
    tmp = None
    before = {name: m for name, m in sys.modules.items() if name.split(".")[0] in _PACKAGES}
    if revision is not None:
        tmp = tempfile.TemporaryDirectory()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, *_PACKAGES],
                                 check=True, capture_output=True).stdout
        tar_path = Path(tmp.name) / "tree.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp.name, filter="data")
        tree = Path(tmp.name)
    sys.path.insert(0, str(tree))
    _forget()
    try:
        return {name: importlib.import_module(name) for name in modules}
    finally:
        sys.path.remove(str(tree))
        _forget()
        sys.modules.update(before)  # the caller's own modules again (its classes stay the ones it has)
        if tmp is not None:
            tmp.cleanup()
