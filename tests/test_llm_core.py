"""The LLM call site without a model: request keys, cache, window, usage, missing extras."""

import asyncio
import json
import multiprocessing
from pathlib import Path

import pytest

from curate.errors import MissingExtra, require
from curate.llm import LLM, Request, Response, ResponseCache
from curate.llm.base import Backend


class CountingBackend(Backend):
    """A real in-process backend that answers by rule (no network), to test LLM's bookkeeping."""

    name = "counting"
    model = "rule"

    def __init__(self, max_concurrency=4, fail_on=()):
        self.max_concurrency = max_concurrency
        self.sent, self.in_flight, self.max_in_flight = [], 0, 0
        self.fail_on = fail_on

    async def acomplete(self, request):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        text = request.message_dicts()[-1]["content"]
        self.sent.append(text)
        if text in self.fail_on:
            return Response(error="refused by rule")
        return Response(text=text.upper(), prompt_tokens=3, completion_tokens=2)


def chat(text, **kw):
    return Request.chat([{"role": "user", "content": text}], **kw)


def test_cache_key_covers_every_sampling_parameter_and_nothing_secret():
    base = chat("hi", seed=1)
    keys = {base.cache_key("openai", "m"), chat("hi", seed=2).cache_key("openai", "m"),
            chat("hi", seed=1, sample=1).cache_key("openai", "m"), chat("hi", seed=1, temperature=0).cache_key("openai", "m"),
            base.cache_key("openai", "other"), base.cache_key("embedded", "m"),
            Request(prompt="hi", seed=1).cache_key("openai", "m")}
    assert len(keys) == 7
    assert base.cache_key("openai", "m") == chat("hi", seed=1).cache_key("openai", "m")


def test_window_cache_usage_and_failures(tmp_path):
    backend = CountingBackend(max_concurrency=4, fail_on={"bad"})
    llm = LLM(backend, cache=ResponseCache(tmp_path / "c.sqlite"), show_progress=False)
    reqs = [chat(f"q{i}") for i in range(40)] + [chat("bad"), chat("q0")]
    out, usage = llm.generate(reqs)
    assert [r.text for r in out[:3]] == ["Q0", "Q1", "Q2"] and out[-1].text == "Q0"
    assert not out[40].ok and out[40].error == "refused by rule"
    assert (usage.requests, usage.sent, usage.cache_hits, usage.failures) == (42, 41, 1, 1)
    assert backend.max_in_flight == 4
    out2, usage2 = llm.generate(reqs)
    # the failure was not cached, so only it is sent again
    assert usage2.sent == 1 and backend.sent[-1] == "bad"
    assert llm.usage.requests == 84 and llm.usage.prompt_tokens == usage.prompt_tokens + usage2.prompt_tokens


def test_generate_works_inside_a_running_event_loop():
    """Notebooks run an event loop already; generate() must still work there."""
    llm = LLM(CountingBackend(), show_progress=False)

    async def inside():
        return llm.generate([chat("x")])

    out, _ = asyncio.run(inside())
    assert out[0].text == "X"


def test_cached_response_round_trip(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put("k", Response(text="t", finish_reason="stop", prompt_tokens=1, completion_tokens=2))
    got = cache.get_many(["k", "missing"])
    assert list(got) == ["k"] and got["k"].cached and got["k"].text == "t" and got["k"].completion_tokens == 2
    assert json.loads(got["k"].to_json())["text"] == "t"


def _open_new_caches_in_step(folder, rounds, barrier, errors):
    """A process of the test below: opens cache i of `folder` when the others do, writes to it."""
    for i in range(rounds):
        barrier.wait(60)
        try:
            ResponseCache(Path(folder) / f"c{i}.sqlite").put(f"k{i}", Response(text="t"))
        except Exception as exc:  # reported to the test, not lost in a child process
            errors.put(f"round {i}: {exc}")


def test_runs_opening_one_new_cache_at_once_all_open_it(tmp_path):
    """Two runs sharing a `cache:` file start together: SQLite fails one's switch of the new file
    to WAL at once, whatever its busy timeout (before the retry: 81 of 600 opens in 3 processes)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, errors, rounds = ctx.Barrier(3), ctx.Queue(), 30
    procs = [ctx.Process(target=_open_new_caches_in_step, args=(str(tmp_path), rounds, barrier, errors))
             for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    failures = []
    while not errors.empty():  # qsize() is missing on macOS
        failures.append(errors.get())
    assert [proc.exitcode for proc in procs] == [0, 0, 0] and not failures, failures[:3]
    for i in range(rounds):
        assert list(ResponseCache(tmp_path / f"c{i}.sqlite").get_many([f"k{i}"])) == [f"k{i}"]


def test_missing_extra_names_the_extra():
    with pytest.raises(MissingExtra, match=r"pip install 'curate-sft\[vllm\]'"):
        require("no_such_module_here", extra="vllm", package="vllm")


def test_top_logprobs_of_both_openai_shapes():
    from curate.llm.base import top_logprobs_of

    chat = {"logprobs": {"content": [{"token": "4", "logprob": -0.1,
                                      "top_logprobs": [{"token": "4", "logprob": -0.1}, {"token": "5", "logprob": -2.5}]}]}}
    text = {"logprobs": {"tokens": ["4"], "top_logprobs": [{"4": -0.1, "5": -2.5}]}}
    assert top_logprobs_of(chat) == top_logprobs_of(text) == [{"4": -0.1, "5": -2.5}]
    assert top_logprobs_of({"text": "x"}) is None


def test_llama_thread_count_from_the_environment(monkeypatch):
    import os

    from curate.errors import CurateError
    from curate.llm.embedded import default_threads

    monkeypatch.delenv("CURATE_THREADS", raising=False)
    assert default_threads() == max(1, os.cpu_count() or 1)
    monkeypatch.setenv("CURATE_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("CURATE_THREADS", "two")
    with pytest.raises(CurateError, match="CURATE_THREADS"):
        default_threads()
