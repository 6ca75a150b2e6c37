"""verified_cot: grading, uniform and Prop2Diff quotas, the sample cap, STaR rationalization and
pass rates, with a rule-based solver (no network, no model)."""

import asyncio
import json
import re
from pathlib import Path

import datasets
import polars as pl
import pytest

from curate.formats import convert
from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.recipe import load_recipe
from curate.records import make_frame
from curate.steps import Context
from synth.cot import (
    VerifiedCoT,
    final_answer,
    grade,
    pass_rate_histogram,
    prop2diff_quotas,
    split_solution,
)

from tests.conftest import run_catalogue_on_embedded

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Pure functions

def test_grade():
    assert grade("3 + 4 = 7.\nThe answer is 7.", "7") == ("7", None)
    assert grade("So the total is \\boxed{12}.", "12", style="math") == ("12", None)
    assert grade("It costs $1,200 in all. Final answer: $1,200", "1200", style="gsm8k") == ("1,200", None)
    assert grade("3 + 4 = 8.\nThe answer is 8.", "7") == ("8", "wrong answer")
    assert grade("3 + 4 = 7", "7") == (None, "no final answer")  # strict: a stated answer is needed
    assert grade("3 + 4 = 7", "7", style="gsm8k", strict=False) == ("7", None)
    assert grade("", "7") == (None, "no final answer") and grade(None, "7") == (None, "no final answer")


def test_final_answer_forms_small_models_write():
    assert final_answer("The answer to the problem is 3 + 4 = 7.", "gsm8k") == "7"  # loose statement, "=" chain
    assert final_answer("The answer is 3 + 4 = 7", "auto") == "7"
    assert final_answer("The answer is 3 + 4 = 7", "math") == "3 + 4 = 7"  # math answers stay as written
    assert final_answer("The answer is 7 apples in all.", "gsm8k") == "7"
    assert final_answer("Answer: 2/3", "gsm8k") == "2/3"
    assert final_answer("So the answer is $\\frac{1}{2}$. Done", "gsm8k") == "\\frac{1}{2}"
    assert final_answer("1. 15 - 6 = 9\n\nThe final result is 21.", "gsm8k") == "21"
    assert final_answer("I think it is 7", "gsm8k") is None
    assert final_answer("I think it is 7", "gsm8k", strict=False) == "7"
    assert grade("The answer to the problem is 3 + 4 = 7.", "7", style="gsm8k") == ("7", None)


def test_split_solution():
    assert split_solution("48 / 2 = 24.\n48 + 24 = 72.\nSo, the answer is 72.") == (
        "48 / 2 = 24.\n48 + 24 = 72.", "So, the answer is 72.")
    assert split_solution("3 + 4 = 7. Therefore the final answer is 7") == ("3 + 4 = 7.", "Therefore the final answer is 7")
    assert split_solution("Work.\n#### 72") == ("Work.", "#### 72")
    inline = "Adding, she has $\\boxed{5}$ apples."
    assert split_solution(inline) == (None, inline)
    assert split_solution("The answer is 5.") == (None, "The answer is 5.")  # nothing before it
    assert split_solution("3 + 4 = 7.\nThe answer to the problem is 7.") == ("3 + 4 = 7.", "The answer to the problem is 7.")
    assert split_solution("3 + 4 = 7.\nThe final result is 7.") == ("3 + 4 = 7.", "The final result is 7.")


def test_prop2diff_quotas():
    # 1 each, the other 6 in proportion to the failure rates 0, .5, 1, 1 (largest remainders)
    assert prop2diff_quotas([0.0, 0.5, 1.0, 1.0], 10) == [1, 2, 4, 3]
    q = prop2diff_quotas([0.0, 0.25, 0.5, 0.75], 10)
    assert q == [1, 2, 3, 4] and sum(q) == 10
    assert prop2diff_quotas([0.0, 0.0, 0.0], 7) == [3, 2, 2]  # all easy: shared equally
    assert prop2diff_quotas([1.0, 0.0], 1) == [1, 1]  # budget below one per question: each still gets 1
    assert prop2diff_quotas([], 5) == []
    for fails in ([0.1, 0.9, 0.3], [0.5] * 7, [1.0, 0.0, 0.0, 0.33]):
        assert sum(prop2diff_quotas(fails, 40)) == 40


