"""A step's output on disk, in parts, so that a run never holds every row and resumes part by part.

    <out>/steps/NN-kind/parts/00000.parquet           kept rows of part 0 (then 00001, ...)
    <out>/steps/NN-kind/parts/00000-rejects.parquet   the rows part 0's work dropped, with step, reason, detail
    <out>/steps/NN-kind/parts/00000.json              the marker of part 0's work: written last, so
                                                     a part whose marker is missing or stale is redone
    <out>/steps/NN-kind/state/00000.parquet, .json    a STATE step's per-row state of input part 0
    <out>/steps/NN-kind/resolved.parquet, .json       its answer for the whole dataset
    <out>/steps/NN-kind/_DONE.json                    the step's marker, once every part is done

A unit of work (one input part of a row-local step, the whole of a FRAME step) is reused when its
marker carries the same key (the step's hash chained with the digests of the input parts it read)
and its files are the ones it wrote (their sha256 digests are in the marker). A part is known
downstream by the digest of its file: a step's part is redone only if its input part changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from curate.io import write_json, write_parquet
from curate.records import concat
from curate.steps import file_digest

log = logging.getLogger(__name__)
DONE = "_DONE.json"


@dataclass(frozen=True)
class Part:
    """A part of a step's output: its file, the sha256 digest of that file, and its rows. A run
    whose rows fit in one part keeps the frames it wrote (`frame`) and never reads them back."""

    path: Path
    digest: str
    rows: int
    frame: pl.DataFrame | None = field(default=None, compare=False, repr=False)

    def read(self, columns: list[str] | None = None) -> pl.DataFrame:
        if self.frame is not None:
            return self.frame if columns is None else self.frame.select(columns)
        return pl.read_parquet(self.path, columns=columns)

    def schema(self) -> pl.Schema:
        return self.frame.schema if self.frame is not None else pl.read_parquet_schema(self.path)


@dataclass
class Unit:
    """What one unit of work wrote: its kept parts, its rejects parts, its marker and its facts."""

    kept: list[Part]
    rejects: list[Part]
    marker: Path
    info: dict[str, Any] = field(default_factory=dict)  # rows_in, rows_out, dropped, stats, ...
    reused: bool = False

    def files(self) -> set[Path]:
        return {self.marker, *(p.path for p in [*self.kept, *self.rejects])}


def part_name(i: int) -> str:
    return f"{i:05d}"


class StepFolder:
    """The files of one step of a run (see the module docstring)."""

    def __init__(self, path: Path, compression: str = "uncompressed"):
        self.path = path
        self.compression = compression  # of the parts it writes (engine.part_compression)

    def kept_path(self, i: int) -> Path:
        return self.path / "parts" / f"{part_name(i)}.parquet"

    def rejects_path(self, i: int) -> Path:
        return self.path / "parts" / f"{part_name(i)}-rejects.parquet"

    def marker_path(self, unit: str) -> Path:
        return self.path / "parts" / f"{unit}.json"

    def state_path(self, i: int) -> Path:
        return self.path / "state" / f"{part_name(i)}.parquet"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    # Units -------------------------------------------------------------------------------------
    def finished(self, marker: Path, key: str) -> dict | None:
        """The marker's facts if it carries `key` and every file it names is the one written; else
        None (with a warning when a file is missing or not the one written)."""
        info = read_marker(marker)
        if info is None or info.get("key") != key:
            return None
        for rel, digest in (info.get("files") or {}).items():
            path = self.path / rel
            if not path.is_file():
                log.warning("%s: missing; running the step again", path)
                return None
            if file_digest(path) != digest:
                log.warning("%s: not the file the step wrote (changed or damaged); running the step again", path)
                return None
        return info

    def write_unit(self, marker: Path, key: str, kept: list[tuple[Path, pl.DataFrame]],
                   rejects: list[tuple[Path, pl.DataFrame]], info: dict[str, Any], keep_frames: bool = False) -> Unit:
        """Write a unit's files, then its marker (the marker last: a kill leaves no marker).
        keep_frames: the parts hold the frames written (see `Part`)."""
        marker.unlink(missing_ok=True)
        done = []
        for path, frame in [*kept, *rejects]:
            write_parquet(frame, path, compression=self.compression)
            done.append(Part(path, file_digest(path), frame.height, frame if keep_frames else None))
        files = {self.rel(p.path): p.digest for p in done}
        write_json({"key": key, **info, "files": files, "outputs": {"kept": [self.rel(p) for p, _ in kept],
                                                                    "rejects": [self.rel(p) for p, _ in rejects]},
                    "rows": {self.rel(p.path): p.rows for p in done}}, marker)
        return Unit(done[: len(kept)], done[len(kept):], marker, info)

    def unit_from(self, marker: Path, info: dict) -> Unit:
        """The Unit a reused marker describes."""
        parts = info["outputs"]
        made = lambda rel: Part(self.path / rel, info["files"][rel], info["rows"][rel])  # noqa: E731
        return Unit([made(r) for r in parts["kept"]], [made(r) for r in parts["rejects"]], marker, info, reused=True)

    def clear_stale(self, keep: set[Path], wrote) -> None:
        """Remove the files an earlier run of this step wrote that this run does not use (it had
        more parts, or wrote one data.parquet as runs before parts did): only files `wrote` (the
        manifest) says a run wrote; the step's marker stays."""
        if not self.path.is_dir():
            return
        for f in sorted(self.path.rglob("*")):
            if f.is_file() and f not in keep and f.name != DONE and f.suffix in (".parquet", ".json") and wrote(f):
                f.unlink()


