"""`responses`: answer each row's instruction with the teacher, n samples per instruction.

The prompt is the row's conversation up to (not including) any trailing assistant turns, so the
step also regenerates answers for an existing dataset. Each sample is its own request (seed + i),
so it is cached and resumed on its own. A response the teacher stopped at `max_tokens` goes to
rejects ("truncated at max_tokens", with the cut text) unless `keep_truncated`; every kept row has
the teacher's finish reason in `meta.finish_reason`.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field

from curate.llm import Request
from curate.records import META, conform
from curate.steps import Context, Step, StepResult
from synth.base import TRUNCATED, cut_off, teacher_meta, template_hash


def prompt_turns(messages: list[dict]) -> list[dict]:
    """The conversation without its trailing assistant turns."""
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    return messages[:end]


class Responses(Step):
    """Generate `n` responses per instruction with the recipe's teacher."""

    kind: ClassVar[str] = "responses"
    code_version: ClassVar[int] = 1
    needs_llm: ClassVar[bool] = True
    n: int = Field(1, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    system_prompt: str | None = None
    seed: int | None = None  # default: the recipe's seed
    keep_truncated: bool = False  # keep responses cut at max_tokens (they end mid-answer)

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        seed = ctx.seed if self.seed is None else self.seed
        prompts = []
        for msgs in df["messages"].to_list():
            turns = [m for m in prompt_turns(msgs) if m["role"] != "system" or self.system_prompt is None]
            if self.system_prompt is not None:
                turns = [{"role": "system", "content": self.system_prompt}] + turns
            prompts.append(turns)
        requests = [
            Request.chat(turns, max_tokens=self.max_tokens, temperature=self.temperature,
                         top_p=self.top_p, seed=seed + i, sample=i)
            for turns in prompts
            for i in range(self.n)
        ]
        responses, usage = ctx.llm.generate(requests, label=self.kind)

        thash = template_hash(self.system_prompt or "")
        answered: dict[str, list] = {"kept": [], TRUNCATED: []}  # (input row, messages, meta) each
        failed_idx, errors = [], []
        for k, (req, resp) in enumerate(zip(requests, responses)):
            row = k // self.n
            if not resp.ok:
                failed_idx.append(row)
                errors.append(resp.error)
                continue
            group = TRUNCATED if cut_off(resp) and not self.keep_truncated else "kept"
            answered[group].append((row, prompts[row] + [{"role": "assistant", "content": resp.text or ""}],
                                    teacher_meta(ctx.llm, req, resp, thash)))
        kept, cut = (self._rows(df, answered[g]) for g in ("kept", TRUNCATED))
        failed = df[failed_idx].with_columns(
            pl.lit("teacher request failed").alias("reason"), pl.Series("detail", errors, dtype=pl.String)
        )
        cut = cut.with_columns(pl.lit(TRUNCATED).alias("reason"),
                               pl.lit(f"cut at max_tokens={self.max_tokens}").alias("detail"))
        rejected = pl.concat([failed, cut], how="diagonal_relaxed")
        return StepResult(kept=kept, rejected=rejected, stats={"llm": usage.as_dict()})

    @staticmethod
    def _rows(df: pl.DataFrame, answered: list[tuple[int, list, dict]]) -> pl.DataFrame:
        """The input rows `answered` names, with their new conversation and meta."""
        rows = [r for r, _, _ in answered]
        out = df[rows].with_columns(
            pl.Series("messages", [m for _, m, _ in answered], dtype=df.schema["messages"]),
            pl.Series("meta", [meta for _, _, meta in answered], dtype=META),
        )
        return conform(out, recompute_ids=True)