def test_pass_rate_histogram():
    assert pass_rate_histogram([0, 0.1, 0.25, 0.5, 0.6, 0.8, 1]) == {
        "0": 1, "(0, 0.25]": 2, "(0.25, 0.5]": 1, "(0.5, 0.75]": 1, "(0.75, 1)": 1, "1": 1}


# ---------------------------------------------------------------------------------------------
# The step, with a rule-based solver. A question carries its behaviour: "[p CWN]" means sample i
# is Correct / Wrong / No answer / Truncated / Duplicate (a correct text identical for every D)
# by pattern[i % len]; "[hint ok]" / "[hint leak]" / "[hint wrong]" is the rationalization reply.

class RuleSolver(Backend):
    name, model, max_concurrency = "rule", "rule", 4

    def __init__(self):
        self.requests: list[Request] = []

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        self.requests.append(request)
        prompt = request.message_dicts()[-1]["content"]
        question = prompt.split("Problem: ", 1)[1]
        gold = re.search(r"gold (\S+)\]", question).group(1)
        if "The correct final result is" in prompt:
            mode = re.search(r"\[hint (\w+)\]", question).group(1)
            text = {"ok": f"Working it out carefully, step {request.sample}.\nThe answer is {gold}.",
                    "leak": [f"Since the hint says so, step {request.sample}.\nThe answer is {gold}.",
                             f"It starts by saying that the answer is {gold}.\nSo the answer is {gold}."][request.sample % 2],
                    "wrong": "Step.\nThe answer is -1."}[mode]
            return Response(text=text, prompt_tokens=10, completion_tokens=10)
        pattern = re.search(r"\[p (\w+)\]", question).group(1)
        c = pattern[request.sample % len(pattern)]
        if c == "C":
            return Response(text=f"Step {request.sample}: add things up.\nThe answer is {gold}.", prompt_tokens=10,
                            completion_tokens=10)
        if c == "D":
            return Response(text=f"Same steps.\nThe answer is {gold}.")
        if c == "W":
            return Response(text=f"Step {request.sample}: a slip.\nThe answer is 9{gold}.")
        if c == "N":
            return Response(text="I added the numbers and stopped.")
        if c == "T":
            return Response(text=f"Step one, then {gold}", finish_reason="length")
        raise AssertionError(c)


def questions(*specs):
    """specs: (pattern, gold[, hint]) -> rows with a user turn and gold."""
    rows = []
    for i, spec in enumerate(specs):
        pattern, gold, *hint = spec
        q = f"Question {i} [p {pattern}] [gold {gold}]" + (f" [hint {hint[0]}]" if hint else "")
        rows.append({"messages": [{"role": "user", "content": q}], "gold": gold, "source": "toy"})
    return make_frame(rows)


def run(step, df, backend=None):
    backend = backend or RuleSolver()
    result = step.run(df, Context(llm=LLM(backend, show_progress=False), seed=0))
    return result, backend


def per_question(result):
    return result.stats["cot"]["per_question"]


