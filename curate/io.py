"""Reading datasets into records and writing them out.

Readers accept jsonl, json, parquet, csv, plain text (a .txt file or a folder of them: one document
per file, in a `text` column) and a `datasets` dataset saved to disk, and map the common
shapes onto the record schema: messages (`messages`), ShareGPT (`conversations` with from/value),
Alpaca (`instruction` / `input` / `output`), prompt/completion, and question/answer. Text is UTF-8,
or UTF-16/UTF-32 with a byte-order mark; anything else (a binary file, a broken Parquet file, a
malformed line, a key that is a list in one row and text in another) is an error naming the file
and line, and an input with no usable text column names the columns it has. Rows are mapped as
they are; `curate.records.split_invalid` says which are not valid SFT rows.
Writers are atomic: a file appears whole or not at all.
"""

from __future__ import annotations

import codecs
import gzip
import io
import itertools
import json
import logging
import os
import re
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.records import MESSAGES, SCHEMA, conform, content_id, turn_lists
from curate.text import python_chars

log = logging.getLogger(__name__)

# Column names tried, in order, for each role when no explicit mapping is given.
PROMPT_COLUMNS = ("instruction", "prompt", "question", "query", "input_text", "text")
RESPONSE_COLUMNS = ("output", "completion", "response", "answer_text", "chosen")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
# Byte-order marks, UTF-32 before UTF-16 (the UTF-32-LE mark starts with the UTF-16-LE one).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(data: bytes, where: str) -> str:
    """The text in a file's bytes: UTF-8, or the UTF-16/UTF-32 a byte-order mark declares.
    Anything else is refused with the line of the first bad byte: decoding with replacement
    characters would change the data without a word."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                name = encoding.upper().removesuffix("-SIG")
                raise CurateError(f"{where}: starts with a {name} byte-order mark but is not valid {name} "
                                  f"text (bad bytes at offset {exc.start}); save it as UTF-8") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise CurateError(f"{where}:{_line_at(data, nul)}: not UTF-8 text (a NUL byte at offset {nul}: "
                          "a binary file, or UTF-16 without a byte-order mark); save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CurateError(f"{where}:{_line_at(data, exc.start)}: not UTF-8 text (byte "
                          f"0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8") from None


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text(path: str | Path) -> str:
    """A text file's content (gunzipped if it ends in .gz), decoded by `decode_text`."""
    return decode_text(_file_bytes(Path(path)), str(path))


