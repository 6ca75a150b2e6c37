"""The embedded backend: SmolLM2-135M-Instruct in-process via llama.cpp."""

import pytest

from curate.llm import LLM, Request
from curate.llm.cache import ResponseCache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("llama_cpp", reason="needs the embedded extra: pip install -e '.[embedded]'")
    from curate.llm.embedded import EmbeddedBackend

    return EmbeddedBackend()


def test_chat_and_raw_completion(backend):
    llm = LLM(backend, show_progress=False)
    chat = Request.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=24, temperature=0, seed=1)
    raw = Request(prompt="<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", max_tokens=16, temperature=0)
    (a, b), usage = llm.generate([chat, raw])
    assert a.ok and a.text.strip() and a.completion_tokens > 0 and a.prompt_tokens > 5
    assert b.ok and b.text.strip()
    assert usage.sent == 2 and usage.completion_tokens == a.completion_tokens + b.completion_tokens


def test_same_seed_same_text_and_cache(backend, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    llm = LLM(backend, cache=cache, show_progress=False)
    reqs = [Request.chat([{"role": "user", "content": "Write one word."}], max_tokens=12, temperature=1.0, seed=7, sample=i)
            for i in (0, 0, 1)]
    first, usage = llm.generate(reqs)
    assert usage.sent == 2  # the two identical requests are sent once
    assert first[0].text == first[1].text
    again, usage2 = llm.generate(reqs)
    assert usage2.sent == 0 and usage2.cache_hits == 3 and [r.text for r in again] == [r.text for r in first]
    assert all(r.cached for r in again)


def test_prompt_too_long_is_an_error_not_a_crash(backend):
    llm = LLM(backend, show_progress=False)
    (resp,), usage = llm.generate([Request.chat([{"role": "user", "content": "word " * 5000}], max_tokens=4)])
    assert not resp.ok and "embedded model" in resp.error and usage.failures == 1


def test_json_schema_structured_output(backend):
    import json

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    req = Request.chat([{"role": "user", "content": "Give the capital of France and its population as JSON."}],
                       max_tokens=48, temperature=0, json_schema=json.dumps(schema))
    (resp,), _ = LLM(backend, show_progress=False).generate([req])
    data = json.loads(resp.text)
    assert isinstance(data["city"], str) and isinstance(data["population"], int)
