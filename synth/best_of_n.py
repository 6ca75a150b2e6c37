"""`best_of_n`: sample n responses per instruction, grade each with the judge, keep the best.

Best-of-n sampling with a reward or judge model is the usual rejection-sampling baseline for SFT
data (e.g. Touvron et al. 2023, Llama 2, section 3.2.2 rejection sampling). The kept row carries
all candidates with their scores in `candidates` (list of {content, score}), from which preference
pairs (chosen = best, rejected = worst) can be written; the other candidates go to rejects with
reason "not best of n", so nothing is dropped silently.

The judge is a round of its own after the sampling, not a second call inside `parse`: the
candidates are sampled through `Responses` (the RowGenerator framework), then scored by the judge
filter's own requests through the same teacher (and cache), then ranked within each prompt. So an
engine runs best_of_n whole (`single_call` is False); every batch still gives the rows of its
rows alone, since a prompt's candidates come from the same batch.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field

from curate.llm import Usage
from curate.records import concat
from curate.steps import Context, StepResult
from filters.judge import Judge
from synth.responses import Responses

CANDIDATE = pl.Struct({"content": pl.String, "score": pl.Float64})


class BestOfN(Responses):
    """The `responses` step's sampling settings, plus the judge that picks the best candidate."""

    kind: ClassVar[str] = "best_of_n"
    code_version: ClassVar[int] = 1  # with Responses' and the judge's (Step.code_versions)
    single_call: ClassVar[bool] = False  # the judge is a second round, in run()
    n: int = Field(4, ge=2)
    temperature: float = Field(0.9, ge=0)
    judge: Judge = Field(default_factory=lambda: Judge(method="rating", scale=10))

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        generated = super().run(df.with_row_index("_prompt_row"), ctx)
        judge = self.judge.model_copy()
        judge.use(ctx.llm)
        scored = judge.score(generated.kept)
        column = judge.column
        # Best = highest score; ties and unscored candidates go to the lowest sample index.
        ranked = scored.with_columns(
            pl.col(column).fill_null(float("-inf")).alias("_rank_score"),
            pl.col("meta").struct.field("sample").alias("_sample"),
        ).sort(["_prompt_row", "_rank_score", "_sample"], descending=[False, True, False])
        candidates = ranked.group_by("_prompt_row", maintain_order=True).agg(
            pl.struct(pl.col("messages").list.last().struct.field("content").alias("content"),
                      pl.col(column).alias("score")).alias("candidates")
        )
        is_best = ranked.select(pl.col("_prompt_row").is_first_distinct()).to_series()
        best = ranked.filter(is_best).join(candidates, on="_prompt_row", how="left")
        others = ranked.filter(~is_best).with_columns(
            pl.lit("not best of n").alias("reason"),
            pl.format("score {} below the chosen candidate", pl.col(column).round(2)).alias("detail"),
        )
        drop = ["_prompt_row", "_rank_score", "_sample"]
        rejected = [others.drop(drop)]
        if generated.rejected is not None and generated.rejected.height:
            rejected.append(generated.rejected.drop("_prompt_row"))
        usage = Usage(**generated.stats["llm"])
        usage.add(judge.last_usage or Usage())
        return StepResult(
            kept=best.drop(drop).with_columns(pl.col("candidates").cast(pl.List(CANDIDATE))),
            rejected=concat(rejected),
            stats={"llm": usage.as_dict()},
        )