def test_correct_wrong_no_answer_truncated_and_pass_rate():
    step = VerifiedCoT(k=4, quota=1, max_samples=4)
    result, _ = run(step, questions(("CWNT", "7")))
    kept = result.kept
    assert kept.height == 1
    row = kept.row(0, named=True)
    assert row["answer"] == "7" and row["gold"] == "7" and row["source"] == "toy"
    # the record contract: reasoning apart, the assistant turn is the final statement
    assert row["reasoning"] == "Step 0: add things up."
    assert row["messages"][-1]["content"] == "The answer is 7."
    assert row["messages"][0]["content"] == "Question 0 [p CWNT] [gold 7]"  # the plain question, no template
    assert row["score_cot_pass_rate"] == 0.25 and row["cot_samples"] == 4 and row["cot_correct"] == 1
    assert row["rationalized"] is False and row["meta"]["teacher"] == "rule" and row["meta"]["sample"] == 0
    # the converter puts the reasoning back in front of the answer
    full = convert(kept, "messages", reasoning="inline", wrapper="{reasoning}\n{answer}")
    assert full["messages"][0][-1]["content"] == "Step 0: add things up.\nThe answer is 7."
    assert "<think>\nStep 0: add things up.\n</think>" in convert(kept, "messages")["messages"][0][-1]["content"]
    rej = {r["reason"]: r for r in result.rejected.to_dicts()}
    assert set(rej) == {"wrong answer", "no final answer", "truncated"}
    assert rej["wrong answer"]["detail"] == "97 (gold 7)" and rej["wrong answer"]["answer"] == "97"
    assert rej["wrong answer"]["messages"][-1]["content"].startswith("Step 1: a slip.")
    assert rej["no final answer"]["detail"] == "last line: I added the numbers and stopped."
    assert result.stats["llm"]["requests"] == 4
    cot = result.stats["cot"]
    assert cot["samples"] == 4 and cot["correct_samples"] == 1 and cot["pass_rate"]["mean"] == 0.25
    assert cot["quota"]["filled"] == 1 and cot["quota"]["fill_rate"] == 1.0


def test_uniform_quota_stops_sampling_when_met():
    # quota 3, k 2: "WC" gains one correct per round (3 rounds); "C" gains two, so it is full after
    # round 2 and is not sampled in round 3
    step = VerifiedCoT(k=2, quota=3, max_samples=20)
    result, backend = run(step, questions(("WC", "5"), ("C", "6")))
    pq = per_question(result)
    assert [q["samples"] for q in pq] == [6, 4] and [q["kept"] for q in pq] == [3, 3]
    assert len(backend.requests) == 10
    per_round = [sum(1 for r in backend.requests if "[p C]" in r.message_dicts()[0]["content"] and r.sample in s)
                 for s in ({0, 1}, {2, 3}, {4, 5})]
    assert per_round == [2, 2, 0]
    assert result.stats["cot"]["rounds"] == 3
    assert result.stats["cot"]["quota"] == {
        "mode": "uniform", "setting": 3, "total": 6, "filled": 6, "filled_first_try": 6, "fill_rate": 1.0,
        "questions_full": 2, "questions_capped": 0, "questions_empty": 0}
    assert result.kept.group_by("gold").len().sort("gold")["len"].to_list() == [3, 3]
    assert result.rejected["reason"].to_list().count("over quota") == 1  # "C"'s fourth correct one


def test_uniform_quota_samples_again_until_full_and_over_quota():
    step = VerifiedCoT(k=3, quota=4, max_samples=30)
    result, _ = run(step, questions(("C", "6")))
    assert per_question(result)[0]["samples"] == 6 and result.kept.height == 4
    assert result.rejected["reason"].to_list() == ["over quota"] * 2  # correct but beyond the quota
    step = VerifiedCoT(k=4, quota=1, max_samples=30)
    result, _ = run(step, questions(("C", "6")))
    assert result.kept.height == 1 and result.rejected["reason"].to_list() == ["over quota"] * 3


