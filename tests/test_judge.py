"""LLM judges: rating parsing, DEITA expected score, keep/drop from stored scores."""

import asyncio
import math

import polars as pl
import pytest

from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.records import make_frame
from filters.judge import Judge, expected_digit_score, parse_rating


def rows(*pairs):
    return make_frame([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs])


class RuleJudge(Backend):
    """An in-process backend that grades by rule: answers containing 'good' get 5, else 2; with
    top_logprobs it returns digit log-probs. Exercises Judge's bookkeeping without a model."""

    name, model, max_concurrency = "rule", "rule", 2

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        prompt = request.message_dicts()[-1]["content"]
        good = "good" in prompt.split("Response:")[-1]
        if "garbled" in prompt:
            return Response(text="I like turtles", extra={"top_logprobs": [{"I": -0.1, "The": -2.0}]})
        if request.top_logprobs:
            top = {"5": math.log(0.75), "4": math.log(0.25)} if good else {"2": math.log(0.5), "1": math.log(0.5)}
            return Response(text=max(top, key=top.get), extra={"top_logprobs": [{**top, "Hello": -9.0}]})
        return Response(text=f"Score: {5 if good else 2}\nReason: rule.")


def test_parse_rating():
    assert parse_rating("Score: 4\nReason: fine", 5) == 4
    assert parse_rating("**Score:** 3.5 out of 5", 5) == 3.5
    assert parse_rating("I would give it 9", 10) == 9
    assert parse_rating("Score: 7", 5) is None  # out of range, and no other number
    assert parse_rating("no idea", 5) is None and parse_rating(None, 5) is None


def test_expected_digit_score_softmax_over_digits_only():
    assert expected_digit_score([{"1": math.log(0.2), "2": math.log(0.2), "Hi": 0.0}], 6) == pytest.approx(1.5)
    assert expected_digit_score([{" 6": -0.1}], 6) == pytest.approx(6.0)
    assert expected_digit_score([{"7": -0.1, "x": -1}], 6) is None
    assert expected_digit_score(None, 6) is None


@pytest.mark.parametrize("method,expected", [("rating", [5.0, 2.0, None]), ("expected", [4.75, 1.5, None])])
def test_judge_scores_and_keeps(method, expected):
    df = rows(("Explain rain.", "A good answer."), ("Explain snow.", "A bad answer."), ("garbled", "x"))
    judge = Judge(method=method, scale=6, min_score=3).use(LLM(RuleJudge(), show_progress=False))
    scored = judge.score(df)
    got = scored["score_judge"].to_list()
    assert got[:2] == pytest.approx(expected[:2]) and got[2] is None
    kept, rejected = judge.split(scored)
    assert kept.height == 1
    assert rejected["reason"].to_list() == ["judge score below threshold", "judge output unparseable"]
    if method == "rating":
        assert scored["score_judge_rationale"][0].startswith("Score: 5")
    # re-threshold from the stored scores (made by the same judge model): nothing is sent again
    mask, _ = Judge(method=method, scale=6, min_score=1).use(judge._llm).keep(scored)
    assert mask.to_list() == [True, True, False]


def test_reject_detail_says_why_there_is_no_score():
    df = rows(("Explain rain.", "A bad answer."), ("garbled", "x"))
    for method, scored, why in (("rating", "score 2.0: Score: 2\nReason: rule.", "no score in the judge's reply: I like turtles"),
                                ("expected", "score 1.5", "no digit 1-6 among top tokens: 'I like turtles'")):
        judge = Judge(method=method, scale=6, min_score=3).use(LLM(RuleJudge(), show_progress=False))
        _, rejected = judge.split(judge.score(df))
        assert rejected["detail"].to_list() == [scored, why]
    # a failed request, and an empty reply
    scored = rows(("a", "b"), ("c", "d")).with_columns(
        pl.Series("score_judge", [None, None], dtype=pl.Float64),
        pl.Series("score_judge_rationale", ["judge request failed: HTTP 500", "  "]))
    judge = Judge(min_score=3).use(LLM(RuleJudge(), show_progress=False))
    _, rejected = judge.split(judge.stamp(scored))
    assert rejected["detail"].to_list() == ["judge request failed: HTTP 500", "no score: the judge's reply was empty"]


def test_custom_prompt_file(tmp_path):
    (tmp_path / "p.txt").write_text("Grade {instruction} -> {response} out of {scale}. {not a field}")
    judge = Judge(prompt_file=str(tmp_path / "p.txt"), scale=10)
    assert judge.render("Q {x}", "A") == "Grade Q {x} -> A out of 10. {not a field}"


@pytest.mark.slow
def test_embedded_judge_both_methods():
    pytest.importorskip("llama_cpp", reason="needs the embedded extra")
    df = rows(("What is 2 + 2?", "2 + 2 = 4."), ("Name the capital of France.", "Paris is the capital of France."))
    for method, scale in (("rating", 5), ("expected", 6)):
        scored = Judge(method=method, scale=scale).score(df)
        values = [v for v in scored["score_judge"].to_list() if v is not None]
        assert all(1 <= v <= scale for v in values)
    assert len(values) == 2  # the expected score always finds a digit among the top 20 tokens
