"""Magpie: the pre-query table, query parsing and rejects with a rule-based completion backend, the
chat-only error, and the recipe (no inputs) end to end on the embedded model."""

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest

from curate.errors import CurateError
from curate.llm import LLM, Request, Response
from curate.llm.base import Backend
from curate.records import finish_reasons, make_frame
from curate.steps import Context
from synth.base import TRUNCATED, build_rows
from synth.magpie import ALL_STOPS, RAW_PROMPT_ERROR, Magpie, chat_format, clean_query, query_failure, template_stops

from tests.conftest import check_generator_output, run_catalogue_on_embedded

ROOT = Path(__file__).resolve().parents[1]


def test_pre_query_table():
    assert chat_format("SmolLM2-135M-Instruct")[1].pre_query == "<|im_start|>user\n"
    assert chat_format("Qwen/Qwen2.5-7B-Instruct")[0] == "chatml"
    assert chat_format("meta-llama/Meta-Llama-3-8B-Instruct")[1].pre_query == \
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assert chat_format("meta-llama/Llama-3.1-8B-Instruct")[0] == "llama-3"
    assert chat_format("microsoft/Phi-3-mini-4k-instruct")[0] == "phi-3"
    assert chat_format("google/gemma-2-9b-it")[0] == "gemma"
    assert chat_format("mistralai/Mistral-7B-Instruct-v0.3") is None and chat_format("") is None


def test_prefix_per_family_and_errors():
    assert Magpie().prefix("SmolLM2-135M-Instruct") == ("<|im_start|>user\n", ("<|im_end|>", "<|im_start|>"))
    pre, _ = Magpie(system_prompt="You teach maths.").prefix("Qwen2-7B-Instruct")
    assert pre == "<|im_start|>system\nYou teach maths.<|im_end|>\n<|im_start|>user\n"
    pre, stops = Magpie(system_prompt="Be brief.").prefix("Meta-Llama-3-8B-Instruct")
    assert pre.count("<|begin_of_text|>") == 1 and pre.endswith("<|start_header_id|>user<|end_header_id|>\n\n")
    assert "<|eot_id|>" in stops
    assert Magpie(pre_query_template="[INST] ", stop=["[/INST]"]).prefix("mistral") == ("[INST] ", ("[/INST]",))
    with pytest.raises(CurateError, match="pre_query_template"):
        Magpie().prefix("mistralai/Mistral-7B-Instruct-v0.3")
    with pytest.raises(CurateError, match="system turn into the template"):
        Magpie(pre_query_template="[INST] ", system_prompt="x").prefix("m")
    with pytest.raises(CurateError, match="no system turn"):
        Magpie(system_prompt="x").prefix("gemma-2-2b-it")


def test_custom_template_gets_the_stops_of_its_markup():
    """A custom pre-query template used to get all 8 known end-of-turn markers as `stop`; vLLM's
    server and the OpenAI API take at most 4 (HTTP 400: every query failed, issue 8 part 7)."""
    assert Magpie(pre_query_template="<|im_start|>user\n").prefix("anything")[1] == ("<|im_end|>", "<|im_start|>")
    llama = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    assert template_stops(llama) == ("<|eot_id|>", "<|start_header_id|>")
    assert template_stops("<|user|>\n") == ("<|end|>", "<|assistant|>")
    assert template_stops("<start_of_turn>user\n") == ("<end_of_turn>", "<start_of_turn>")
    assert template_stops("[INST] ") == ALL_STOPS and len(ALL_STOPS) == 8  # unknown markup: all (the backend sends 4)


def test_custom_template_against_a_server_with_the_openai_limits():
    """Through the real OpenAI-compatible client to the fault server, which refuses more than 4 stop
    sequences as vLLM's server does. Phi-3 markup: the echo of the template is a usable query."""
    from curate.llm.openai_backend import OpenAIBackend
    from tests.servers.fault_server import fault_server

    with fault_server() as s:
        for template in ("<|user|>\nHow do I keep basil alive indoors?", "[INST] How do I repot a cactus safely?"):
            b = OpenAIBackend("fault-model", base_url=s.base_url, api_key="local", max_retries=0, timeout=10)
            result, _ = run(Magpie(n=1, pre_query_template=template), backend=b)
            assert result.rejected is None or result.rejected.height == 0, result.rejected["detail"].to_list()
            query = result.kept["messages"][0].to_list()[0]["content"]
            assert query.startswith("echo: ") and query.endswith("?")


