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

Format = Literal["messages", "alpaca", "sharegpt", "prompt_completion", "preference"]
FORMATS: tuple[str, ...] = ("messages", "alpaca", "sharegpt", "prompt_completion", "preference")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
# The columns each format writes beside the carried ones (id, source; reasoning with reasoning: field).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",), "alpaca": ("instruction", "input", "output", "system"), "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"), "preference": ("prompt", "chosen", "rejected"),
}
DEFAULT_WRAPPER = "<think>\n{reasoning}\n</think>\n\n{answer}"


def _with_reasoning(msgs: list[dict], reasoning: str | None, wrapper: str | None) -> list[dict]:
    """Put the reasoning inline into the last assistant turn, if asked to and there is some."""
    if not reasoning or wrapper is None or not msgs or msgs[-1]["role"] != "assistant":
        return msgs
    last = {"role": "assistant", "content": wrapper.replace("{reasoning}", reasoning).replace("{answer}", msgs[-1]["content"])}
    return msgs[:-1] + [last]


def convert(df: pl.DataFrame, fmt: str = "messages", reasoning: Literal["inline", "field", "drop"] = "inline",
            wrapper: str = DEFAULT_WRAPPER, keep: tuple[str, ...] = ("id", "source")) -> pl.DataFrame:
    """Records → rows in `fmt`, with the `keep` columns carried along."""
    if fmt not in FORMATS:
        raise CurateError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    has_reasoning = "reasoning" in df.columns and df["reasoning"].null_count() < df.height
    wrap = wrapper if reasoning == "inline" else None
    conversations = [
        _with_reasoning(m, r, wrap)
        for m, r in zip(df["messages"].to_list(), df["reasoning"].to_list() if "reasoning" in df.columns else [None] * df.height)
    ]
    rows = [_convert_one(msgs, fmt, i, df) for i, msgs in enumerate(conversations)]
    out = pl.DataFrame(rows) if rows else pl.DataFrame()
    extra = [c for c in keep if c in df.columns]
    if reasoning == "field" and has_reasoning:
        extra.append("reasoning")
    return pl.concat([df.select(extra), out], how="horizontal") if rows else df.select(extra)


def _convert_one(msgs: list[dict], fmt: str, i: int, df: pl.DataFrame) -> dict:
    if fmt == "messages":
        return {"messages": msgs}
    if fmt == "sharegpt":
        return {"conversations": [{"from": SHAREGPT_FROM.get(m["role"], m["role"]), "value": m["content"]} for m in msgs]}
    system = [m for m in msgs if m["role"] == "system"]
    turns = [m for m in msgs if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "assistant":
        raise CurateError(f"row {i}: format {fmt!r} needs a conversation that ends with an assistant answer")
    if fmt == "alpaca":
        if len(turns) != 2:
            raise CurateError(f"row {i}: the alpaca format holds one instruction and one answer; this row has "
                              f"{len(turns)} turns (use messages or sharegpt for multi-turn data)")
        return {"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"],
                "system": system[0]["content"] if system else ""}
    prompt = msgs[:-1]
    if fmt == "prompt_completion":
        return {"prompt": prompt, "completion": [msgs[-1]]}
    # preference
    if "candidates" not in df.columns:
        raise CurateError("the preference format needs ranked candidates (a best_of_n step)")
    cands = [c for c in (df["candidates"][i].to_list() or []) if c.get("content") is not None]
    if len(cands) < 2:
        raise CurateError(f"row {i}: a preference pair needs at least two candidates")
    ranked = sorted(cands, key=lambda c: -(c["score"] if c["score"] is not None else float("-inf")))
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": ranked[0]["content"]}],
            "rejected": [{"role": "assistant", "content": ranked[-1]["content"]}]}
