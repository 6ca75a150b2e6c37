"""The output folder of a run: one run at a time, a list of what runs wrote, a mark until done.

    <out>/.curate.lock       held (fcntl.flock) by the run writing the folder; says who holds it
    <out>/_MANIFEST.json     every file a curate run wrote here, relative to <out>
    <out>/_INCOMPLETE.json   from the moment a run starts changing the folder until it has finished

Why each:
- A run replaces or deletes only files the manifest lists, and it lists a file before writing it,
  so a kill cannot leave one of ours unlisted. A folder that holds anything else and has no
  manifest is refused, so `--out .` never touches the user's own files. A folder from before
  manifests (recipe.yaml and steps/) is adopted: its files with the names runs write are listed.
- Two runs never write one folder at once. The lock is released by the kernel when its holder
  dies, so a killed run never blocks the next one; the file stays (deleting a lock file races).
- A folder whose last run was killed or failed says so: its files may come from two runs (new
  step outputs beside the old card), so `curate report` and `curate publish` refuse it and
  `curate inspect` warns, until a rerun has finished.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from curate.errors import CurateError
from curate.io import temp_file_target, write_json
from curate.recipe import redact_command

LOCK = ".curate.lock"
MANIFEST = "_MANIFEST.json"
INCOMPLETE = "_INCOMPLETE.json"
OWN = {LOCK, MANIFEST, INCOMPLETE}  # the folder's bookkeeping, always ours
# Files a run writes, by name: how a folder made before manifests existed is recognised and adopted.
RUN_FILES = ("recipe.yaml", "records.parquet", "rejects.parquet", "report.json", "report.md", "report.html",
             "README.md", "data/train.parquet", "data/train.jsonl", "data/validation.parquet",
             "data/validation.jsonl")
RUN_TREES = ("steps", "cache", "gx")  # every file below these, in such a folder
log = logging.getLogger(__name__)


class RunFolder:
    """A run's output folder, held under its lock (see `locked`)."""

    def __init__(self, path: Path):
        self.path = path
        self.files: set[str] = set()  # relative POSIX paths a run wrote (the manifest)
        self._fd: int | None = None
        self._claiming = threading.Lock()  # the end of a run writes its files from several threads

    # Ownership -----------------------------------------------------------------------------------
    def rel(self, path: str | Path) -> str:
        """`path` (a path below the folder, built from `self.path`) relative to the folder."""
        return Path(path).relative_to(self.path).as_posix()

    def wrote(self, path: str | Path) -> bool:
        """Did a curate run write this file (so a run may replace or delete it)?"""
        return self.rel(path) in self.files

    def claim(self, paths: Iterable[str | Path]) -> None:
        """List files this run may write, before it writes them. A file already there that no run
        wrote is the user's: refuse rather than overwrite it."""
        with self._claiming:
            new = {self.rel(p) for p in paths} - self.files
            foreign = sorted(r for r in new if (self.path / r).exists())
            if foreign:
                raise CurateError(f"{self.path}: {', '.join(foreign[:5])} already exist(s) but no curate run wrote "
                                  "them; move them away or choose another --out (curate never overwrites files it did not write)")
            if new:
                self.files |= new
                self._save_manifest()

    def _save_manifest(self) -> None:
        write_json({"about": "files curate runs wrote in this folder; only these are ever replaced or deleted",
                    "files": sorted(self.files)}, self.path / MANIFEST)

    def _load_manifest(self) -> None:
        path = self.path / MANIFEST
        if not path.exists():
            self.files = _recognised_files(self.path) if _is_old_run_folder(self.path) else set()
            if self.files:
                log.warning("%s: a run folder from before manifests; adopting its %d run files (others are left alone)",
                            self.path, len(self.files))
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = data["files"]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise TypeError("'files' is not a list of paths")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Rebuilt from the names runs write: files beyond those are then never deleted.
            log.warning("%s: unreadable (%s); rebuilding it from the run files present", path, exc)
            self.files = _recognised_files(self.path)
            return
        # Only plain relative paths inside the folder: a hand-edited manifest must not point outside.
        self.files = {f for f in files if _inside(f)}

    # Lock ----------------------------------------------------------------------------------------
    def _acquire(self, purpose: str) -> None:
        lock = self.path / LOCK
        # who we are, ready before the lock is taken: the window in which a second run finds the lock
        # held but not yet signed (holder() waits it out) is one truncate and one write
        signed = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                             "doing": purpose, "command": redact_command(sys.argv)}).encode()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CurateError(f"{self.path} is in use: {holder(self.path)}. Wait for it to finish, "
                              "or give this run another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, signed)
        self._fd = fd

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    # A run ---------------------------------------------------------------------------------------
    def start(self, recipe: str) -> None:
        """Mark the folder incomplete, then clear the temporary files a killed run left behind
        (only those of files runs write). Call it after `claim`, just before the first write."""
        write_json({"recipe": recipe, "pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                    "about": "the run writing this folder has not finished; its files may come from two runs"},
                   self.path / INCOMPLETE)
        steps = sorted(p for p in (self.path / "steps").rglob("*") if p.is_dir())  # step folders, their parts
        for folder in [self.path, self.path / "data", self.path / "gx", *steps]:
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                target = temp_file_target(f.name)
                if target and f.is_file() and self.wrote(folder / target):
                    f.unlink()

    def finish(self) -> None:
        """The run has finished: drop listed files that are gone, clear the incomplete mark."""
        self.files = {f for f in self.files if (self.path / f).exists()}
        self._save_manifest()
        (self.path / INCOMPLETE).unlink(missing_ok=True)


@contextmanager
def locked(out: str | Path, purpose: str = "run", create: bool = True) -> Iterator[RunFolder]:
    """Hold `out` for a run (or, with create=False, for rewriting an existing run's files).

    Refused: a folder holding files that are not a curate run's, and a folder another run holds."""
    folder = RunFolder(Path(out))
    if folder.path.exists() and not folder.path.is_dir():
        raise CurateError(f"{folder.path}: not a folder")
    if not create and not folder.path.is_dir():
        raise CurateError(f"{folder.path}: no such folder")
    _refuse_foreign(folder.path)  # before creating anything in it
    folder.path.mkdir(parents=True, exist_ok=True)
    folder._acquire(purpose)
    try:
        _refuse_foreign(folder.path)  # again, now that no other run can change it
        folder._load_manifest()
        yield folder
    finally:
        folder._release()


def incomplete(out: str | Path) -> str | None:
    """Why the folder's files cannot be trusted to come from one finished run, or None if they can."""
    out = Path(out)
    marker = out / INCOMPLETE
    if not marker.exists():
        return None
    if _is_held(out):
        return f"a curate run is writing it now ({holder(out)})"
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        who = f"the run of {info['recipe']!r} started {info['started']} (pid {info['pid']} on {info['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        who = "its last run"
    return (f"{who} did not finish (killed or failed), so its files may come from two runs; "
            f"run `curate run` into it again to finish it")


def require_complete(out: str | Path, action: str) -> None:
    """Refuse to `action` a folder whose last run did not finish."""
    why = incomplete(out)
    if why:
        raise CurateError(f"{out}: cannot {action}: {why}")


def holder(out: Path, wait: float = 1.0) -> str:
    """Who holds the folder's lock, as far as its lock file says. A run that has just taken the lock
    signs it an instant later, so an empty or half-written file is read again for up to `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads((out / LOCK).read_text(encoding="utf-8"))
            return (f"another curate {info.get('doing', 'run')} holds it: pid {info['pid']} on {info['host']}, "
                    f"since {info['started']} ({info.get('command', '')})")
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "another curate run holds it"
            time.sleep(0.02)


def _is_held(out: Path) -> bool:
    try:
        fd = os.open(out / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's shared lock, if it got one


def _refuse_foreign(path: Path) -> None:
    """A folder a run may write: absent, empty, holding a manifest, or an old run folder."""
    if not path.is_dir() or (path / MANIFEST).exists() or _is_old_run_folder(path):
        return
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p.name not in OWN)
    if others:
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        where = path if path.is_absolute() else f"{path} (= {path.resolve()})"
        raise CurateError(f"{where}: holds files that are not a curate run's ({', '.join(others[:5])}{more}); "
                          "give --out a new or empty folder (a run replaces the files in its folder)")


def _is_old_run_folder(path: Path) -> bool:
    """A run folder written before manifests: recipe.yaml beside steps/."""
    return (path / "recipe.yaml").is_file() and (path / "steps").is_dir()


def _recognised_files(path: Path) -> set[str]:
    """The files of a run folder that carry the names runs write."""
    found = {f for f in RUN_FILES if (path / f).is_file()}
    for tree in RUN_TREES:
        found |= {p.relative_to(path).as_posix() for p in (path / tree).rglob("*") if p.is_file()
                  and not temp_file_target(p.name)}
    return found


def _inside(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
