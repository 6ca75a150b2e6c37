"""Mapping the common dataset shapes onto the record schema: messages (`messages`), ShareGPT
(`conversations` with from/value), Alpaca (`instruction` / `input` / `output`), prompt/completion
and question/answer, with every other input column kept beside the record's (`input_columns`).
Rows are mapped as they are; `curate.records.split_invalid` says which are not valid SFT rows.
`curate.io.to_records` is the public entry point (re-exported there)."""

from __future__ import annotations

import logging

import polars as pl

from curate.errors import CurateError
from curate.records import MESSAGES, SCHEMA, conform, content_ids, turn_lists
from curate.text import python_chars

log = logging.getLogger(__name__)

# Column names tried, in order, for each role when no explicit mapping is given.
PROMPT_COLUMNS = ("instruction", "prompt", "question", "query", "input_text", "text")


RESPONSE_COLUMNS = ("output", "completion", "response", "answer_text", "chosen")


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


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
    frame = frame.with_columns(content_ids(frame["messages"]))
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
