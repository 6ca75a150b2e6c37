"""The record: one row = one SFT example in a polars DataFrame.

Columns (see DESIGN.md): `id` (content hash), `messages` (list of {role, content}), optional
`reasoning` / `answer` / `gold`, `source`, `meta` (a struct with a fixed schema so frames from
different steps concatenate), and `score_*` columns added by filters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import polars as pl

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)

# Fixed, so that rows from different generators concatenate without schema juggling.
META = pl.Struct(
    {
        "teacher": pl.String,  # model name as the backend knows it
        "backend": pl.String,  # embedded | openai | vllm
        "params": pl.String,  # sampling params as canonical JSON
        "seed": pl.Int64,
        "sample": pl.Int64,  # index among the n samples of one prompt
        "template_hash": pl.String,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "cost": pl.Float64,
        # why the teacher stopped writing the response: "stop", or "length" when cut at max_tokens
        "finish_reason": pl.String,
    }
)

SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String,
    "messages": MESSAGES,
    "reasoning": pl.String,
    "answer": pl.String,
    "gold": pl.String,
    "source": pl.String,
    "meta": META,
}
CORE_COLUMNS = tuple(SCHEMA)


def content_id(messages: Iterable[dict], reasoning: str | None = None) -> str:
    """Stable 16-hex-digit id from the content, so reruns and merges line up."""
    canon = json.dumps(
        [[m["role"], m["content"]] for m in messages] + ([reasoning] if reasoning else []),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=8).hexdigest()


def with_ids(df: pl.DataFrame) -> pl.DataFrame:
    """(Re)compute `id` from `messages` and `reasoning`."""
    ids = [
        content_id(msgs or [], reasoning)
        for msgs, reasoning in zip(df["messages"].to_list(), df["reasoning"].to_list())
    ]
    return df.with_columns(pl.Series("id", ids, dtype=pl.String))


def make_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Build a record frame from dicts with at least `messages`; fills ids and missing columns."""
    df = pl.DataFrame(rows, schema_overrides={k: v for k, v in SCHEMA.items() if any(k in r for r in rows)})
    return conform(df)


def conform(df: pl.DataFrame, recompute_ids: bool = False) -> pl.DataFrame:
    """Add missing core columns as nulls, cast them to the schema, put them first, fill ids
    (recompute_ids: every id afresh, for rows whose content has changed)."""
    if "messages" not in df.columns:
        raise ValueError(f"a record frame needs a 'messages' column; it has {df.columns}")
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in SCHEMA.items() if c not in df.columns]
    df = df.with_columns(missing) if missing else df
    df = df.with_columns([pl.col(c).cast(t) for c, t in SCHEMA.items() if c != "meta"])
    if df.schema["meta"] != META:
        df = df.with_columns(_conform_meta(df["meta"]))
    extra = [c for c in df.columns if c not in SCHEMA]
    df = df.select(*CORE_COLUMNS, *extra)
    if recompute_ids or df["id"].null_count():
        df = with_ids(df)
    return df


def _conform_meta(meta: pl.Series) -> pl.Series:
    """Cast a meta column of any struct shape (or all nulls) onto META, keeping known fields."""
    if meta.dtype == pl.Null or not isinstance(meta.dtype, pl.Struct):
        return pl.Series("meta", [None] * len(meta), dtype=META)
    have = {f.name for f in meta.dtype.fields}
    fields = [
        (meta.struct.field(f) if f in have else pl.Series(f, [None] * len(meta))).cast(t).alias(f)
        for f, t in META.to_schema().items()
    ]
    return pl.struct(fields, eager=True).alias("meta") if fields else meta


def frame_digest(df: pl.DataFrame) -> str:
    """Content hash of a frame: its column names and types and every value, in row order. Stable
    within one polars version (polars' row hash may change between versions; a new version then
    only makes a rerun redo its steps)."""
    h = hashlib.sha256(json.dumps([[c, str(t)] for c, t in df.schema.items()]).encode())
    if df.width and df.height:
        h.update(df.hash_rows().to_numpy().tobytes())
    return h.hexdigest()[:16]


def concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate record frames whose extra (score) columns may differ."""
    frames = [f for f in frames if f is not None]
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    return pl.concat(frames, how="diagonal_relaxed")


def score_value_columns(schema: pl.Schema | dict) -> list[str]:
    """The `score_*` columns holding a measure per row (numeric or boolean): not fingerprints
    (text), and not row positions or ranks (`_row`, `_rank`: where a row sits, not how good it is)."""
    return [c for c, t in schema.items() if c.startswith("score_") and (t.is_numeric() or t == pl.Boolean)
            and not c.endswith(("_row", "_rank"))]


def message_text(df: pl.DataFrame, part: str = "text") -> pl.Series:
    """The text of each row, as one string.

    part: "prompt" (all non-assistant turns), "response" (the last assistant turn),
    "text" (every turn, joined by newlines).
    """
    content = pl.element().struct.field("content")
    role = pl.element().struct.field("role")
    msgs = pl.col("messages")
    if part == "text":
        expr = msgs.list.eval(content).list.join("\n")
    elif part == "prompt":
        expr = msgs.list.eval(content.filter(role != "assistant")).list.join("\n")
    elif part == "response":
        expr = msgs.list.eval(content.filter(role == "assistant")).list.last()
    else:
        raise ValueError(f"part must be 'prompt', 'response' or 'text', not {part!r}")
    return df.select(expr.fill_null("").alias(part)).to_series()


ROLES = ("system", "user", "assistant")


def invalid_reason(messages: list[dict] | None) -> tuple[str, str] | None:
    """Why a conversation is not a valid SFT row, as (reason, detail), or None if it is.

    Valid: optional system turns first, then turns alternating user / assistant from a user
    turn, no user turn empty. A row with no assistant turn is a prompt (seeds for a generator):
    one user turn. A row with an answer must end with it. An empty final answer is left to the
    filters (heuristics drops it as "empty response"); an empty answer inside a conversation is not.
    """
    turns = list(messages or [])
    if not turns:
        return "no turns", "the conversation is empty"
    start = next((k for k, m in enumerate(turns) if m["role"] != "system"), len(turns))
    for k, m in enumerate(turns):
        if m["role"] not in ROLES:
            return "unknown role", f"turn {k + 1} has role {m['role']!r} (expected one of {', '.join(ROLES)})"
        if m["role"] == "system" and k > start:
            return "system turn after the start", f"turn {k + 1} is a system turn after a {turns[k - 1]['role']} turn"
    if start == len(turns):
        return "no user turn", "only system turns"
    if turns[start]["role"] != "user":
        return "starts with an assistant turn", f"turn {start + 1} is the first after the system turns"
    for k in range(start, len(turns)):
        m, expected = turns[k], "user" if (k - start) % 2 == 0 else "assistant"
        if m["role"] != expected:
            return "turns do not alternate", f"turn {k + 1} is a {m['role']} turn after a {turns[k - 1]['role']} turn"
        if not (m["content"] or "").strip() and (m["role"] == "user" or k < len(turns) - 1):
            return f"empty {m['role']} turn", f"turn {k + 1} is empty"
    if len(turns) - start > 1 and turns[-1]["role"] == "user":
        return "ends with a user turn", f"turn {len(turns)} is a user turn after the answer in turn {len(turns) - 1}"
    return None


def split_invalid(df: pl.DataFrame, origin: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, invalid rows with `reason` and a `detail` naming `origin` and the row,
    counted from 1 in the order read)."""
    found = [invalid_reason(m) for m in df["messages"].to_list()]
    bad = pl.Series([f is not None for f in found], dtype=pl.Boolean)
    problems = [(i, f) for i, f in enumerate(found) if f is not None]
    rejected = df.filter(bad).with_columns(
        pl.Series("reason", [reason for _, (reason, _) in problems], dtype=pl.String),
        pl.Series("detail", [f"{origin} row {i + 1}: {detail}" for i, (_, detail) in problems], dtype=pl.String),
    )
    return df.filter(~bad), rejected


def meta_struct(rows: list[dict[str, Any]]) -> pl.Series:
    """A META column from a list of dicts (missing keys become null)."""
    return pl.Series("meta", rows, dtype=META)


def finish_reasons(df: pl.DataFrame) -> pl.Series:
    """Each row's meta.finish_reason; null where it is not known (rows no teacher wrote, such as an
    existing dataset, or files written before meta had the field)."""
    meta = df["meta"] if "meta" in df.columns else None
    if meta is None or not isinstance(meta.dtype, pl.Struct) or "finish_reason" not in {f.name for f in meta.dtype.fields}:
        return pl.Series("finish_reason", [None] * df.height, dtype=pl.String)
    return meta.struct.field("finish_reason").cast(pl.String).alias("finish_reason")
