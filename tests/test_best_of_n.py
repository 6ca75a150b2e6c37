"""best_of_n: n candidates per instruction, judged, the best kept, the others in rejects."""

import asyncio


from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.records import make_frame
from curate.steps import Context
from filters.judge import Judge
from synth.best_of_n import BestOfN


class RuleTeacher(Backend):
    """Answers with seed-many words; as a judge, scores an answer by its word count (max 10)."""

    name, model, max_concurrency = "rule", "rule", 4

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        prompt = request.message_dicts()[-1]["content"]
        if "Reply in exactly this form" in prompt:
            answer = prompt.split("Response:\n")[-1].strip()
            return Response(text=f"Score: {min(10, len(answer.split()))}\nReason: longer is better here.")
        if "fail" in prompt:
            return Response(error="HTTP 500 after 5 retries")
        return Response(text=" ".join(["word"] * (request.seed % 7 + 1)), prompt_tokens=4, completion_tokens=request.seed % 7 + 1)


def test_keeps_the_best_candidate_and_rejects_the_rest():
    df = make_frame([{"messages": [{"role": "user", "content": q}]} for q in ("Q one", "Q two", "please fail")])
    step = BestOfN(n=3, seed=2, judge=Judge(method="rating", scale=10))
    result = step.run(df, Context(llm=LLM(RuleTeacher(), show_progress=False)))
    kept = result.kept
    assert kept.height == 2
    # seeds 2, 3, 4 give 3, 4, 5 words: the 5-word answer (score 5) wins for both prompts
    assert kept["messages"].list.last().struct.field("content").to_list() == ["word " * 4 + "word"] * 2
    assert kept["score_judge"].to_list() == [5.0, 5.0]
    cands = kept["candidates"][0].to_list()
    assert [c["score"] for c in cands] == [5.0, 4.0, 3.0]
    reasons = result.rejected["reason"].to_list()
    assert sorted(reasons) == ["not best of n"] * 4 + ["teacher request failed"] * 3
    assert result.stats["llm"]["requests"] == 9 + 6  # 9 samples, 6 judge calls
