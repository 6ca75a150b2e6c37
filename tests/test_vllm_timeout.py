"""The vLLM backend's per-request timeout, without vLLM: the real engine thread (`_Engine._run`)
drives a stand-in for vLLM's LLMEngine, so this runs in milliseconds and needs no model."""

import asyncio
import itertools
import queue
import threading
import time
from types import SimpleNamespace

import pytest

from curate.llm import Request
from curate.llm.vllm_backend import _STOP, VLLMBackend, _Engine


class FakeLLMEngine:
    """Finishes a request at its first step when max_tokens <= 8; longer ones never finish."""

    def __init__(self):
        self.live: dict[str, dict] = {}
        self.aborted: list[str] = []

    def add_request(self, rid, inputs, params):
        self.live[rid] = params

    def step(self):
        time.sleep(0.005)
        done = [rid for rid, p in self.live.items() if p["max_tokens"] <= 8]
        outs = []
        for rid in done:
            del self.live[rid]
            c = SimpleNamespace(text="short answer", finish_reason="stop", token_ids=[1, 2], logprobs=None)
            outs.append(SimpleNamespace(request_id=rid, finished=True, outputs=[c], prompt_token_ids=[5, 6, 7]))
        return outs

    def has_unfinished_requests(self):
        return bool(self.live)

    def abort_request(self, request_ids):
        for rid in request_ids:
            self.aborted.append(rid)
            self.live.pop(rid, None)


class FakeTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return " ".join(m["content"] for m in messages)

    def encode(self, text, add_special_tokens):
        return [ord(ch) for ch in text]


@pytest.fixture
def engine():
    eng = object.__new__(_Engine)  # skip __init__: it would start vLLM
    eng.engine = FakeLLMEngine()
    eng.tokenizer = FakeTokenizer()
    eng._tokens_input = None
    eng._tok_lock = threading.Lock()
    eng._queue = queue.SimpleQueue()
    eng._ids = itertools.count()
    eng.dead = None
    eng.sampling_params = lambda **kw: kw
    eng._thread = threading.Thread(target=eng._loop, daemon=True)
    eng._thread.start()
    yield eng
    eng._queue.put(_STOP)
    eng._thread.join(timeout=5)


def backend_on(engine, timeout):
    b = VLLMBackend(timeout=timeout)
    b._engine = engine
    return b


def ask(max_tokens):
    return Request.chat([{"role": "user", "content": "hi"}], max_tokens=max_tokens)


def test_request_over_the_timeout_is_aborted_and_becomes_an_error(engine):
    b = backend_on(engine, timeout=0.3)

    async def both():
        return await asyncio.gather(b.acomplete(ask(4)), b.acomplete(ask(500)))

    started = time.perf_counter()
    fast, slow = asyncio.run(both())
    assert time.perf_counter() - started < 3
    assert fast.ok and fast.text == "short answer" and fast.completion_tokens == 2
    assert not slow.ok and "timeout after 0.3s" in slow.error and slow.text is None
    deadline = time.monotonic() + 2
    while not engine.engine.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(engine.engine.aborted) == 1 and not engine.engine.live  # the engine stopped working on it
    assert engine.dead is None and engine._thread.is_alive()  # and goes on serving
    again = asyncio.run(b.acomplete(ask(3)))
    assert again.ok


def test_no_timeout_by_default_and_invalid_values_refused(engine):
    assert VLLMBackend().timeout is None
    with pytest.raises(ValueError):
        VLLMBackend(timeout=0)


def test_teacher_config_passes_timeout_only_when_set():
    from curate.llm.teacher import TeacherConfig, build_backend

    assert build_backend(TeacherConfig(backend="vllm")).timeout is None  # the 120 s HTTP default is not applied
    assert build_backend(TeacherConfig(backend="vllm", timeout=30)).timeout == 30
