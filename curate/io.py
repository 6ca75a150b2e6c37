"""Reading datasets into records and writing them out.

Readers accept jsonl, json, parquet, csv, plain text (a .txt file or a folder of them: one document
per file, in a `text` column) and a `datasets` dataset saved to disk, and map the common
shapes onto the record schema: messages (`messages`), ShareGPT (`conversations` with from/value),
Alpaca (`instruction` / `input` / `output`), prompt/completion, and question/answer. A malformed line
is reported with its file and line number; an input with no usable text column names the columns
it has. Writers are atomic: a file appears whole or not at all.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import CurateError
from curate.records import conform, content_id, meta_struct

# Column names tried, in order, for each role when no explicit mapping is given.
PROMPT_COLUMNS = ("instruction", "prompt", "question", "query", "input_text", "text")
RESPONSE_COLUMNS = ("output", "completion", "response", "answer_text", "chosen")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


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
        return _nonempty(pl.read_parquet(path), path)
    if name.endswith(".txt"):
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise CurateError(f"{path}: the file is empty")
        return pl.DataFrame({"text": [text]})
    if name.endswith((".csv", ".tsv")):
        try:
            df = pl.read_csv(path, separator="\t" if name.endswith(".tsv") else ",")
        except pl.exceptions.NoDataError:
            raise CurateError(f"{path}: the file is empty") from None
        except pl.exceptions.ComputeError as exc:
            raise CurateError(f"{path}: cannot parse as CSV: {exc}") from None
        return _nonempty(df, path)
    raise CurateError(f"{path}: unknown format (expected .jsonl, .json, .parquet, .csv, .txt or a folder)")


def read_records(
    path: str | Path,
    *,
    source: str | None = None,
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    gold: str | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """Read a dataset and map it onto the record schema.

    `prompt` / `response` / `system` / `gold` name columns explicitly; otherwise the shape is
    detected from the column names (see the module docstring).
    """
    df = read_table(path)
    if limit is not None:
        df = df.head(limit)
    return to_records(df, origin=str(path), source=source or Path(path).name.split(".")[0],
                      prompt=prompt, response=response, system=system, gold=gold)


def to_records(
    df: pl.DataFrame,
    *,
    origin: str = "<frame>",
    source: str = "unknown",
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    gold: str | None = None,
) -> pl.DataFrame:
    """Map a frame of any supported shape onto records (`origin` names it in error messages)."""
    for key, col in (("prompt", prompt), ("response", response), ("system", system), ("gold", gold)):
        if col is not None and col not in df.columns:
            raise CurateError(f"{origin}: column {col!r} (given as {key}) not found; columns are {df.columns}")
    rows = df.to_dicts()
    if prompt is None and "messages" in df.columns:
        messages = [_check_messages(r["messages"], origin, i) for i, r in enumerate(rows)]
    elif prompt is None and "conversations" in df.columns:
        messages = [_sharegpt(r["conversations"], origin, i) for i, r in enumerate(rows)]
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
        messages = []
        for r in rows:
            user = str(r[p_col] or "").strip()
            if extra_input and (r.get(extra_input) or "").strip():
                user = f"{user}\n\n{r[extra_input].strip()}"
            turns = []
            if system and r.get(system):
                turns.append({"role": "system", "content": str(r[system])})
            turns.append({"role": "user", "content": user})
            if r_col and r.get(r_col) is not None:
                turns.append({"role": "assistant", "content": str(r[r_col])})
            messages.append(turns)
    out: dict[str, Any] = {
        "id": [content_id(m) for m in messages],
        "messages": messages,
        "source": [str(r.get("source") or source) for r in rows] if "source" in df.columns else [source] * len(rows),
    }
    for col in ("reasoning", "answer"):
        if col in df.columns and df.schema[col] == pl.String:
            out[col] = df[col].to_list()
    if gold:
        out["gold"] = [None if r[gold] is None else str(r[gold]) for r in rows]
    elif "gold" in df.columns:
        out["gold"] = [None if r["gold"] is None else str(r["gold"]) for r in rows]
    frame = pl.DataFrame(out)
    scores = [c for c in df.columns if c.startswith("score_")]
    frame = frame.with_columns(df.select(scores)) if scores else frame
    if "meta" in df.columns:
        frame = frame.with_columns(df["meta"])
    else:
        frame = frame.with_columns(meta_struct([None] * len(rows)))
    return conform(frame)


def _check_messages(msgs: Any, origin: str, i: int) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise CurateError(f"{origin}: row {i + 1}: 'messages' must be a list of {{role, content}} objects")
    return [{"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])} for m in msgs]


def _sharegpt(turns: Any, origin: str, i: int) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise CurateError(f"{origin}: row {i + 1}: 'conversations' must be a list of {{from, value}} objects")
    out = []
    for t in turns:
        who = SHAREGPT_ROLES.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
        if who is None:
            raise CurateError(f"{origin}: row {i + 1}: unknown ShareGPT speaker in {t!r}")
        out.append({"role": who, "content": str(t.get("value") or "")})
    return out


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> pl.DataFrame:
    rows = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CurateError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise CurateError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
    return _nonempty(_frame_from_rows(rows, path), path)


def _read_json(path: Path) -> pl.DataFrame:
    with _open_text(path) as fh:
        text = fh.read()
    if not text.strip():
        raise CurateError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CurateError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise CurateError(f"{path}: expected a JSON list of objects (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise CurateError(f"{path}: expected a JSON list of objects")
    return _nonempty(_frame_from_rows(data, path), path)


def _frame_from_rows(rows: list[dict], path: Path) -> pl.DataFrame:
    try:
        return pl.DataFrame(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise CurateError(f"{path}: rows do not share one schema: {exc}") from None


def _read_dataset_dir(path: Path) -> pl.DataFrame:
    if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        return _nonempty(pl.from_arrow(ds.data.table), path)
    files = sorted(path.glob("*.parquet"))
    if files:
        return _nonempty(pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed"), path)
    texts = sorted(path.glob("*.txt"))  # a folder of plain-text documents, one per file
    if texts:
        return pl.DataFrame({"text": [t.read_text(encoding="utf-8") for t in texts], "source": [t.stem for t in texts]})
    raise CurateError(f"{path}: a folder must be a saved `datasets` dataset or hold .parquet or .txt files")


def _nonempty(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    if df.height == 0:
        raise CurateError(f"{path}: the file is empty (no rows)")
    return df


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


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def write_jsonl(df: pl.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.write_ndjson(tmp)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
