"""Reading datasets into records and writing them out.

Readers accept jsonl, json, parquet, csv, plain text (a .txt file or a folder of them: one document
per file, in a `text` column) and a `datasets` dataset saved to disk; `read_records` and
`to_records` map the common shapes onto the record schema (`curate.shapes`). Text is UTF-8,
or UTF-16/UTF-32 with a byte-order mark; anything else (a binary file, a broken Parquet file, a
malformed line, a key that is a list in one row and text in another) is an error naming the file
and line, and an input with no usable text column names the columns it has. Rows are mapped as
they are; `curate.records.split_invalid` says which are not valid SFT rows.
Writers are atomic: a file appears whole or not at all.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from curate.errors import CurateError
from curate.shapes import to_records
from curate.textfiles import BOMS, decode_text, first_line, nonempty, read_json, read_jsonl, read_text, scan_jsonl


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a file (or a `datasets` folder) as it is, without mapping columns."""
    path = Path(path)
    if not path.exists():
        raise CurateError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dataset_dir(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return read_json(path)
    if name.endswith(".parquet"):
        return nonempty(_read_parquet(path), path)
    if name.endswith(".txt"):
        text = read_text(path)
        if not text.strip():
            raise CurateError(f"{path}: the file is empty")
        return pl.DataFrame({"text": [text]})
    if name.endswith((".csv", ".tsv")):
        return _read_csv(path, separator="\t" if name.endswith(".tsv") else ",")
    raise CurateError(f"{path}: unknown format (expected .jsonl, .json, .parquet, .csv, .txt or a folder)")


def scan_table(path: str | Path, rows: int, limit: int | None = None) -> Iterator[pl.DataFrame]:
    """`read_table` in frames of at most `rows` rows (the first `limit` rows), all with the
    file's columns, without holding the whole input: Parquet files, folders of them and
    `datasets` folders stream through Arrow; JSON Lines are parsed `rows` lines at a time (the
    parsed frames wait in unnamed temporary files until the last line has named every column);
    the other formats are read whole, then cut."""
    path = Path(path)
    if not path.exists():
        raise CurateError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir() and _is_saved_dataset(path):
        frames = _scan_dataset(path, rows)
    elif path.is_dir() and any(path.glob("*.parquet")):
        frames = _scan_parquet(sorted(path.glob("*.parquet")), rows)
    elif path.is_file() and name.endswith(".parquet"):
        frames = _scan_parquet([path], rows)
    elif path.is_file() and name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        frames = scan_jsonl(path, rows, limit)
    else:
        whole = read_table(path)
        frames = (whole.slice(lo, rows) for lo in range(0, whole.height, rows))
    seen = 0
    for frame in frames:
        if limit is not None and seen + frame.height >= limit:
            yield frame.head(limit - seen)
            return
        seen += frame.height
        yield frame
    if not seen:
        raise CurateError(f"{path}: the file is empty (no rows)")


def _is_saved_dataset(path: Path) -> bool:
    return any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _load_dataset_table(path: Path):
    """The Arrow table of a `datasets` folder (its train split, or its first)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise CurateError(f"{path}: cannot load the saved `datasets` dataset ({first_line(exc)})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    return ds.data.table


def _scan_dataset(path: Path, rows: int) -> Iterator[pl.DataFrame]:
    """A `datasets` folder's rows from its memory-mapped Arrow table, `rows` at a time."""
    table = _load_dataset_table(path)
    for lo in range(0, table.num_rows, rows):
        yield pl.from_arrow(table.slice(lo, rows))


def _scan_parquet(files: list[Path], rows: int) -> Iterator[pl.DataFrame]:
    """Parquet files' rows, `rows` at a time, each frame with every file's columns. polars reads
    each slice (pyarrow's batches held ~2x a part more: bench/README.md)."""
    import pyarrow.parquet as pq

    def opened(f: Path):
        try:
            return pq.ParquetFile(f)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise CurateError(f"{f}: not a readable Parquet file ({first_line(exc)})") from None

    union = None
    if len(files) > 1:
        union = pl.concat([pl.DataFrame(schema=pl.from_arrow(opened(f).schema_arrow.empty_table()).schema)
                           for f in files], how="diagonal_relaxed")
    for f in files:
        total = opened(f).metadata.num_rows
        for lo in range(0, total, rows):
            try:  # polars reads the row groups a slice needs, into its own memory (no Arrow copy to hold)
                frame = pl.scan_parquet(f).slice(lo, rows).collect()
            except Exception as exc:  # polars and pyarrow raise several types for a damaged file
                raise CurateError(f"{f}: not a readable Parquet file ({first_line(exc)})") from None
            yield frame if union is None else pl.concat([union, frame], how="diagonal_relaxed")


def read_records(
    path: str | Path,
    *,
    source: str | None = None,
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    gold: str | None = None,
    source_column: str | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """Read a dataset and map it onto the record schema.

    `prompt` / `response` / `system` / `gold` / `source_column` name columns explicitly (see
    `to_records`); otherwise the shape is
    detected from the column names (see the module docstring). Rows are mapped as they are:
    `curate.records.split_invalid` tells the valid SFT rows from the rest.
    """
    df = read_table(path)
    if limit is not None:
        df = df.head(limit)
    return to_records(df, origin=str(path), source=source or Path(path).name.split(".")[0],
                      prompt=prompt, response=response, system=system, gold=gold, source_column=source_column)


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CurateError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None


def _read_csv(path: Path, separator: str) -> pl.DataFrame:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CurateError(f"{path}: cannot read: {exc}") from None
    text = decode_text(raw, str(path))
    data = text.encode("utf-8") if raw.startswith(tuple(b for b, _ in BOMS)) else raw
    try:
        df = pl.read_csv(io.BytesIO(data), separator=separator)
    except pl.exceptions.NoDataError:
        raise CurateError(f"{path}: the file is empty") from None
    except pl.exceptions.PolarsError as exc:
        raise CurateError(f"{path}: cannot parse as CSV: {first_line(exc)}") from None
    return nonempty(df, path)


def _read_dataset_dir(path: Path) -> pl.DataFrame:
    if _is_saved_dataset(path):
        return nonempty(pl.from_arrow(_load_dataset_table(path)), path)
    files = sorted(path.glob("*.parquet"))
    if files:
        return nonempty(pl.concat([_read_parquet(f) for f in files], how="diagonal_relaxed"), path)
    texts = sorted(path.glob("*.txt"))  # a folder of plain-text documents, one per file
    if texts:
        return pl.DataFrame({"text": [read_text(t) for t in texts], "source": [t.stem for t in texts]})
    raise CurateError(f"{path}: a folder must be a saved `datasets` dataset or hold .parquet or .txt files")


# Writing ------------------------------------------------------------------------------------------

# atomic_path's temporary files: `.<name>.<8 random characters>.tmp` beside the target (mkstemp).
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def temp_file_target(name: str) -> str | None:
    """The file name an atomic_path temporary file of this name was to become, or None if `name`
    is not one (a run killed mid-write leaves one behind; curate.folder removes them)."""
    m = _TEMP_NAME.match(name)
    return m.group("target") if m else None


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it, and
    another thread could create a file in between)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    The file gets the mode any newly created file would (0666 less the umask): mkstemp makes it
    0600, which left train.parquet and the reports unreadable to other users."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(df: pl.DataFrame, path: str | Path, compression: str = "zstd") -> None:
    """Write a parquet file whole (a run's own parts: curate.parts.PART_COMPRESSION)."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, compression=compression)


def write_jsonl(df: pl.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.write_ndjson(tmp)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