def test_cap_is_respected():
    step = VerifiedCoT(k=2, quota=2, max_samples=5)
    result, backend = run(step, questions(("W", "1"), ("WWWWC", "2"), ("C", "3")))
    pq = per_question(result)
    assert [q["samples"] for q in pq] == [5, 5, 2]
    assert len(backend.requests) == 12
    assert all(r.sample < 5 for r in backend.requests)
    assert [q["kept"] for q in pq] == [0, 1, 2]
    quota = result.stats["cot"]["quota"]
    assert quota["questions_capped"] == 2 and quota["questions_empty"] == 1 and quota["filled"] == 3
    assert [q["pass_rate"] for q in pq] == [0.0, 0.2, 1.0]
    assert result.kept.sort("gold")["score_cot_pass_rate"].to_list() == [0.2, 1.0, 1.0]


def test_prop2diff_gives_harder_questions_more():
    # probe (k=4) failure rates 0, .25, .5, .75 -> quotas 1, 2, 3, 4 of a budget of 10
    step = VerifiedCoT(k=4, quota_mode="prop2diff", quota=10, max_samples=12)
    result, _ = run(step, questions(("C", "1"), ("CCCW", "2"), ("CCWW", "3"), ("CWWW", "4")))
    pq = per_question(result)
    assert [q["quota"] for q in pq] == [1, 2, 3, 4]
    # the hardest needs 16 samples for 4 distinct correct ones: capped at 12 with 3
    assert [q["kept"] for q in pq] == [1, 2, 3, 3]
    assert [q["samples"] for q in pq] == [4, 4, 8, 12]  # the third needed a second round
    assert pq[3]["pass_rate"] == 0.25
    cot = result.stats["cot"]
    assert cot["mode"] == "prop2diff" and cot["quota"]["total"] == 10 and cot["quota"]["filled"] == 9
    assert cot["quota"]["questions_capped"] == 1
    kept_per_q = result.kept.group_by("gold").len().sort("gold")["len"].to_list()
    assert kept_per_q == [1, 2, 3, 3]  # more rows for harder questions
    assert result.kept["cot_quota"].sort().to_list() == [1, 2, 2, 3, 3, 3, 4, 4, 4]


def test_prop2diff_is_a_global_step():
    assert VerifiedCoT(quota_mode="prop2diff").is_global and not VerifiedCoT().is_global


def test_uniform_vs_prop2diff_same_budget():
    qs = questions(("C", "1"), ("C", "2"), ("CWWW", "3"))
    uni, _ = run(VerifiedCoT(k=4, quota=2, max_samples=8), qs)
    p2d, _ = run(VerifiedCoT(k=4, quota_mode="prop2diff", quota=6, max_samples=8), qs)
    assert [q["quota"] for q in per_question(uni)] == [2, 2, 2]
    assert [q["quota"] for q in per_question(p2d)] == [1, 1, 4]


def test_duplicates_are_not_kept_twice():
    result, _ = run(VerifiedCoT(k=4, quota=4, max_samples=4), questions(("DDCD", "8")))
    assert result.kept.height == 2
    assert result.rejected["reason"].to_list() == ["duplicate rationale"] * 2
    assert per_question(result)[0]["correct"] == 4  # duplicates count for the pass rate


def test_rationalization_rows_are_marked():
    df = questions(("W", "3", "ok"), ("W", "4", "leak"), ("WN", "5", "wrong"), ("C", "6", "ok"))
    result, backend = run(VerifiedCoT(k=2, quota=1, max_samples=2, rationalize=True, rationalize_samples=2), df)
    hinted = [r for r in backend.requests if "The correct final result is" in r.message_dicts()[0]["content"]]
    assert len(hinted) == 6  # 2 each for the 3 never-solved questions, none for the solved one
    assert "The correct final result is 3" in hinted[0].message_dicts()[0]["content"]
    kept = result.kept.sort("gold")
    assert kept["gold"].to_list() == ["3", "6"]
    assert kept["rationalized"].to_list() == [True, False]
    assert kept["source"].to_list() == ["toy+rationalized", "toy"]
    assert kept["messages"][0].to_list()[0]["content"] == "Question 0 [p W] [gold 3] [hint ok]"  # no hint in the row
    assert kept["score_cot_pass_rate"].to_list() == [0.0, 1.0]
    reasons = result.rejected.group_by("reason").len().sort("reason").rows()
    # over quota: the second correct sample of "C" and the second good rationalization of question 0
    assert dict(reasons) == {"mentions the hint": 2, "over quota": 2, "wrong answer": 2 + 2 + 1 + 2,
                             "no final answer": 1}
    rat = result.stats["cot"]["rationalization"]
    assert rat == {"enabled": True, "questions": 3, "samples": 6, "kept": 1}
    assert [q["rationalized"] for q in per_question(result)] == [1, 0, 0, 0]


