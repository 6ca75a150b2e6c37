"""The run report's per-step section holds a histogram of every score the model-based filters add
(perplexity, IFD, judge, NUGGETS), with their fixed cut-offs; scores are made up, no model runs."""

import polars as pl
import pytest

from curate.records import make_frame
from curate.report.compute import step_section
from filters.ifd import IFD
from filters.judge import Judge
from filters.nuggets import Nuggets
from filters.perplexity import Perplexity

N = 8


def frame() -> pl.DataFrame:
    return make_frame([{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
                       for i in range(N)])


def scored(step) -> pl.DataFrame:
    """`frame()` with the step's score columns filled with plausible values."""
    x = [i / N for i in range(N)]
    cols = {
        "perplexity": {"score_perplexity_response": [5 + 40 * v for v in x], "score_perplexity_text": [None] * N,
                       "score_perplexity_response_tokens": [20] * N, "score_perplexity_text_tokens": [None] * N},
        "ifd": {"score_ifd": [0.5 + v for v in x], "score_ifd_variant": ["cherry"] * N,
                "score_ifd_nll_cond": [2.0] * N, "score_ifd_nll_direct": [2.5] * N, "score_ifd_tokens": [20] * N},
        "judge": {"score_judge": [1 + 5 * v for v in x], "score_judge_rationale": [None] * N},
        "nuggets": {"score_nuggets": x, "score_nuggets_low": x, "score_nuggets_high": x,
                    "score_nuggets_anchors": [10] * N},
    }[step.kind]
    made_up = frame().with_columns(pl.Series(k, v, dtype=pl.String if k.endswith(("_variant", "_rationale")) else pl.Float64)
                                   for k, v in cols.items())
    return step.stamp(made_up)  # declared the step's own, so split() re-thresholds instead of rescoring


@pytest.mark.parametrize("step,column,cuts", [
    (Perplexity(max=30.0), "score_perplexity_response", [30.0]),
    (IFD(fraction=0.5), "score_ifd", [1.0]),
    (Judge(method="expected", scale=6, min_score=3.0), "score_judge", [3.0]),
    (Nuggets(threshold=0.5), "score_nuggets", [0.5]),
])
def test_step_section_has_histograms_and_cuts(step, column, cuts):
    df = scored(step)
    kept, rejected = step.split(df)
    assert 0 < kept.height < N  # the made-up scores straddle the cut
    section = step_section(step, kept, rejected, before=set(frame().columns))
    score = section["scores"][column]
    assert score["thresholds"] == cuts
    assert score["histogram"]["n"] == N and sum(score["histogram"]["counts"]) == N
    assert "score_judge_rationale" not in section["scores"]  # text columns are not plotted
