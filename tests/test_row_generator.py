"""RowGenerator: a generator written as `requests` + `parse`, with the framework doing the rest.

`Tagger` below is a new generator written the way README's "Writing a generator" shows. It runs
against the fault-injecting OpenAI-compatible server (tests/servers/fault_server.py, real HTTP on
127.0.0.1), whose answer is "echo: <prompt>" cut to max_tokens words; a FAULT directive in a
prompt makes the server fail that request. The generator itself has no cache, retry, usage,
truncation or reject code: every assertion on those is about the framework.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest

from curate.llm import LLM, Price, Request, Response, ResponseCache
from curate.llm.openai_backend import OpenAIBackend
from curate.records import concat, content_id, make_frame
from curate.registry import STEPS, step_class
from curate.steps import Context
from synth.base import FAILED, TRUNCATED, UNPARSEABLE, Reject, RowGenerator, outcome
from tests.servers.fault_server import fault_server

pytestmark = pytest.mark.timeout(60)


class Tagger(RowGenerator):
    """Tag each row's text: the reply's first word after "Tag:" is the tag."""

    kind: ClassVar[str] = "tagger"
    max_tokens: int = 8
    keep_truncated: bool = False

    def requests(self, row: dict[str, Any], ctx: Context) -> list[Request] | Reject:
        text = row["messages"][-1]["content"]
        if text == "SKIP":
            return Reject("nothing to tag")
        return [Request.user(f"Tag: {text}", max_tokens=self.max_tokens, temperature=0.0, seed=ctx.seed)]

    def parse(self, row: dict[str, Any], request: Request, response: Response) -> dict[str, Any] | Reject:
        words = response.text.split()  # "echo: Tag: <text>"
        if words[2] == "NOTAG":
            raise ValueError("no tag in the reply")
        if words[2] == "BANNED":
            return Reject("banned tag")
        return {"messages": row["messages"] + [{"role": "assistant", "content": response.text}], "tag": words[2]}

    def keeps_truncated(self) -> bool:
        return self.keep_truncated


TEXTS = ["alpha", "beta FAULT:500:times=2", "gamma FAULT:500:times=always", "NOTAG delta", "BANNED",
         "long " + " ".join(f"w{i}" for i in range(20)), "SKIP"]


def rows(texts=TEXTS):
    """Rows with ids of their own (not content hashes), to see which ids the framework rewrites."""
    return make_frame([{"id": f"row-{i}", "messages": [{"role": "user", "content": t}], "source": "s",
                        "gold": f"g-{t[:5]}"} for i, t in enumerate(texts)])


def teacher(server, cache) -> LLM:
    backend = OpenAIBackend("fault-model", base_url=server.base_url, api_key="local", timeout=5.0, max_retries=2,
                            backoff_base=0.01, backoff_max=0.05)
    return LLM(backend, cache=ResponseCache(cache), price=Price(input_per_mtok=1.0, output_per_mtok=2.0),
               show_progress=False)


def run(step, df, llm, seed=3):
    try:
        return step.run(df, Context(llm=llm, seed=seed))
    finally:
        llm.close()


def by_reason(rejected: pl.DataFrame) -> dict[str, dict]:
    return {r["reason"]: r for r in rejected.to_dicts()}


def test_framework_does_cache_retries_usage_truncation_and_rejects(tmp_path):
    df = rows()
    with fault_server() as server:
        first = run(Tagger(), df, teacher(server, tmp_path / "llm.sqlite"))
        counts = server.stats()["by_prompt"]

        # kept: one row per tagged text, the batch's own columns carried through, a fresh id, meta filled
        kept = first.kept
        assert kept["tag"].to_list() == ["alpha", "beta"]
        assert kept["gold"].to_list() == ["g-alpha", "g-beta "] and kept["source"].to_list() == ["s", "s"]
        assert kept["id"].to_list() == [content_id(m) for m in kept["messages"].to_list()]
        meta = kept["meta"][0]
        assert (meta["teacher"], meta["backend"], meta["finish_reason"], meta["seed"]) == ("fault-model", "openai", "stop", 3)
        # the server counts words: "Tag: alpha" is 2 prompt tokens, "echo: Tag: alpha" 3 completion tokens
        assert (meta["prompt_tokens"], meta["completion_tokens"]) == (2, 3)
        assert meta["cost"] == pytest.approx((2 * 1.0 + 3 * 2.0) / 1e6)
        assert '"max_tokens": 8' in meta["params"] and len(meta["template_hash"]) == 12

        # retries are the backend's: two 500s, then the answer
        assert counts["Tag: beta FAULT:500:times=2"] == 3
        # rejects: every row not kept is there, with a reason and a detail
        rejected = by_reason(first.rejected)
        assert set(rejected) == {FAILED, UNPARSEABLE, "banned tag", TRUNCATED, "nothing to tag"}
        failed = rejected[FAILED]
        assert "500" in failed["detail"] and failed["messages"] == df["messages"][2].to_list()
        assert failed["id"] == "row-2"  # the row as it came: not rewritten
        assert counts["Tag: gamma FAULT:500:times=always"] == 3  # 1 + max_retries
        unparseable = rejected[UNPARSEABLE]
        assert unparseable["detail"] == "no tag in the reply\n\necho: Tag: NOTAG delta"  # the error and the raw output
        assert rejected["banned tag"]["detail"] == "echo: Tag: BANNED"  # a Reject's detail: the raw output
        cut = rejected[TRUNCATED]
        assert cut["detail"] == "cut at max_tokens=8" and cut["meta"]["finish_reason"] == "length"
        assert cut["messages"][-1]["content"] == "echo: Tag: long w0 w1 w2 w3 w4" and cut["tag"] == "long"
        assert rejected["nothing to tag"]["detail"] is None and "Tag: SKIP" not in counts  # never asked

        usage = first.stats["llm"]
        assert (usage["requests"], usage["sent"], usage["cache_hits"], usage["failures"]) == (6, 6, 0, 1)
        answered = [r for r in (kept["meta"].to_list() + [cut["meta"]])]
        assert usage["completion_tokens"] >= sum(m["completion_tokens"] for m in answered) > 0

        # a rerun on the same cache sends only the request that failed, and makes the same rows
        second = run(Tagger(), df, teacher(server, tmp_path / "llm.sqlite"))
        after = server.stats()["by_prompt"]
        assert {p: n - counts.get(p, 0) for p, n in after.items() if n != counts.get(p, 0)} == {
            "Tag: gamma FAULT:500:times=always": 3}
        assert (second.stats["llm"]["sent"], second.stats["llm"]["cache_hits"]) == (1, 5)
        assert second.kept.equals(first.kept) and second.rejected.equals(first.rejected)

        # keep_truncated keeps the cut row, with its finish reason
        kept_cut = run(Tagger(keep_truncated=True), df, teacher(server, tmp_path / "llm.sqlite")).kept
        assert kept_cut["tag"].to_list() == ["alpha", "beta", "long"]
        assert kept_cut["meta"].struct.field("finish_reason").to_list() == ["stop", "stop", "length"]


def test_any_batch_gives_the_rows_of_that_batch_and_the_halves_are_the_whole_step(tmp_path):
    df = rows()
    with fault_server() as server:
        whole = run(Tagger(), df, teacher(server, tmp_path / "llm.sqlite"))
        parts = [run(Tagger(), part, teacher(server, tmp_path / "llm.sqlite")) for part in (df[:3], df[3:5], df[5:])]

        # what an engine that sends requests itself does: build with no LLM, send, parse
        asked = Tagger().build_requests(df, Context(llm=None, seed=3))
        assert len(asked.requests) == 6 and [i for i, _ in asked.rejected] == [6]
        asked = pickle.loads(pickle.dumps(asked))  # plain data: it may cross to another process
        llm = teacher(server, tmp_path / "llm.sqlite")
        try:
            responses, usage = llm.generate(asked.requests)
            halves = Tagger().parse_batch(asked, responses, Context(llm=llm, seed=3), usage)
        finally:
            llm.close()
        with pytest.raises(ValueError, match="5 responses for 6 requests"):
            Tagger().parse_batch(asked, responses[:5], Context(llm=llm, seed=3))

    # a part without a tagged row has no `tag` column: parts join as the engine joins them (diagonally)
    assert [p.kept.height for p in parts] == [2, 0, 0] and "tag" not in parts[2].kept.columns
    assert concat([p.kept for p in parts]).equals(whole.kept)
    order = ["reason", "id"]
    assert concat([p.rejected for p in parts]).select(whole.rejected.columns).sort(order).equals(whole.rejected.sort(order))
    assert halves.kept.equals(whole.kept) and halves.rejected.equals(whole.rejected)


def test_outcome_order_failed_then_parse_then_truncation():
    req = Request.user("q", max_tokens=4)
    row = {"messages": [{"role": "user", "content": "q"}]}
    made = lambda: {"messages": row["messages"] + [{"role": "assistant", "content": "a b c d"}]}  # noqa: E731
    assert outcome(req, Response(error="HTTP 503"), made).reason == FAILED
    cut = outcome(req, Response(text="a b c d", finish_reason="length"), made, meta={"x": 1})
    assert (cut.reason, cut.detail, cut.fields["meta"]) == (TRUNCATED, "cut at max_tokens=4", {"x": 1})
    # parse sees the cut response first and may reject it for a reason of its own
    own = outcome(req, Response(text="a b", finish_reason="length"), lambda: Reject("too long"))
    assert (own.reason, own.detail) == ("too long", "a b")
    kept = outcome(req, Response(text="a b c d", finish_reason="length"), made, keep_truncated=True)
    assert kept["messages"][-1]["content"] == "a b c d"
    # a bug in parse that is not a ValueError is not hidden as a reject
    with pytest.raises(KeyError):
        outcome(req, Response(text="x", finish_reason="stop"), lambda: {}["missing"])


def test_steps_that_add_a_round_in_run_are_not_single_call():
    """An engine may send a RowGenerator's requests itself only when build_requests + parse_batch
    are the whole step: a generator whose run() does more must say so."""
    generators = [step_class(k) for k in STEPS if issubclass(step_class(k), RowGenerator)]
    assert {g.kind for g in generators} >= {"responses", "best_of_n", "backtranslation"}
    for g in generators:
        assert g.single_call == (g.run is RowGenerator.run), g.kind


def test_the_readme_example_runs_as_written(tmp_path):
    """README's "Writing a generator" example, executed as it is printed there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Writing a generator", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    df = rows(["Rivers flow to the sea", "Rivers flow. Seas are salty", "FAULT:400"])
    with fault_server() as server:
        result = run(namespace["Summaries"](), df, teacher(server, tmp_path / "llm.sqlite"))
    assert result.kept["messages"].to_list() == [[
        {"role": "user", "content": "Summarise in one sentence:\n\nRivers flow to the sea"},
        {"role": "assistant", "content": "echo: Summarise in one sentence: Rivers flow to the sea"}]]
    assert result.rejected["reason"].to_list() == ["more than one sentence", FAILED]
    assert result.rejected["detail"][0] == "echo: Summarise in one sentence: Rivers flow. Seas are salty"
    assert result.stats["llm"]["requests"] == 3
