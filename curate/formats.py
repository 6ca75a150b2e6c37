"""Converters from records to the shapes trainers read.

- messages: `{"messages": [{role, content}, ...]}`: TRL's SFTTrainer conversational format.
- alpaca: `{"instruction", "input", "output"}` (single turn; a system turn goes to `system`).
- sharegpt: `{"conversations": [{"from": "system"|"human"|"gpt", "value"}]}`.
- prompt_completion: `{"prompt": [turns before the last answer], "completion": [the last answer]}`:
  TRL's conversational prompt-completion format, which trains on the completion only.
- preference: `{"prompt": [...], "chosen": [answer], "rejected": [answer]}` from rows that carry
  ranked `candidates` (best_of_n): chosen = best, rejected = worst; TRL's DPO format.

Reasoning (`reasoning` column) is either put inline before the answer with a wrapper such as
"<think>\\n{reasoning}\\n</think>\\n\\n{answer}" or kept as a separate `reasoning` field.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from curate.errors import CurateError
from curate.records import turn_lists

Format = Literal["messages", "alpaca", "sharegpt", "prompt_completion", "preference"]
FORMATS: tuple[str, ...] = ("messages", "alpaca", "sharegpt", "prompt_completion", "preference")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
# The columns each format writes beside the carried ones (id, source; reasoning with reasoning: field).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",), "alpaca": ("instruction", "input", "output", "system"), "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"), "preference": ("prompt", "chosen", "rejected"),
}
DEFAULT_WRAPPER = "<think>\n{reasoning}\n</think>\n\n{answer}"


def convert(df: pl.DataFrame, fmt: str = "messages", reasoning: Literal["inline", "field", "drop"] = "inline",
            wrapper: str = DEFAULT_WRAPPER, keep: tuple[str, ...] = ("id", "source")) -> pl.DataFrame:
    """Records → rows in `fmt`, with the `keep` columns carried along. Polars expressions over
    whole columns (no Python per row); a row that cannot take the format is an error naming the
    first such row (counted from 0)."""
    if fmt not in FORMATS:
        raise CurateError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    has_reasoning = "reasoning" in df.columns and df["reasoning"].null_count() < df.height
    extra = [c for c in keep if c in df.columns]
    if reasoning == "field" and has_reasoning:
        extra.append("reasoning")
    if df.height == 0:
        return df.select(extra)
    messages = _with_reasoning(df, wrapper if reasoning == "inline" else None)
    if fmt == "messages":
        out = messages.to_frame("messages")
    elif fmt == "sharegpt":
        role, content = pl.element().struct.field("role"), pl.element().struct.field("content")
        speaker = role.replace_strict(SHAREGPT_FROM, default=role, return_dtype=pl.String)
        out = messages.list.eval(pl.struct(speaker.alias("from"), content.alias("value"))).to_frame("conversations")
    else:
        out = _one_answer(df, messages, fmt)
    return pl.concat([df.select(extra), out], how="horizontal")


def _with_reasoning(df: pl.DataFrame, wrapper: str | None) -> pl.Series:
    """The conversations, with the reasoning put inline into the last assistant turn where asked
    to (`wrapper`) and there is some: `wrapper` with {reasoning}, then {answer}, replaced."""
    messages = df["messages"]
    if wrapper is None or "reasoning" not in df.columns:
        return messages
    reasoning, last = pl.col("reasoning"), pl.col("messages").list.last().struct
    inline = (reasoning.is_not_null() & (reasoning != "") & last.field("role").eq_missing("assistant")).fill_null(False)
    inline = df.select(inline.alias("inline")).to_series()
    rows = inline.arg_true()
    if not len(rows):
        return messages
    turns = (df[rows].select(pl.col("messages"), reasoning).with_columns(row=rows).explode("messages")
             .unnest("messages").with_columns(last=(pl.col("row") != pl.col("row").shift(-1)).fill_null(True)))
    answer = (pl.repeat(pl.lit(wrapper), pl.len()).str.replace_all("{reasoning}", reasoning, literal=True)
              .str.replace_all("{answer}", pl.col("content").fill_null(""), literal=True))
    turns = turns.with_columns(content=pl.when(pl.col("last")).then(answer).otherwise(pl.col("content")))
    lists = turn_lists(turns, df.height, pl.struct("role", "content")).cast(messages.dtype).alias("inlined")
    return pl.DataFrame([messages, lists, inline]).select(
        pl.when(pl.col("inline")).then(pl.col("inlined")).otherwise(pl.col("messages")).alias("messages")).to_series()


def _one_answer(df: pl.DataFrame, messages: pl.Series, fmt: str) -> pl.DataFrame:
    """alpaca, prompt_completion or preference rows: formats that hold one answer, the last turn."""
    role = pl.element().struct.field("role")
    m = pl.col("messages").fill_null([])
    turns = m.list.eval(pl.element().filter(role.ne_missing("system")))  # not system turns
    system = m.list.eval(pl.element().filter(role.eq_missing("system")))
    frame = pl.DataFrame([messages]).with_columns(turns.alias("turns"), system.alias("system"))
    n_turns = pl.col("turns").list.len()
    answered = (n_turns > 0) & pl.col("turns").list.last().struct.field("role").eq_missing("assistant")
    # (fault, message): the first row with a fault is named, with the first of its faults
    checks = [(~answered, f"row {{i}}: format {fmt!r} needs a conversation that ends with an assistant answer")]
    if fmt == "alpaca":
        checks.append((n_turns != 2, "row {i}: the alpaca format holds one instruction and one answer; this row has "
                                     "{n_turns} turns (use messages or sharegpt for multi-turn data)"))
    if fmt == "preference" and "candidates" not in df.columns:
        checks.append((pl.lit(True), "the preference format needs ranked candidates (a best_of_n step)"))
    elif fmt == "preference":
        score = pl.element().struct.field("score").cast(pl.Float64).fill_null(float("-inf"))
        frame = frame.with_columns(
            pl.Series("candidates", df["candidates"]).fill_null([]).to_frame().select(
                pl.col("candidates")
                .list.eval(pl.element().filter(pl.element().struct.field("content").is_not_null()))
                .list.eval(pl.element().sort_by(score, descending=True, maintain_order=True))  # best first, ties kept
            ).to_series())
        checks.append((pl.col("candidates").list.len() < 2, "row {i}: a preference pair needs at least two candidates"))
    faults = frame.select(n_turns.alias("n_turns"),
                          *[fault.fill_null(True).alias(str(k)) for k, (fault, _) in enumerate(checks)])
    faulty = faults.select(pl.any_horizontal(pl.exclude("n_turns"))).to_series().arg_true()
    if len(faulty):
        row = faults.row(int(faulty[0]), named=True)
        message = next(message for k, (_, message) in enumerate(checks) if row[str(k)])
        raise CurateError(message.format(i=int(faulty[0]), n_turns=row["n_turns"]))
    if fmt == "alpaca":
        turns = pl.col("turns")
        return frame.select(
            instruction=turns.list.get(0).struct.field("content"),
            input=pl.lit(""),
            output=turns.list.get(1).struct.field("content"),
            system=pl.when(pl.col("system").list.len() > 0).then(pl.col("system").list.first().struct.field("content"))
            .otherwise(pl.lit("")),
        )
    prompt = pl.col("messages").list.head(pl.col("messages").list.len() - 1)
    if fmt == "prompt_completion":
        return frame.select(prompt=prompt, completion=pl.col("messages").list.tail(1))
    answer = pl.col("candidates").list
    return frame.select(
        prompt=prompt,
        chosen=pl.concat_list(pl.struct(role=pl.lit("assistant"), content=answer.first().struct.field("content"))),
        rejected=pl.concat_list(pl.struct(role=pl.lit("assistant"), content=answer.last().struct.field("content"))),
    )