def test_rows_without_gold_and_failed_requests():
    class Failing(RuleSolver):
        async def acomplete(self, request):
            if request.sample == 1:
                return Response(error="HTTP 500 after 5 retries")
            return await super().acomplete(request)

    df = make_frame([{"messages": [{"role": "user", "content": "Question [p C] [gold 2]"}], "gold": "2"},
                     {"messages": [{"role": "user", "content": "No gold here"}], "gold": None}])
    result, _ = run(VerifiedCoT(k=2, quota=1, max_samples=2), df, Failing())
    assert sorted(result.rejected["reason"].to_list()) == ["no gold", "teacher request failed"]
    assert result.stats["cot"]["without_gold"] == 1 and result.kept.height == 1
    assert per_question(result)[0]["pass_rate"] == 0.5  # a failed request counts as a failed sample


def test_empty_input_and_templates():
    result, _ = run(VerifiedCoT(), questions(("C", "1")).clear())
    assert result.kept.height == 0 and "score_cot_pass_rate" in result.kept.columns
    solve = (ROOT / "synth" / "prompts" / "cot_solve.txt").read_text()
    hint = (ROOT / "synth" / "prompts" / "cot_rationalize.txt").read_text()
    assert "{question}" in solve and "{question}" in hint and "{gold}" in hint


def test_recipe_validates_and_maps_gold():
    recipe = load_recipe(ROOT / "recipes" / "math-cot.yaml")
    assert recipe.steps[0].kind == "verified_cot" and recipe.config.inputs[0].gold == "final_answer"


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)  # two minutes idle; far longer on a loaded shared machine
def test_recipe_on_embedded_model(tmp_path):
    out = tmp_path / "out"
    report, marker = run_catalogue_on_embedded("math-cot", out, ["inputs", "verified_cot"], rows_in=8)
    steps = report["steps"]
    cot = marker["cot"]
    assert cot["questions"] == 8 and len(cot["per_question"]) == 8
    assert sum(cot["pass_rate"]["histogram"].values()) == 8
    assert steps[1]["rows_out"] == cot["rows"] == cot["quota"]["filled"]
    # every sample is a kept row or a reject with a reason
    assert cot["rows"] + sum(steps[1]["dropped"].values()) == cot["samples"] + cot["rationalization"]["samples"]
    assert steps[1]["llm"]["requests"] == cot["samples"] + cot["rationalization"]["samples"]
    assert set(steps[1]["dropped"]) <= {"wrong answer", "no final answer", "truncated", "duplicate rationale",
                                        "over quota", "mentions the hint", "teacher request failed"}
    if report["rows"]["out"]:
        ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "train.parquet"), split="train")
        records = pl.read_parquet(out / "records.parquet")  # the kept rows with every column
        assert records["answer"].null_count() == 0 and records["gold"].null_count() == 0
        assert records["score_cot_pass_rate"].is_between(0, 1).all()
        for row in ds:  # the output: the reasoning put back before the final answer (recipe's wrapper)
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
            assert "<think>" not in row["messages"][-1]["content"]
    print(f"\nmath-cot: {json.dumps({k: v for k, v in cot.items() if k != 'per_question'})}\n"
          f"per question: {[(q['pass_rate'], q['samples'], q['kept']) for q in cot['per_question']]}\n"
          f"dropped: {steps[1]['dropped']}")
