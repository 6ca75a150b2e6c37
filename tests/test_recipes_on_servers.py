"""Every recipe that uses a teacher, run through the CLI against real OpenAI-compatible servers on
the embedded model: vLLM's (`python -m vllm.entrypoints.openai.api_server`, the teacher most users
of this tool run) and llama-cpp-python's (started through curate's loader, `python -m
curate.llm.llama_server`). One server of each for the whole session (tests/conftest.py), and a small
variant of each recipe (`-o` overrides), so the file stays within a few minutes on 2 cores.

What it is for (issue 8 part 7): Magpie with a custom pre-query template sent 8 stop sequences, and
vLLM's server answered every query with HTTP 400 (the OpenAI API takes at most 4). A request outside
the API's limits fails every row, so each run here must end with no failed teacher request.
"""

import json
from pathlib import Path

import polars as pl
import pytest

from curate.llm import Request
from curate.llm.openai_backend import MAX_STOP, OpenAIBackend
from curate.recipe import load_recipe
from tests.conftest import assert_funnel_adds_up, run_recipe_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first test also starts the server

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2"  # the name both servers serve the embedded model under
# Small variants: a few rows each, enough for every step to run on what the teacher sends back.
SERVED = {
    "quickstart": ["inputs.0.limit=4", "steps.responses.max_tokens=256"],
    "self-instruct-general": ["steps.self_instruct.target=2", "steps.self_instruct.max_rounds=1",
                              "steps.self_instruct.requests_per_round=1", "steps.self_instruct.max_tokens=128",
                              "steps.self_instruct.instance_max_tokens=96"],
    "evol-instruct": ["inputs.0.limit=2", "steps.evol_instruct.rounds=1"],
    "math-cot": ["inputs.0.limit=2", "steps.verified_cot.k=1", "steps.verified_cot.max_samples=1",
                 "steps.verified_cot.rationalize=false"],
    "backtranslation": ["inputs.0.limit=2"],
    # The reported failure: a custom pre-query template (its stop sequences were all 8 known ones).
    "magpie": ["steps.magpie.n=4", 'steps.magpie.pre_query_template="<|im_start|>user\\n"'],
    "mixture": ["inputs.0.limit=4"],
    # llama-cpp-python's server refuses OpenAI's response_format (HTTP 500): the backend switches form
    "structured": ["inputs.0.limit=4"],
}
SERVERS = ["vllm_http", "llama_http"]


def teacher(server) -> list[str]:
    # A generous timeout: a loaded machine queues requests behind each other on one core.
    return ["teacher.backend=openai", f"teacher.base_url={server.base_url}", f"teacher.model={MODEL}",
            "teacher.api_key_env=CURATE_TEST_NO_KEY", "teacher.timeout=900"]


def uses_teacher(name: str) -> bool:
    return any(step.needs_llm for step in load_recipe(ROOT / "recipes" / f"{name}.yaml").steps)


def test_every_recipe_with_a_teacher_is_run_here():
    """nuggets-select and curate-existing call no teacher (NUGGETS scores with the embedded model
    in-process), so there is nothing to serve them."""
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert sorted(n for n in recipes if uses_teacher(n)) == sorted(SERVED)
    assert not uses_teacher("nuggets-select")


@pytest.mark.parametrize("server_fixture", SERVERS)
@pytest.mark.parametrize("name", list(SERVED))
def test_recipe_against_a_real_server(name, server_fixture, request, tmp_path):
    server = request.getfixturevalue(server_fixture)
    out = tmp_path / "out"
    report = run_recipe_cli(f"recipes/{name}.yaml", out, overrides=[*SERVED[name], *teacher(server)])
    t = report["teacher"]
    assert (t["backend"], t["model"], t["wrote_rows"]) == ("openai", MODEL, True)
    # a server on 127.0.0.1 is a model run here: priced at zero, never at a hosted model's rates
    assert t["price"]["source"] == "local model" and t["price"]["output_per_mtok"] == 0.0
    llm = report["llm"]
    # every request was within what the server takes: none failed (Magpie's were all HTTP 400)
    assert llm["failures"] == 0, pl.read_parquet(out / "rejects.parquet").filter(
        pl.col("reason") == "teacher request failed")["detail"].to_list()[:3]
    assert llm["sent"] == llm["requests"] > 0 and llm["completion_tokens"] > 0
    assert_funnel_adds_up(report["steps"])
    failed = [c["expectation"] for c in report["validation"]["results"] if not c["success"]]
    assert failed == ([] if report["rows"]["out"] else ["at least 1 row"]), report["validation"]
    if name == "magpie":
        gen = json.loads((out / "steps" / "01-magpie" / "_DONE.json").read_text())["generation"]
        assert gen["pre_query_template"] == "<|im_start|>user\n" and gen["parsed"] >= 1, gen
        queries = [m[0]["content"] for m in pl.read_parquet(out / "records.parquet")["messages"].to_list()]
        assert not any("<|im_" in q for q in queries), queries  # cut at the end-of-turn marker
    print(f"\n{name} on {server_fixture}: {llm['requests']} requests, {llm['completion_tokens']} tokens, "
          f"{report['rows']['out']} rows out, {report['seconds']:.1f}s")


def ask(server, *requests: Request):
    import asyncio

    backend = OpenAIBackend(MODEL, base_url=server.base_url, api_key_env="CURATE_TEST_NO_KEY", timeout=600,
                            max_retries=1)

    async def go():
        try:
            return await asyncio.gather(*(backend.acomplete(r) for r in requests)), await backend.context_length()
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("server_fixture", SERVERS)
def test_requests_within_the_openai_limits(server_fixture, request):
    """The limits vLLM's server enforces as the OpenAI API documents them (llama.cpp's server
    takes anything): more than 4 stop sequences, a seed past 2**63-1, max_tokens above the context."""
    server = request.getfixturevalue(server_fixture)
    count = "1, 2, 3, 4,"  # at temperature 0 the model goes on " 5, 6, 7, ..."
    extra = ("<a>", "<b>", "<c>", "<d>", ",")  # the comma is the 5th: not sent, applied to the answer
    assert len(extra) > MAX_STOP
    stopped, seeded, long_budget = (
        Request(prompt=count, max_tokens=16, temperature=0, stop=extra),
        Request(prompt=count, max_tokens=8, temperature=0.7, seed=2**63 - 1 + 3, sample=3),
        Request.chat([{"role": "user", "content": "Say hi."}], max_tokens=100_000, temperature=0),
    )
    (s, d, b), context = ask(server, stopped, seeded, long_budget)
    assert s.ok and d.ok and b.ok, [s.error, d.error, b.error]
    assert (s.text.strip(), s.finish_reason) == ("5", "stop")
    assert b.text.strip() and b.completion_tokens < 2048
    assert context == (2048 if server_fixture == "vllm_http" else None)  # vLLM says its max_model_len