def test_query_parsing():
    stops = ("<|im_end|>", "<|im_start|>")
    assert clean_query("\n  How do I bake bread?<|im_end|>\n<|im_start|>assistant", stops) == "How do I bake bread?"
    assert clean_query(None, stops) == ""
    assert query_failure("", "stop", 3) == query_failure("?!", "stop", 3) == "query empty"
    assert query_failure("How do I bake bread and", "length", 3) == "query truncated"
    assert query_failure("Bread?", "stop", 3) == "query too short"
    assert query_failure("How do I bake bread?", "stop", 3) is None


class RuleCompleter(Backend):
    """Raw completions by rule from the request's seed (no model): seeds map to fixed queries,
    including an empty, a truncated, a too-short, a duplicate and a failed one. Chat requests get
    an answer, or nothing for the query that asks for silence."""

    name, model, max_concurrency = "rule", "SmolLM2-135M-Instruct", 2
    QUERIES = {
        0: ("How do I keep basil alive indoors?<|im_end|>", "stop"),
        1: ("", "stop"),
        2: ("Write a long story about a dragon who", "length"),
        3: ("Hi", "stop"),
        4: ("how do I keep   basil alive indoors?", "stop"),  # duplicate of 0 after normalisation
        5: (None, "error"),
        6: ("Please answer with silence only.", "stop"),
        7: ("What is the capital of Peru?", "stop"),
    }

    def __init__(self, raw=True):
        self.supports_raw_prompt = raw
        self.requests = []

    async def acomplete(self, request: Request) -> Response:
        await asyncio.sleep(0)
        self.requests.append(request)
        if request.prompt is not None:
            text, finish = self.QUERIES[request.seed % 8]
            if finish == "error":
                return Response(error="refused by rule")
            return Response(text=text, finish_reason=finish, prompt_tokens=3, completion_tokens=9)
        query = request.message_dicts()[-1]["content"]
        if "silence" in query:
            return Response(text="   ", finish_reason="stop")
        return Response(text=f"Answer: {query}", finish_reason="stop", prompt_tokens=8, completion_tokens=4)


def run(step, df=None, backend=None):
    backend = backend or RuleCompleter()
    df = build_rows([]) if df is None else df
    return step.run(df, Context(llm=LLM(backend, show_progress=False), seed=0)), backend


def test_queries_answers_and_rejects():
    result, backend = run(Magpie(n=8, query_max_tokens=32))
    kept, rejected, gen = result.kept, result.rejected, result.stats["generation"]
    raw = [r for r in backend.requests if r.prompt is not None]
    assert len(raw) == 8 and {r.prompt for r in raw} == {"<|im_start|>user\n"}
    assert sorted(r.seed for r in raw) == list(range(8))  # a different seed per sample
    assert all(r.stop == ("<|im_end|>", "<|im_start|>") and r.temperature == 1.0 for r in raw)

    assert [m[0]["content"] for m in kept["messages"].to_list()] == ["How do I keep basil alive indoors?",
                                                                      "What is the capital of Peru?"]
    assert kept["messages"][0].to_list()[1] == {"role": "assistant", "content": "Answer: How do I keep basil alive indoors?"}
    assert set(kept["source"]) == {"magpie"}
    meta = kept["meta"][0]
    assert meta["seed"] == 0 and meta["completion_tokens"] == 9 + 4 and set(json.loads(meta["params"])) == {"query", "response"}
    assert meta["template_hash"] == Magpie(n=1).run(build_rows([]), Context(llm=LLM(RuleCompleter(), show_progress=False))).kept["meta"][0]["template_hash"]

    assert dict(rejected.group_by("reason").len().iter_rows()) == {
        "query empty": 1, "query truncated": 1, "query too short": 1, "duplicate query": 1,
        "teacher request failed": 1, "empty response": 1}
    assert rejected.filter(pl.col("reason") == "query truncated")["detail"][0] == "Write a long story about a dragon who"
    assert gen == {"generated": 8, "parsed": 3, "kept": 2, "passed_through": 0, "pre_query_template": "<|im_start|>user\n"}
    assert result.stats["llm"]["requests"] == 8 + 3


