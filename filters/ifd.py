"""IFD, Instruction-Following Difficulty: how much the instruction helps the model predict the answer.

Two published variants, and the score records which one it is (`score_ifd_variant`):
- "cherry" (Cherry LLM, Li et al., NAACL 2024, `cherry_seletion/data_analysis.py` + `data_by_IFD.py`):
  IFD = mean NLL(A | Alpaca prompt(Q)) / mean NLL(A | "### Response:"), a ratio of mean losses.
  The Alpaca prompt ends with "### Response:" and the answer follows with no newline. max_length 512.
- "superfiltering" (Li et al., ACL 2024, `code_ifd/data_analysis.py`): IFD = PPL(A | Q) / PPL(A),
  a ratio of perplexities = exp(NLL_cond - NLL_direct), with the bare prompt "{Q}\n" and the answer
  scored alone (its first token has nothing to predict it, so it is not scored, as with GPT-2).
  max_length 1024.
The two ratios rank rows differently (methods.md §3). Selection as in both repos: drop IFD >= 1
(the instruction does not help), then keep the top `fraction` of the *whole* input (or `top_k`) by
IFD, highest first.

Deviations: the record has no separate Alpaca `input`, so every prompt turn goes into the
instruction slot (the no-input template); context and answer are tokenized separately (exact span,
no boundary merge); the embedded model adds no BOS; the answer is cut to fit max_length once, so
both passes score the same answer text.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from curate.records import message_text
from curate.steps import FRAME, reasons
from filters.perplexity import LikelihoodFilter, fit_target, mean_nll

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
CHERRY_DIRECT = "### Response:"
SUPERFILTERING_PROMPT = "{instruction}\n"


def templates(variant: str, instruction: str) -> tuple[str, str]:
    """(conditioned context, direct context) for a variant; the answer follows each directly."""
    if variant == "cherry":
        return ALPACA_NO_INPUT.format(instruction=instruction), CHERRY_DIRECT
    return SUPERFILTERING_PROMPT.format(instruction=instruction), ""


def ifd_value(variant: str, nll_cond: float | None, nll_direct: float | None) -> float | None:
    """Cherry: loss ratio; Superfiltering: perplexity ratio exp(cond) / exp(direct)."""
    if nll_cond is None or nll_direct is None:
        return None
    if variant == "cherry":
        return nll_cond / nll_direct if nll_direct > 0 else None
    return math.exp(nll_cond - nll_direct)


class IFD(LikelihoodFilter):
    """Scores `score_ifd` (the ratio), `score_ifd_variant`, the conditioned and direct mean NLLs
    (nats/token) and the number of answer tokens; keeps rows with IFD < 1 in the top `fraction` of
    the whole input (or the top `top_k`), highest IFD first. Rows without a score (empty answer, or
    a prompt that fills max_length) are dropped as "no ifd score"."""

    kind: ClassVar[str] = "ifd"
    code_version: ClassVar[int] = 1
    execution: ClassVar[str] = FRAME  # the top fraction is of the whole input; the scores are per row
    row_local: ClassVar[bool] = True
    decide_settings: ClassVar[tuple[str, ...]] = ("fraction", "top_k")
    variant: Literal["cherry", "superfiltering"] = "cherry"
    max_length: int | None = Field(None, ge=8)  # None: 512 for cherry, 1024 for superfiltering
    fraction: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if self.fraction is not None and self.top_k is not None:
            raise ValueError("give fraction or top_k, not both")
        return self

    @property
    def length(self) -> int:
        return self.max_length or (512 if self.variant == "cherry" else 1024)

    def score_columns(self) -> list[str]:
        p = self.column
        return [p, f"{p}_variant", f"{p}_nll_cond", f"{p}_nll_direct", f"{p}_tokens"]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        scorer = self.load_scorer()
        pairs = []
        for instruction, answer in zip(message_text(df, "prompt").to_list(), message_text(df, "response").to_list()):
            cond, direct = templates(self.variant, instruction)
            answer = fit_target(scorer, cond, answer, self.length)[0]  # same answer text in both passes
            pairs += [(cond, answer), (direct, answer)]
        scored = scorer.score_many(pairs)
        cond_nll = [mean_nll(lp) for lp in scored[0::2]]
        direct_nll = [mean_nll(lp) for lp in scored[1::2]]
        col, variant, c_cond, c_direct, c_tokens = self.score_columns()
        return df.with_columns(
            pl.Series(col, [ifd_value(self.variant, c, d) for c, d in zip(cond_nll, direct_nll)], dtype=pl.Float64),
            pl.lit(self.variant).alias(variant),
            pl.Series(c_cond, cond_nll, dtype=pl.Float64),
            pl.Series(c_direct, direct_nll, dtype=pl.Float64),
            pl.Series(c_tokens, [len(lp) for lp in scored[0::2]], dtype=pl.Int64),
        )

    def thresholds(self) -> dict[str, list[float]]:
        """IFD >= 1 is always dropped; the report draws that line (the top-fraction cut depends on the data)."""
        return {self.column: [1.0]}

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        col, variant = self.score_columns()[:2]
        stored = set(df[variant].drop_nulls().unique().to_list())
        if stored - {self.variant}:
            raise ValueError(f"{col} holds IFD of variant {sorted(stored)}, not {self.variant!r}; rescore, or give this filter another name")
        ifd = df[col]
        valid = ifd.is_not_null() & ~ifd.fill_null(0).is_nan()
        below = valid & (ifd.fill_null(1.0) < 1.0)
        n = len(df)
        k = self.top_k if self.top_k is not None else (math.floor(self.fraction * n + 1e-9) if self.fraction is not None else n)
        # rank among IFD < 1, highest first; ties keep row order
        order = pl.DataFrame({"ifd": ifd.fill_null(-math.inf), "ok": below, "row": range(n)})
        order = order.filter(pl.col("ok")).sort(["ifd", "row"], descending=[True, False])
        top = set(order["row"].head(k).to_list())
        in_top = pl.Series([i in top for i in range(n)])
        reason = pl.select(
            pl.when(~valid).then(pl.lit("no ifd score"))
            .when(~below).then(pl.lit("ifd >= 1"))
            .when(~in_top).then(pl.lit("below top fraction"))
            .otherwise(None)
        ).to_series()
        return reasons(reason.is_null(), reason)

    def explain(self, df: pl.DataFrame) -> pl.Series:
        col, _, c_cond, c_direct, _ = self.score_columns()
        return df.select(
            pl.format("ifd {} (nll {} given the instruction, {} without)", pl.col(col).round(4),
                      pl.col(c_cond).round(3), pl.col(c_direct).round(3)).alias("detail")
        ).to_series()
