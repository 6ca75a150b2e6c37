"""The record: one row = one SFT example in a polars DataFrame.

Columns (see DESIGN.md): `id` (content hash), `messages` (list of {role, content}), optional
`reasoning` / `answer` / `gold`, `source`, `meta` (a struct with a fixed schema so frames from
different steps concatenate), and `score_*` columns added by filters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import numpy as np
import polars as pl

from curate.text import char_class

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
    """Stable 16-hex-digit id from the content, so reruns and merges line up: blake2b of the
    canonical JSON of the turns (and the reasoning, if any). `content_ids` gives the same for a column."""
    canon = json.dumps(
        [[m["role"], m["content"]] for m in messages] + ([reasoning] if reasoning else []),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=8).hexdigest()


# How json.dumps(..., ensure_ascii=False) escapes a string: backslash, quote and control characters.
_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_ESCAPES.update({chr(c): f"\\u{c:04x}" for c in range(0x20) if chr(c) not in _JSON_ESCAPES})


def _json_string(value: pl.Expr) -> pl.Expr:
    """A string expression as json.dumps(ensure_ascii=False) writes it (null as null)."""
    escaped = value.str.replace_many(list(_JSON_ESCAPES), list(_JSON_ESCAPES.values()))
    return pl.when(value.is_null()).then(pl.lit("null")).otherwise(pl.concat_str(pl.lit('"'), escaped, pl.lit('"')))


def content_ids(messages: pl.Series, reasoning: pl.Series | None = None) -> pl.Series:
    """`content_id` of every row: the canonical JSON built by polars for the whole column, then
    blake2b per row. A row at a time, building Python dicts and JSON took 6 of the 15 s that
    reading 1M rows took (bench/README.md, issue 12); the ids are the same (tests/test_io.py)."""
    turn = pl.element().struct
    items = pl.col("messages").fill_null(pl.lit([], dtype=MESSAGES)).list.eval(pl.concat_str(
        pl.lit("["), _json_string(turn.field("role")), pl.lit(","), _json_string(turn.field("content")), pl.lit("]"),
    )).list.join(",")
    frame = pl.DataFrame({"messages": messages.cast(MESSAGES)})
    if reasoning is not None:  # appended as one more item when not empty
        frame = frame.with_columns(reasoning.cast(pl.String).alias("reasoning"))
        thought = pl.col("reasoning")
        items = (pl.when(thought.is_null() | (thought == "")).then(items).when(items == "").then(_json_string(thought))
                 .otherwise(pl.concat_str(items, pl.lit(","), _json_string(thought))))
    canon = frame.select(pl.concat_str(pl.lit("["), items, pl.lit("]"))).to_series().to_list()
    return pl.Series("id", [hashlib.blake2b(c.encode("utf-8"), digest_size=8).hexdigest() for c in canon],
                     dtype=pl.String)


def with_ids(df: pl.DataFrame) -> pl.DataFrame:
    """(Re)compute `id` from `messages` and `reasoning`."""
    return df.with_columns(content_ids(df["messages"], df["reasoning"]))


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
    return FrameDigest(df.schema).update(df).hexdigest()


class FrameDigest:
    """`frame_digest` of a frame given in pieces, in order (the parts of a run, or the per-row hashes
    a global step kept in its state): the same value as for the whole frame, since polars hashes
    each row on its own (checked in tests/test_parts.py)."""

    def __init__(self, schema: pl.Schema | dict):
        self._h = hashlib.sha256(json.dumps([[c, str(t)] for c, t in schema.items()]).encode())
        self._width = len(schema)

    def update(self, df: pl.DataFrame) -> "FrameDigest":
        if self._width and df.height:
            self.update_hashes(row_hashes(df))
        return self

    def update_hashes(self, hashes: np.ndarray) -> "FrameDigest":
        """Add rows by their `row_hashes`."""
        self._h.update(np.ascontiguousarray(hashes, dtype=np.uint64).tobytes())
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:16]


def row_hashes(df: pl.DataFrame) -> np.ndarray:
    """Each row's 64-bit content hash, as `frame_digest` sees it."""
    return df.hash_rows().to_numpy()


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



def turn_lists(turns: pl.DataFrame, n_rows: int, turn: pl.Expr, name: str = "messages") -> pl.Series:
    """Lists built from a frame of turns, one row per turn: for each row 0..n_rows-1 (the `row`
    column), the values of `turn` (e.g. pl.struct("role", "content")) in the order of `turns`;
    a row with none gets an empty list. Grouping measured ~10x faster than polars'
    concat_list of structs (0.1 s against 1.3 s for 200,000 rows of two turns)."""
    grouped = turns.group_by("row", maintain_order=True).agg(turn.alias(name))
    rows = pl.DataFrame({"row": pl.int_range(n_rows, eager=True, dtype=turns.schema["row"])})
    return rows.join(grouped, on="row", how="left", maintain_order="left")[name].fill_null([])

ROLES = ("system", "user", "assistant")


def invalid_reason(messages: list[dict] | None) -> tuple[str, str] | None:
    """Why a conversation is not a valid SFT row, as (reason, detail), or None if it is
    (`invalid_reasons` for one conversation, where the rules are written)."""
    rows = pl.Series("messages", [[{"role": m["role"], "content": m["content"]} for m in messages or []]], dtype=MESSAGES)
    found = invalid_reasons(rows).row(0)
    return None if found[0] is None else found