def test_system_prompt_goes_into_prefix_request_and_row():
    result, backend = run(Magpie(n=1, system_prompt="You are a gardener."))
    assert backend.requests[0].prompt.startswith("<|im_start|>system\nYou are a gardener.<|im_end|>\n")
    assert [m["role"] for m in result.kept["messages"][0].to_list()] == ["system", "user", "assistant"]


def test_input_rows_pass_through():
    df = make_frame([{"messages": [{"role": "user", "content": "Old question"}, {"role": "assistant", "content": "Old answer"}],
                      "source": "old"}])
    result, _ = run(Magpie(n=1), df)
    assert result.kept["source"].to_list() == ["old", "magpie"]
    assert result.stats["generation"]["passed_through"] == 1


def test_chat_only_backend_is_a_clear_error():
    with pytest.raises(CurateError) as err:
        run(Magpie(n=2), backend=RuleCompleter(raw=False))
    assert str(err.value) == RAW_PROMPT_ERROR
    assert "embedded, vllm, or an OpenAI-compatible /completions endpoint" in str(err.value)


def test_chat_only_teacher_config_stops_magpie_before_any_request():
    """`teacher.chat_only: true` on an OpenAI-compatible teacher: the clear error, not a table of rejects."""
    import pydantic

    from curate.llm.teacher import TeacherConfig, build_llm

    # Port 9 (discard) on localhost: a request that were sent would fail as a connection error.
    cfg = TeacherConfig(backend="openai", model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1", chat_only=True,
                        max_retries=0)
    llm = build_llm(cfg, cache_path=None, show_progress=False)
    assert llm.backend.supports_raw_prompt is False
    with pytest.raises(CurateError) as err:
        Magpie(n=2).run(build_rows([]), Context(llm=llm, seed=0))
    assert str(err.value) == RAW_PROMPT_ERROR and "chat_only" in str(err.value)
    # Other code sending a raw prompt anyway gets an error response without a request going out.
    resp = asyncio.run(llm.backend.acomplete(Request(prompt="<|im_start|>user\n")))
    assert not resp.ok and "chat-only" in resp.error and "connection" not in resp.error
    assert build_llm(TeacherConfig(backend="openai", model="m"), None, False).backend.supports_raw_prompt is True
    with pytest.raises(pydantic.ValidationError, match="chat_only"):
        TeacherConfig(backend="embedded", chat_only=True)


def test_unknown_model_names_the_field():
    backend = RuleCompleter()
    backend.model = "mistral-7b-instruct"
    with pytest.raises(CurateError, match="set pre_query_template"):
        run(Magpie(n=1), backend=backend)
    assert backend.requests == []  # nothing sent


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a few minutes idle; far longer on a loaded shared machine
def test_recipe_on_embedded_model_with_no_inputs(tmp_path):
    out = tmp_path / "out"
    report, marker = run_catalogue_on_embedded(
        "magpie", out, ["inputs", "magpie", "heuristics", "exact_dedup", "minhash_dedup"], rows_in=0)
    steps, gen = report["steps"], marker["generation"]
    mp = steps[1]
    assert gen["generated"] == 8 == mp["rows_out"] + sum(mp["dropped"].values())
    assert mp["llm"]["requests"] == 8 + gen["parsed"] and gen["kept"] == mp["rows_out"]
    ds, rejects = check_generator_output("magpie", out, report, gen)
    assert set(rejects.filter(pl.col("step") == "01-magpie")["reason"]) <= {
        "query empty", "query truncated", "query too short", "duplicate query", "teacher request failed", "empty response",
        TRUNCATED}
    kept = pl.read_parquet(out / "records.parquet")
    assert (finish_reasons(kept) == "stop").all()  # no answer cut at response_max_tokens is kept
    assert all(row["source"] == "magpie" for row in ds)