def read_marker(path: Path) -> dict | None:
    """A marker's content, or None if there is none or it does not read (then with a warning)."""
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("key", info.get("hash")), str):
            raise ValueError("no 'key' or 'hash'")
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); running the step again", path, exc)
        return None
    return info


def cut(df: pl.DataFrame, rows: int) -> list[pl.DataFrame]:
    """`df` in frames of `rows` rows (one empty frame for an empty `df`)."""
    return [df.slice(lo, rows) for lo in range(0, df.height, rows)] or [df]


def gather(parts: Iterable[Part], columns: list[str] | None = None) -> pl.DataFrame:
    """The rows of `parts`, in order, in one frame (diagonal: columns may differ between parts)."""
    return concat([p.read(columns) for p in parts])


def union_schema(parts: Iterable[Part | Path]) -> pl.Schema:
    """The columns of several parts (or parquet files) as `concat` makes them: in order of first
    appearance, each with the type that holds every part's values."""
    schemas = [p.schema() if isinstance(p, Part) else pl.read_parquet_schema(p) for p in parts]
    return concat([pl.DataFrame(schema=s) for s in schemas]).schema


def aligned(df: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """`df` with `schema`'s columns, in its order (missing ones null), as `concat` would give it."""
    if df.schema == schema:
        return df
    return pl.concat([pl.DataFrame(schema=schema), df], how="diagonal_relaxed")


def write_parts(parts: list[Part], path: Path, rows: int) -> None:
    """Write the rows of `parts` as one parquet file. If they are `rows` or fewer they are read
    into one frame and written as a run that holds them in memory writes them (the same bytes);
    more are streamed, a part at a time, with pyarrow (the memory of one part)."""
    total = sum(p.rows for p in parts)
    if total <= rows:
        write_parquet(gather(parts), path)
        return
    from curate.io import atomic_path

    schema = union_schema(parts)
    with atomic_path(path) as tmp:
        writer = None
        try:
            for p in parts:
                table = aligned(p.read(), schema).to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
        finally:
            if writer is not None:
                writer.close()


def row_offsets(parts: list[Part]) -> np.ndarray:
    """The number of the first row of each part, and the total at the end."""
    return np.concatenate([[0], np.cumsum([p.rows for p in parts])]).astype(np.int64)


def detached(df: pl.DataFrame) -> pl.DataFrame:
    """A copy of `df` holding only its own rows' bytes. polars' gather and filter share the string
    buffers of the frame they took rows from, so a few rows kept from each part kept every part's
    text alive: 10M rows in 100 parts held 8.4 GB in the report's step sections. Through Arrow's
    plain (large) strings and back, the copy owns compact buffers."""
    from polars import CompatLevel

    copy = pl.from_arrow(df.to_arrow(compat_level=CompatLevel.oldest()))
    return copy if copy.schema == df.schema else copy.cast(df.schema)


def parts_fetch(parts: list[Part], sources: list[str] | None = None, rows: list[int] | None = None):
    """A `Fetch` (curate.steps) over parts: the rows asked for, part by part, read back by number.
    With `sources`, rows are numbered among those sources' rows only (`rows`: how many each part has)."""
    offsets = np.concatenate([[0], np.cumsum(rows if rows is not None else [p.rows for p in parts])]).astype(np.int64)

    def fetch(wanted: np.ndarray, columns: list[str]) -> Iterator[pl.DataFrame]:
        wanted = np.asarray(wanted, np.int64)
        if not len(wanted):
            first = parts[0].schema() if parts else {}
            yield pl.DataFrame(schema={"row": pl.Int64, **{c: first[c] for c in columns if c in first}})
            return
        bounds = np.searchsorted(wanted, offsets)
        for i, part in enumerate(parts):
            mine = wanted[bounds[i]: bounds[i + 1]]
            if not len(mine):
                continue
            have = [c for c in columns if c in part.schema()]
            if sources is None:
                frame = part.read(have)
            else:
                frame = part.read(list(dict.fromkeys([*have, "source"]))).filter(pl.col("source").is_in(sources)).select(have)
            yield detached(frame[mine - offsets[i]]).with_columns(pl.Series("row", mine)).select("row", *have)

    return fetch


def read_schema(parts: list[Part]) -> pl.Schema:
    """The columns of a list of parts (`union_schema`)."""
    return union_schema(parts)