def invalid_reasons(messages: pl.Series) -> pl.DataFrame:
    """For each conversation, why it is not a valid SFT row: columns `reason` (a short stable
    category) and `detail` (which turn), both null for a valid row.

    Valid: optional system turns first, then turns alternating user / assistant from a user
    turn, no user turn empty. A row with no assistant turn is a prompt (seeds for a generator):
    one user turn. A row with an answer must end with it. An empty final answer is left to the
    filters (heuristics drops it as "empty response"); an empty answer inside a conversation is not.
    The first fault found, in that order, is the reason.

    Polars expressions over all turns at once; only the detail of an unknown role, which quotes
    it as Python's repr() does, is written row by row, for those rows."""
    rows = pl.DataFrame({"messages": messages.cast(MESSAGES)}).with_row_index("row")
    turn = pl.element().struct
    long = rows.select(
        "row",
        role=pl.col("messages").list.eval(turn.field("role")),
        blank=pl.col("messages").list.eval(~turn.field("content").fill_null("").str.contains(f"[^{char_class('isspace')}]")),
        k=pl.col("messages").list.eval(pl.int_range(pl.len())),
        n=pl.col("messages").list.len().fill_null(0),
    ).filter(pl.col("n") > 0).explode("role", "blank", "k")
    role, k, n = pl.col("role"), pl.col("k"), pl.col("n")
    known = role.is_in(ROLES).fill_null(False)
    long = long.with_columns(start=k.filter(role.ne_missing("system")).min().over("row").fill_null(n))
    start = pl.col("start")
    expected = pl.when((k - start) % 2 == 0).then(pl.lit("user")).otherwise(pl.lit("assistant"))
    long = long.with_columns(
        misplaced=~known | (role.eq_missing("system") & (k > start)),
        out_of_turn=(k >= start) & (role.ne_missing(expected) | (pl.col("blank") & ((role == "user") | (k < n - 1)))),
    )
    found = long.group_by("row").agg(
        n.first(), start.first(),
        first_misplaced=k.filter(pl.col("misplaced")).min(),
        first_out_of_turn=k.filter(pl.col("out_of_turn")).min(),
        last_role=role.last(),
    )
    out = rows.join(found, on="row", how="left").sort("row")
    roles = pl.col("messages").list.eval(turn.field("role"))
    at = {name: roles.list.get(pl.col(name), null_on_oob=True) for name in ("first_misplaced", "first_out_of_turn", "start")}
    before = {name: roles.list.get(pl.col(name) - 1, null_on_oob=True) for name in ("first_misplaced", "first_out_of_turn")}
    bad, odd, n, start = pl.col("first_misplaced"), pl.col("first_out_of_turn"), pl.col("n").fill_null(0), pl.col("start")
    odd_expected = pl.when((odd - start) % 2 == 0).then(pl.lit("user")).otherwise(pl.lit("assistant"))
    rules = [  # (condition, reason, detail), the first that holds wins
        (n == 0, "no turns", pl.lit("the conversation is empty")),
        (bad.is_not_null() & ~at["first_misplaced"].is_in(ROLES).fill_null(False), "unknown role", None),
        (bad.is_not_null(), "system turn after the start",
         pl.format("turn {} is a system turn after a {} turn", bad + 1, before["first_misplaced"])),
        (start == n, "no user turn", pl.lit("only system turns")),
        (at["start"] != "user", "starts with an assistant turn", pl.format("turn {} is the first after the system turns", start + 1)),
        (odd.is_not_null() & at["first_out_of_turn"].ne_missing(odd_expected), "turns do not alternate",
         pl.format("turn {} is a {} turn after a {} turn", odd + 1, at["first_out_of_turn"], before["first_out_of_turn"])),
        (odd.is_not_null(), pl.format("empty {} turn", at["first_out_of_turn"]), pl.format("turn {} is empty", odd + 1)),
        ((n - start > 1) & (pl.col("last_role") == "user"), "ends with a user turn",
         pl.format("turn {} is a user turn after the answer in turn {}", n, n - 1)),
    ]
    reason = detail = None
    for cond, why, what in rules:
        why = pl.lit(why) if isinstance(why, str) else why
        what = pl.lit(None, dtype=pl.String) if what is None else what
        reason = pl.when(cond).then(why) if reason is None else reason.when(cond).then(why)
        detail = pl.when(cond).then(what) if detail is None else detail.when(cond).then(what)
    out = out.select(reason.otherwise(None).alias("reason"), detail.otherwise(None).alias("detail"),
                     at["first_misplaced"].alias("role"), bad.alias("k"))
    unknown = (out["reason"] == "unknown role").fill_null(False)
    details = out["detail"]
    if unknown.any():  # the role quoted as Python quotes it: 'tool', "it's", None
        quoted = [f"turn {k + 1} has role {role!r} (expected one of {', '.join(ROLES)})"
                  for role, k in out.filter(unknown).select("role", "k").iter_rows()]
        details = details.scatter(unknown.arg_true(), pl.Series(quoted, dtype=pl.String))
    return pl.DataFrame([out["reason"], details])


def split_invalid(df: pl.DataFrame, origin: str, first_row: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, invalid rows with `reason` and a `detail` naming `origin` and the row,
    counted from 1 in the order read; `df` starts at row `first_row` of `origin`, counted from 0)."""
    found = invalid_reasons(df["messages"]).with_row_index("i")
    bad = found["reason"].is_not_null()
    problems = found.filter(bad)
    rejected = df.filter(bad).with_columns(
        problems["reason"],
        problems.select(pl.format("{} row {}: {}", pl.lit(origin), pl.col("i") + first_row + 1, pl.col("detail"))).to_series().alias("detail"),
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
