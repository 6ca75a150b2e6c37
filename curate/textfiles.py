"""Reading text files into frames: UTF-8, or UTF-16/UTF-32 with a byte-order mark; JSON and JSONL
through Arrow where it can (a part at a time for `scan_jsonl`), else line by line; every error
names the file and line (a binary file, a malformed line, a key that is a list in one row and
text in another). `curate.io` dispatches to these by file type."""

from __future__ import annotations

import codecs
import gzip
import itertools
import json
import logging
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

from curate.errors import CurateError

log = logging.getLogger(__name__)

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
    return decode_text(file_bytes(Path(path)), str(path))


def file_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped if its name ends in .gz."""
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise CurateError(f"{path}: cannot read: {exc}") from None
    return data


def scan_jsonl(path: Path, rows: int, limit: int | None) -> Iterator[pl.DataFrame]:
    """JSON Lines `rows` lines at a time. Each chunk of lines is read by Arrow's JSON reader
    (`arrow_jsonl`) when it gives what Python's json gives and every chunk gives each column one
    type; else the file is parsed line by line and checked as `read_jsonl` checks it (errors name
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
                frame = arrow_jsonl(data)  # None for a blank line but at the end
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
                raise CurateError(f"{path}: rows do not share one schema: {first_line(exc)}") from None


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
            for lineno, row in _json_objects(lines, path):
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


def _parse_json(text: str, path: Path, lineno: int | None = None) -> Any:
    """json.loads, with errors naming the file and line (`lineno`: the line `text` is, in JSON Lines)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CurateError(f"{path}:{lineno or exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise CurateError(f"{path}{f':{lineno}' if lineno else ''}: malformed JSON (nested too deeply)") from None


def _json_objects(lines: Iterator[tuple[int, str]], path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank JSONL line; anything but an object names the line."""
    for lineno, line in lines:
        if not line.strip():
            continue
        row = _parse_json(line, path, lineno)
        if not isinstance(row, dict):
            raise CurateError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        yield lineno, row


def read_jsonl(path: Path) -> pl.DataFrame:
    data = file_bytes(path)
    table = arrow_jsonl(data)
    if table is not None:
        return nonempty(table, path)
    rows, lines = [], []
    text_lines = enumerate(decode_text(data, str(path)).split("\n"), 1)  # not splitlines: JSON text may hold U+2028
    for lineno, row in _json_objects(text_lines, path):
        rows.append(row)
        lines.append(lineno)
    return nonempty(_frame_from_rows(rows, path, lines), path)


# Arrow's JSON parser recurses per nesting level and overflows its stack near 10,000 levels: a line
# with this many opening brackets goes to Python's parser (which refuses ~1,000 levels, by name).
_ARROW_MAX_OPENINGS = 3000


# Python's json refuses (RecursionError) nesting this deep or a little deeper; Arrow reads it.
_PYTHON_MAX_DEPTH = 900


def arrow_jsonl(data: bytes) -> pl.DataFrame | None:
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


def read_json(path: Path) -> pl.DataFrame:
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
    return nonempty(_frame_from_rows(data, path), path)


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
        raise CurateError(f"{path}: rows do not share one schema: {first_line(exc)}") from None


def nonempty(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    if df.height == 0:
        raise CurateError(f"{path}: the file is empty (no rows)")
    return df


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (polars adds hints and backtrace notes below)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