def _file_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped if its name ends in .gz."""
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise CurateError(f"{path}: cannot read: {exc}") from None
    return data


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a file (or a `datasets` folder) as it is, without mapping columns."""
    path = Path(path)
    if not path.exists():
        raise CurateError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dataset_dir(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return _read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json(path)
    if name.endswith(".parquet"):
        return _nonempty(_read_parquet(path), path)
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
        frames = _scan_jsonl(path, rows, limit)
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
        raise CurateError(f"{path}: cannot load the saved `datasets` dataset ({_first_line(exc)})") from None
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
            raise CurateError(f"{f}: not a readable Parquet file ({_first_line(exc)})") from None

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
                raise CurateError(f"{f}: not a readable Parquet file ({_first_line(exc)})") from None
            yield frame if union is None else pl.concat([union, frame], how="diagonal_relaxed")


def _scan_jsonl(path: Path, rows: int, limit: int | None) -> Iterator[pl.DataFrame]:
    """JSON Lines `rows` lines at a time. Each chunk of lines is read by Arrow's JSON reader
    (`_arrow_jsonl`) when it gives what Python's json gives and every chunk gives each column one
    type; else the file is parsed line by line and checked as `_read_jsonl` checks it (errors name
    the line, numbers among text are warned about). A file of more than one frame is read to the
    end before the first frame is given, so that every frame has every column."""
    try:
        yield from _in_one_schema(path, _arrow_jsonl_frames(path, rows, limit))
        return
    except _NotForArrow:  # raised before any frame was given (`_in_one_schema` reads to the end first)
        pass
    shapes = ShapeCheck(path, lines=True)

    def parsed() -> Iterator[pl.DataFrame]:
        for chunk, lines in _jsonl_rows(path, rows, limit):
            yield _frame_from_rows(chunk, path, lines, shapes)
        shapes.warn()

    yield from _in_one_schema(path, parsed())


class _NotForArrow(Exception):
    """A chunk of JSON Lines that Arrow may not read as Python does."""


def _arrow_jsonl_frames(path: Path, rows: int, limit: int | None) -> Iterator[pl.DataFrame]:
    """The file's first `limit` lines as frames of `rows` lines, each read by Arrow; _NotForArrow
    when a chunk is not one Arrow reads as Python would, or two chunks give a column two types."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    types: dict[str, pl.DataType] = {}
    try:
        with opener(path, "rb") as f:
            if any(f.read(4).startswith(bom) for bom, enc in BOMS if enc != "utf-8-sig"):
                raise _NotForArrow  # UTF-16 or UTF-32
            f.seek(0)
            taken, blank = 0, False
            while limit is None or taken < limit:
                lines = list(itertools.islice(f, rows if limit is None else min(rows, limit - taken)))
                if not lines:
                    return
                taken += len(lines)
                data = b"".join(lines)
                if not data.strip():
                    blank = True
                    continue
                frame = _arrow_jsonl(data)  # None for a blank line but at the end
                if frame is None or blank:  # a blank line before these: Python's reader does not count it
                    raise _NotForArrow
                blank = frame.height != len(lines)
                for name, dtype in frame.schema.items():
                    if dtype != pl.Null and types.setdefault(name, dtype) != dtype:
                        raise _NotForArrow
                yield frame
    except (OSError, EOFError, zlib.error):
        raise _NotForArrow from None  # the line-by-line reader names the fault


def _in_one_schema(path: Path, frames: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """`frames`, each with the columns of all of them: one frame as it is; more are read to the
    last one first, waiting in unnamed temporary files, then given with every column."""
    first = next(frames, None)
    spool = [_spooled(frame) for frame in frames]
    if not spool:
        if first is not None:
            yield first
        return
    spool.insert(0, _spooled(first))
    union = pl.concat([pl.DataFrame(schema=schema) for _, schema in spool], how="diagonal_relaxed")
    for f, _ in spool:
        with f:
            f.seek(0)
            try:
                yield pl.concat([union, pl.read_ipc(f)], how="diagonal_relaxed")
            except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
                raise CurateError(f"{path}: rows do not share one schema: {_first_line(exc)}") from None


def _spooled(frame: pl.DataFrame):
    """`frame` in an unnamed temporary file (gone when closed, or when the process dies)."""
    f = tempfile.TemporaryFile()
    frame.write_ipc(f, compression="lz4")
    return f, frame.schema


def _jsonl_rows(path: Path, rows: int, limit: int | None) -> Iterator[tuple[list[dict], list[int]]]:
    """(parsed objects, their line numbers), `rows` at a time. UTF-8 is read line by line;
    UTF-16 and UTF-32 (with a byte-order mark) whole."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if any(head.startswith(bom) for bom, enc in BOMS if enc != "utf-8-sig"):
                lines = enumerate(read_text(path).split("\n"), 1)  # not splitlines: JSON text may hold U+2028
            else:
                lines = _utf8_lines(path, f, head)
            batch, numbers, total = [], [], 0
            for lineno, line in lines:
                if not line.strip():
                    continue
                row = _parse_json(line, path, lineno)
                if not isinstance(row, dict):
                    raise CurateError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
                batch.append(row)
                numbers.append(lineno)
                total += 1
                if len(batch) == rows:
                    yield batch, numbers
                    batch, numbers = [], []
                if limit is not None and total >= limit:
                    break
            if batch:
                yield batch, numbers
    except (OSError, EOFError, zlib.error) as exc:
        raise CurateError(f"{path}: cannot read: {exc}") from None


def _utf8_lines(path: Path, f, head: bytes) -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 file (a byte-order mark skipped), decoded one by one with the errors
    `decode_text` gives, named by line and file offset."""
    offset = 3 if head.startswith(codecs.BOM_UTF8) else 0
    f.seek(offset)
    for lineno, raw in enumerate(f, 1):
        nul = raw.find(b"\0")
        if nul >= 0:
            raise CurateError(f"{path}:{lineno}: not UTF-8 text (a NUL byte at offset {offset + nul}: "
                              "a binary file, or UTF-16 without a byte-order mark); save it as UTF-8")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CurateError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                              f"{offset + exc.start}); save it as UTF-8") from None
        offset += len(raw)
        yield lineno, text.removesuffix("\n")


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


def to_records(
    df: pl.DataFrame,
    *,
    origin: str = "<frame>",
    source: str = "unknown",
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    gold: str | None = None,
    source_column: str | None = None,
    first_row: int = 0,
) -> pl.DataFrame:
    """Map a frame of any supported shape onto records (`origin` names it in error messages, where
    `df` starts at row `first_row`, counted from 0). Numbers in a text column are read as text,
    with a warning naming the column.

    Every input column the mapping does not use is kept, as it is, after the record columns
    (`category`, `difficulty`, ...; see `input_columns`). Each row's `source` is the value of
    `source_column` (default: a column named `source`), or `source` where it is empty.

    Column-wise polars expressions, no Python per row (a million Alpaca rows map in about a
    second: bench/bench_hotpaths.py); a cell becomes the text Python's str() gives it, as the
    row-by-row reader this replaced did."""
    for key, col in (("prompt", prompt), ("response", response), ("system", system), ("gold", gold),
                     ("source_column", source_column)):
        if col is not None and col not in df.columns:
            raise CurateError(f"{origin}: column {col!r} (given as {key}) not found; columns are {df.columns}")
    used = {"source", "meta", gold or "gold"}
    if prompt is None and "messages" in df.columns:
        _warn_non_text(df, "messages", "content", origin)
        messages = _chat_turns(df["messages"], origin, first_row)
        used.add("messages")
    elif prompt is None and "conversations" in df.columns:
        _warn_non_text(df, "conversations", "value", origin)
        messages = _sharegpt_turns(df["conversations"], origin, first_row)
        used.add("conversations")
    else:
        p_col = prompt or next((c for c in PROMPT_COLUMNS if c in df.columns), None)
        if p_col is None:
            raise CurateError(
                f"{origin}: no usable text column. Looked for messages, conversations or one of "
                f"{list(PROMPT_COLUMNS)}; the columns are {df.columns}. Name one with prompt=..."
            )
        r_col = response or next((c for c in RESPONSE_COLUMNS if c in df.columns and c != p_col), None)
        # Alpaca keeps the task's input apart from the instruction.
        extra_input = "input" if p_col == "instruction" and "input" in df.columns else None
        for col in (p_col, r_col, extra_input, system):
            if col:
                _warn_non_text(df, col, None, origin)
        messages = _column_turns(df, p_col, r_col, extra_input, system)
        used.update(c for c in (p_col, r_col, extra_input, system) if c)
    frame = pl.DataFrame({"messages": messages})
    frame = frame.with_columns(pl.Series("id", [content_id(m) for m in frame["messages"].to_list()], dtype=pl.String))
    src = source_column or ("source" if "source" in df.columns else None)
    if src:
        frame = frame.with_columns(_row_source(df[src], source))
    else:
        frame = frame.with_columns(pl.lit(source, dtype=pl.String).alias("source"))
    for col in ("reasoning", "answer"):
        if col in df.columns and df.schema[col] == pl.String:
            frame = frame.with_columns(df[col])
            used.add(col)
    if gold or "gold" in df.columns:
        frame = frame.with_columns(_as_text(df[gold or "gold"]).alias("gold"))
    scores = [c for c in df.columns if c.startswith("score_")]
    frame = frame.with_columns(df.select(scores)) if scores else frame
    if "meta" in df.columns:
        frame = frame.with_columns(df["meta"])
    kept = input_columns(df.columns, used | set(scores), origin)
    if kept:
        frame = frame.with_columns(df.select(list(kept)).rename(kept))
    return conform(frame)


# An input's own `id` (not the record's content hash) is kept under this name, to trace a row back.
SOURCE_ID = "source_id"


def input_columns(columns: list[str], used: set[str], origin: str) -> dict[str, str]:
    """The input columns the mapping left unused, kept beside the records: {input name: column
    name}. An input `id` becomes `source_id` (the record's `id` is its content hash); a column
    named like another record column (a `reasoning` that is not text, say) cannot be kept as it
    is and is left out, with a warning naming it."""
    kept: dict[str, str] = {}
    for col in columns:
        if col in used:
            continue
        if col == "id" and SOURCE_ID not in columns:
            kept[col] = SOURCE_ID
        elif col in SCHEMA:
            log.warning("%s: column %r is left out: its name is a record column (%s) and its values do not fit "
                        "it; rename it to keep it", origin, col, SCHEMA[col])
        else:
            kept[col] = col
    return kept


# Python's whitespace (str.strip), which is not polars' (U+001C-U+001F).
_SPACE = python_chars("isspace")


def _text_expr(value: pl.Expr, dtype: pl.DataType) -> pl.Expr | None:
    """`value` as the text Python's str() gives it, for the types polars writes the same way
    (null stays null); None for the others (floats: "1e-05" is "0.00001" to polars; nested values)."""
    if dtype == pl.String:
        return value
    if dtype == pl.Null or dtype.is_integer():
        return value.cast(pl.String)
    if dtype == pl.Boolean:
        return pl.when(value).then(pl.lit("True")).when(value.not_()).then(pl.lit("False"))
    return None


def _as_text(column: pl.Series) -> pl.Series:
    """A column as text, each cell as Python's str() writes it (null stays null)."""
    expr = _text_expr(pl.col(column.name), column.dtype)
    if expr is not None:
        return column.to_frame().select(expr.alias(column.name)).to_series()
    # rare, and warned about (`_warn_non_text`): floats and nested values go through str() itself
    return pl.Series(column.name, [None if v is None else str(v) for v in column.to_list()], dtype=pl.String)


def _text_fields(column: pl.Series, fields: tuple[str, str]) -> pl.Series:
    """A list-of-objects column with `fields` as text (null where missing or null) and no other
    field; a null object stays null."""
    have = {f.name: f.dtype for f in column.dtype.inner.fields}
    exprs = [_text_expr(pl.element().struct.field(f), have[f]) if f in have else pl.lit(None, dtype=pl.String)
             for f in fields]
    dtype = pl.List(pl.Struct({f: pl.String for f in fields}))
    if all(e is not None for e in exprs):
        turn = pl.struct([e.alias(f) for e, f in zip(exprs, fields)])
        return column.list.eval(pl.when(pl.element().is_not_null()).then(turn)).cast(dtype)
    rows = [None if turns is None else [
        None if t is None else {f: None if t.get(f) is None else str(t[f]) for f in fields} for t in turns]
        for turns in column.to_list()]
    return pl.Series(column.name, rows, dtype=dtype)


def _first(mask: pl.Series) -> int | None:
    """The index of the first true value of a boolean column, or None."""
    hits = mask.fill_null(False).arg_true()
    return int(hits[0]) if len(hits) else None


def _no_turns(n: int) -> pl.Series:
    return pl.Series("messages", [[]] * n, dtype=MESSAGES)


def _chat_turns(column: pl.Series, origin: str, first_row: int = 0) -> pl.Series:
    """Turns as they are (a null row has none); `split_invalid` judges them. A row that is not a
    list of {role, content} objects is an error naming it."""
    if column.dtype == pl.Null:
        return _no_turns(len(column))
    if isinstance(column.dtype, pl.Array):
        column = column.cast(pl.List(column.dtype.inner))
    inner = column.dtype.inner if isinstance(column.dtype, pl.List) else None
    if inner is None:
        bad = column.is_not_null()
    elif isinstance(inner, pl.Struct) and {"role", "content"} <= {f.name for f in inner.fields}:
        bad = column.list.eval(pl.element().is_null()).list.any()
    else:
        bad = column.list.len() > 0
    row = _first(bad)
    if row is not None:
        raise CurateError(f"{origin}: row {first_row + row + 1}: 'messages' must be a list of {{role, content}} objects "
                          "(for a column of plain text, name it with prompt=...)")
    if not isinstance(inner, pl.Struct):  # only null or empty rows
        return _no_turns(len(column))
    turns = _text_fields(column, ("role", "content"))
    return turns.list.eval(pl.struct(pl.element().struct.field("role").fill_null(""),
                                     pl.element().struct.field("content").fill_null(""))).fill_null([])


def _sharegpt_turns(column: pl.Series, origin: str, first_row: int = 0) -> pl.Series:
    """ShareGPT turns with their speakers named as roles; an unknown speaker keeps its name, so
    `split_invalid` rejects the row (tool or function turns, say) instead of the whole file. A
    turn that is not an object has no speaker and no text."""
    if column.dtype == pl.Null:
        return _no_turns(len(column))
    if isinstance(column.dtype, pl.Array):
        column = column.cast(pl.List(column.dtype.inner))
    if not isinstance(column.dtype, pl.List):
        row = _first(column.is_not_null())
        if row is not None:
            raise CurateError(f"{origin}: row {first_row + row + 1}: 'conversations' must be a list of {{from, value}} objects "
                              "(for a column of plain text, name it with prompt=...)")
        return _no_turns(len(column))
    if isinstance(column.dtype.inner, pl.Struct):
        turns = _text_fields(column, ("from", "value"))
        speaker = pl.element().struct.field("from").fill_null("")
        role = speaker.str.to_lowercase().replace_strict(SHAREGPT_ROLES, default=speaker, return_dtype=pl.String)
        content = pl.element().struct.field("value").fill_null("")
    else:  # a list of plain values
        turns, role, content = column, pl.lit("", dtype=pl.String), pl.lit("", dtype=pl.String)
    return turns.list.eval(pl.struct(role.alias("role"), content.alias("content"))).fill_null([]).cast(MESSAGES)


def _column_turns(df: pl.DataFrame, p_col: str, r_col: str | None, extra_input: str | None,
                  system: str | None) -> pl.Series:
    """Turns from columns: an optional system turn (when its text is not empty), the user turn
    (the prompt, stripped, with Alpaca's input after a blank line when there is one), and the
    assistant turn when the response is not null."""
    text = pl.DataFrame([_as_text(df[c]) for c in dict.fromkeys(c for c in (p_col, r_col, extra_input, system) if c)])
    text = text.with_row_index("row")
    user = pl.col(p_col).fill_null("").str.strip_chars(_SPACE)
    if extra_input:
        extra = pl.col(extra_input).fill_null("").str.strip_chars(_SPACE)
        user = pl.when(extra != "").then(pl.concat_str(user, pl.lit("\n\n"), extra)).otherwise(user)
    turns = [text.select("row", role=pl.lit("user"), content=user)]
    if system:
        turns.append(text.select("row", role=pl.lit("system"), content=pl.col(system)).filter(pl.col("content") != ""))
    if r_col:
        turns.append(text.select("row", role=pl.lit("assistant"), content=pl.col(r_col)).filter(pl.col("content").is_not_null()))
    order = {"system": 0, "user": 1, "assistant": 2}
    long = pl.concat(turns).sort("row", pl.col("role").replace_strict(order, return_dtype=pl.UInt8))
    return turn_lists(long, df.height, pl.struct("role", "content")).cast(MESSAGES)


def _row_source(column: pl.Series, default: str) -> pl.Series:
    """Each row's `source`, or `default` where it is empty (null, "", or a false value such as 0)."""
    if column.dtype == pl.String:
        return column.to_frame().select(
            pl.when(pl.col(column.name).is_null() | (pl.col(column.name) == "")).then(pl.lit(default))
            .otherwise(pl.col(column.name)).alias("source")).to_series()
    return pl.Series("source", [str(v or default) for v in column.to_list()], dtype=pl.String)


def _warn_non_text(df: pl.DataFrame, col: str, field: str | None, origin: str) -> None:
    """Warn once when a column read as text (or its turns' `field`) holds numbers or booleans."""
    dtype = df.schema[col]
    if field is not None:
        inner = getattr(dtype, "inner", None)
        fields = {f.name: f.dtype for f in inner.fields} if isinstance(inner, pl.Struct) else {}
        dtype, col = fields.get(field, pl.String), f"{col}[].{field}"
    if dtype.is_numeric() or dtype == pl.Boolean:
        log.warning("%s: column %r holds numbers (%s), not text; they are read as text", origin, col, dtype)


def _parse_json(text: str, path: Path, lineno: int | None = None) -> Any:
    """json.loads, with errors naming the file and line (`lineno`: the line `text` is, in JSON Lines)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CurateError(f"{path}:{lineno or exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise CurateError(f"{path}{f':{lineno}' if lineno else ''}: malformed JSON (nested too deeply)") from None


def _read_jsonl(path: Path) -> pl.DataFrame:
    data = _file_bytes(path)
    table = _arrow_jsonl(data)
    if table is not None:
        return _nonempty(table, path)
    rows, lines = [], []
    for lineno, line in enumerate(decode_text(data, str(path)).split("\n"), 1):  # not splitlines: JSON text may hold U+2028
        if not line.strip():
            continue
        row = _parse_json(line, path, lineno)
        if not isinstance(row, dict):
            raise CurateError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
        lines.append(lineno)
    return _nonempty(_frame_from_rows(rows, path, lines), path)


# Arrow's JSON parser recurses per nesting level and overflows its stack near 10,000 levels: a line
# with this many opening brackets goes to Python's parser (which refuses ~1,000 levels, by name).
_ARROW_MAX_OPENINGS = 3000
# Python's json refuses (RecursionError) nesting this deep or a little deeper; Arrow reads it.
_PYTHON_MAX_DEPTH = 900


def _arrow_jsonl(data: bytes) -> pl.DataFrame | None:
    """A JSON Lines file read by Arrow's JSON reader (C++, columnar: ~4x faster than json.loads
    per line on 200,000 Alpaca rows, and no Python object per value), or None where it might not
    give exactly what the line-by-line reader gives; that reader then reads the file and names the
    line of any fault.

    Taken only when: every line is one object (a line starts with "{" and ends with "}", and
    there are as many rows as lines: Arrow also reads two objects on one line, or one over two
    lines); no value changes kind between rows (Arrow refuses it; Python reads numbers among
    text as text, with a warning); no string looks like a date (Arrow makes it a timestamp);
    no integer beyond 64 bits (Arrow makes it a float); the text is UTF-8 (Arrow does not check:
    `validate`); nesting is shallow enough for Python's parser."""
    import pyarrow as pa
    import pyarrow.json as pj

    start, end = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0, len(data)
    while end > start and data[end - 1] in b" \t\r\n":  # blank lines at the end
        end -= 1
    shape = _object_lines(np.frombuffer(data, np.uint8)[start:end])
    if shape is None or shape[1] >= _ARROW_MAX_OPENINGS:
        return None
    try:
        table = pj.read_json(pa.py_buffer(memoryview(data)[start:end]), read_options=pj.ReadOptions(block_size=1 << 24))
        table.validate(full=True)
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != shape[0] or any(depth >= _PYTHON_MAX_DEPTH or pa.types.is_temporal(t)
                                             for t, depth in _nested_types(table.schema)):
        return None
    if _has_huge_integral_float(table):
        return None
    return pl.from_arrow(table).rechunk()


def _object_lines(buf: np.ndarray, chunk: int = 1 << 24) -> tuple[int, int] | None:
    """(lines, the largest count of "[" and "{" on one line: a bound on its nesting) when every
    line starts with "{" and ends with "}" (or "}\\r"), else None. numpy, 16 MB at a time."""
    if not len(buf) or buf[0] != 123 or buf[-1] != 125:
        return None
    lines, worst, carry = 1, 0, 0  # carry: the openings of the line running into this chunk
    for lo in range(0, len(buf), chunk):
        part = buf[lo:lo + chunk]
        ends = np.flatnonzero(part == 10)
        at = ends + lo  # never the last byte ("}"), so at + 1 is in range
        before = buf[at - 1]
        if np.any(buf[at + 1] != 123) or np.any((before != 125) & ((before != 13) | (buf[at - 2] != 125))):
            return None
        opens = np.flatnonzero((part == 91) | (part == 123))
        per_line = np.bincount(np.searchsorted(ends, opens), minlength=len(ends) + 1)
        per_line[0] += carry
        worst = max(worst, int(per_line[:-1].max(initial=0)))
        carry = int(per_line[-1])
        lines += len(ends)
    return lines, max(worst, carry)


def _nested_types(schema):
    """Every type in an Arrow schema with its depth (a column's own type is at depth 0, the
    items of its lists and the fields of its objects at 1, ...), iteratively: any depth."""
    import pyarrow as pa

    stack = [(f.type, 0) for f in schema]
    while stack:
        t, depth = stack.pop()
        yield t, depth
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            stack.append((t.value_type, depth + 1))
        elif pa.types.is_struct(t):
            stack.extend((t.field(i).type, depth + 1) for i in range(t.num_fields))


def _has_huge_integral_float(table) -> bool:
    """Whether a float is 2**63 or more (a whole number at that size): how Arrow reads an integer
    literal too big for 64 bits, which Python keeps exact (or a float Python reads the same)."""
    import pyarrow as pa

    stack = [chunk for column in table.columns for chunk in column.chunks]
    while stack:
        arr = stack.pop()
        if pa.types.is_floating(arr.type):
            values = np.abs(arr.to_numpy(zero_copy_only=False))  # nulls are NaN
            if np.any((values >= 2.0**63) & np.isfinite(values)):
                return True
        elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            stack.append(arr.flatten())
        elif pa.types.is_struct(arr.type):
            stack.extend(arr.field(i) for i in range(arr.type.num_fields))
    return False


def _read_json(path: Path) -> pl.DataFrame:
    text = read_text(path)
    if not text.strip():
        raise CurateError(f"{path}: the file is empty")
    data = _parse_json(text, path)
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise CurateError(f"{path}: expected a JSON list of objects (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise CurateError(f"{path}: expected a JSON list of objects")
    return _nonempty(_frame_from_rows(data, path), path)


# The kind of each JSON value, for `_check_shapes`.
_KINDS = {str: "text", int: "number", float: "number", bool: "true/false", list: "a list", dict: "an object"}


class ShapeCheck:
    """polars infers one type per column from rows of Python values, and where rows disagree it
    turns a list into its string, or a whole row's messages into null, without a word. So before
    it does: a key holding a list or an object in one row and anything else in another is an
    error naming both rows; numbers or booleans among text are read as text, with a warning
    (`warn`, once the last rows are in). Rows come in batches (`add`), counted across them."""

    def __init__(self, path: Path, lines: bool):
        self.path, self.lines = path, lines  # lines: rows are named by line number (JSON Lines)
        self.seen: dict[str, dict[str, list[int]]] = {}  # key path -> kind -> [rows holding it, first row, last row]
        self.line_of: dict[int, int] = {}  # row -> its line, for the rows named in `seen`
        self.rows = 0

    def add(self, rows: list[dict], lines: list[int] | None = None) -> None:
        """Check more rows (`lines`: their line numbers); raise on a key of two shapes."""
        seen, base = self.seen, self.rows

        def visit(key: str, value: Any, row: int, depth: int) -> None:
            kind = _KINDS.get(type(value))
            if kind is None:
                return
            entry = seen.setdefault(key, {}).get(kind)
            if entry is None:
                entry = seen[key][kind] = [0, row, -1]
                if lines:
                    self.line_of[row] = lines[row - base]
            if entry[2] != row:
                entry[0], entry[2] = entry[0] + 1, row
            if depth < 3 and kind == "a list":
                for item in value:
                    visit(key + "[]", item, row, depth + 1)
            elif depth < 3 and kind == "an object":
                for k, v in value.items():
                    visit(f"{key}.{k}", v, row, depth + 1)

        for i, row in enumerate(rows, base):
            for key, value in row.items():
                visit(key, value, i, 0)
        self.rows += len(rows)
        for key, kinds in seen.items():
            if len(kinds) > 1 and ("a list" in kinds or "an object" in kinds):
                first, odd = sorted(kinds, key=lambda k: kinds[k][1])[:2]
                raise CurateError(f"{self._at(kinds[odd][1])}: '{key}' is {odd} here but {first} {self._on(kinds[first][1])}; "
                                  "every row must give a key the same shape")

    def warn(self) -> None:
        """Warn once per key that holds numbers or booleans among text."""
        for key, kinds in self.seen.items():
            if len(kinds) > 1 and "text" in kinds:
                others = [k for k in sorted(kinds, key=lambda k: kinds[k][1]) if k != "text"]
                what = " and ".join("numbers" if k == "number" else "true/false values" for k in others)
                log.warning("%s: '%s' holds %s in %d of %d rows, text in the others; they are read as text",
                            self._at(min(kinds[k][1] for k in others)), key, what, sum(kinds[k][0] for k in others), self.rows)

    def _at(self, row: int) -> str:
        return f"{self.path}:{self.line_of[row]}" if self.lines else f"{self.path}: row {row + 1}"

    def _on(self, row: int) -> str:
        return f"on line {self.line_of[row]}" if self.lines else f"in row {row + 1}"


def _frame_from_rows(rows: list[dict], path: Path, lines: list[int] | None = None,
                     shapes: ShapeCheck | None = None) -> pl.DataFrame:
    """A frame of parsed rows, their shapes checked (by `shapes`, which has seen earlier rows of
    the file, else on their own)."""
    if shapes is None:
        shapes = ShapeCheck(path, lines is not None)
        shapes.add(rows, lines)
        shapes.warn()
    else:
        shapes.add(rows, lines)
    try:
        return pl.DataFrame(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError) as exc:
        raise CurateError(f"{path}: rows do not share one schema: {_first_line(exc)}") from None


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CurateError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None


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
        raise CurateError(f"{path}: cannot parse as CSV: {_first_line(exc)}") from None
    return _nonempty(df, path)


def _read_dataset_dir(path: Path) -> pl.DataFrame:
    if _is_saved_dataset(path):
        return _nonempty(pl.from_arrow(_load_dataset_table(path)), path)
    files = sorted(path.glob("*.parquet"))
    if files:
        return _nonempty(pl.concat([_read_parquet(f) for f in files], how="diagonal_relaxed"), path)
    texts = sorted(path.glob("*.txt"))  # a folder of plain-text documents, one per file
    if texts:
        return pl.DataFrame({"text": [read_text(t) for t in texts], "source": [t.stem for t in texts]})
    raise CurateError(f"{path}: a folder must be a saved `datasets` dataset or hold .parquet or .txt files")


def _nonempty(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    if df.height == 0:
        raise CurateError(f"{path}: the file is empty (no rows)")
    return df


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (polars adds hints and backtrace notes below)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
    """Write a parquet file whole. A run's own parts use lz4: a third faster to write than
    zstd and twice as fast to read, for files half again as large (bench/README.md)."""
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
