"""Backend for any OpenAI-compatible HTTP server: OpenAI, vLLM, llama.cpp server, SGLang.

One `acomplete` call = one request, made robust here so the caller (curate.llm.client.LLM) only
has to bound how many are in flight:

- RPM and TPM token buckets. A request is charged `approx_prompt_tokens() + max_tokens` tokens
  before it is sent (the real count is unknown until the answer arrives); the difference to the
  `usage` the server reports is credited back afterwards, so an over-estimated max_tokens does not
  starve the bucket for long.
- 429: every request of this backend pauses until the `Retry-After` (or `retry-after-ms`) time has
  passed, not only the one that got it, since the limit is shared. Without the header the pause is
  the exponential backoff of that attempt.
- Retries with jittered exponential backoff on 5xx, 408, 409, 429, timeouts, connection errors
  and malformed bodies; other 4xx fail at once. Each attempt has a total timeout (connect, send,
  read the body).
- A request that fails for good returns `Response(error=...)` saying what happened; acomplete
  never raises (except cancellation) and never waits unboundedly.
- Requests keep to the OpenAI API's documented limits, which vLLM's server enforces too (it
  answers HTTP 400 otherwise): at most 4 `stop` sequences on the wire (any further ones are applied
  here, to the returned text), seeds folded into the 64-bit range, `top_logprobs` at most 20 on chat
  and 5 on raw completions (more is refused before sending). `n` is never sent: one request is one
  sample. `temperature` outside 0..2 is refused before sending. `max_tokens` is sent as at most
  the model's context length where the server says what that is (vLLM's GET /models gives
  `max_model_len`; it refuses a larger max_tokens, and itself caps one that only the prompt pushes
  past the context). A prompt longer than the context is refused by the server (HTTP 400, not
  retried).
- A request's `json_schema` is sent as `response_format` (built by `response_format`): OpenAI's structured
  outputs form, which vLLM's and SGLang's servers take too, `strict` only where the schema meets
  OpenAI's strict rules (OpenAI refuses a strict request whose schema does not). llama-cpp-python's
  server takes only its own form (json_object with a schema, which it turns into a grammar: the same
  constraint) and answers the other with HTTP 500 naming the types it takes; on that answer the
  backend switches to its form for the rest of its life and sends the request again.

Transport: aiohttp, JSON built and parsed here. The official `openai` client (AsyncOpenAI, on
httpx) took about ten times the CPU per request (≈4 ms against ≈0.35 ms) and reached a fifth of the
throughput at 64 requests in flight on 2 cores; bench/bench_client.py measures both.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import re
import sys
import time
from typing import Any

import aiohttp

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # aiohttp requires async-timeout on these versions
    from async_timeout import timeout as _timeout

from curate.llm.base import Backend, Request, Response, top_logprobs_of

_RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
# The request itself is wrong: a rerun sends it again only if it changed. Other 4xx (401, 403, 404)
# say the key, model or URL is wrong, which the user fixes before rerunning.
BAD_REQUEST_STATUS = frozenset({400, 413, 422})
# The OpenAI API's documented request limits (API reference: chat/completions, completions).
MAX_STOP = 4  # stop sequences; vLLM's server: VLLM_MAX_STOP_STRINGS, also 4
MAX_TOP_LOGPROBS = 20  # chat completions' top_logprobs
MAX_COMPLETION_LOGPROBS = 5  # raw completions' logprobs
_INT64 = 2**63  # seeds are signed 64-bit integers
MAX_TEMPERATURE = 2.0
# What llama-cpp-python's server answers (HTTP 500) to response_format type "json_schema".
_JSON_OBJECT_ONLY = b"'text' or 'json_object'"
_RETRY_AFTER_CAP = 600.0  # a server asking for a longer pause is not waited for beyond this
_SNIPPET = 200  # characters of a bad body kept in an error message


class TokenBucket:
    """Async token bucket: `rate` tokens per second, holding at most `capacity`.

    Callers reserve tokens immediately (the level may go negative) and then sleep until the debt
    is repaid. Reserving before sleeping keeps waiters in arrival order and needs no lock, since
    nothing awaits between reading and updating the level. A cost larger than the capacity is
    allowed; it just waits longer.
    """

    def __init__(self, rate: float, capacity: float):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._level = capacity
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, cost: float) -> float:
        """Take `cost` tokens now; return how many seconds to wait before using them."""
        self._refill()
        self._level -= cost
        return 0.0 if self._level >= 0 else -self._level / self.rate

    async def acquire(self, cost: float = 1.0) -> None:
        wait = self.reserve(cost)
        if wait > 0:
            await asyncio.sleep(wait)

    def credit(self, amount: float) -> None:
        """Return (or, if negative, charge extra) tokens once the true cost is known."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)


class _Retry(Exception):
    """An attempt failed in a way worth retrying. `message` is the reason, final if no retry is left."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class _JsonObjectOnly(Exception):
    """The server (llama-cpp-python's) takes structured output only as response_format json_object."""


class _Fail(Exception):
    """An attempt failed in a way a retry will not fix (a 4xx such as 400 or 401)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if
    absent or unreadable. `headers` is looked up in lower case (aiohttp's are case-insensitive)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            if math.isfinite(seconds := float(ms) / 1000.0):
                return max(0.0, seconds)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def api_base_url(base_url: str | None) -> str:
    """The URL requests go to: the given one, else $OPENAI_BASE_URL, else OpenAI's API (what the
    openai client does too); prices are looked up by this URL (curate/pricing.py)."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")


class OpenAIBackend(Backend):
    """Chat and raw-completion requests to an OpenAI-compatible `base_url` (…/v1)."""

    name = "openai"
    supports_raw_prompt = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        structured_output: str = "json_schema",
        raw_prompts: bool = True,
    ):
        """`structured_output` says how a request's json_schema is sent: "json_schema" (OpenAI,
        vLLM, SGLang) or "json_object" (llama-cpp-python's server, which rejects the former).
        `raw_prompts=False` declares a chat-only server (no /completions): `supports_raw_prompt`
        is then False, so steps that need raw prompts refuse to start, and a raw request that still
        arrives fails at once without being sent."""
        if structured_output not in ("json_schema", "json_object"):
            raise ValueError(f"structured_output must be 'json_schema' or 'json_object', not {structured_output!r}")
        self.structured_output = structured_output
        self.supports_raw_prompt = raw_prompts
        self.model = model
        self.base_url = api_base_url(base_url)
        # Kept private and out of repr/errors; local servers (vLLM, llama.cpp) need none.
        self.__api_key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        self.max_concurrency = max_concurrency
        self.rpm, self.tpm = rpm, tpm
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        # Providers enforce per-minute limits over shorter windows, so allow a burst of about one
        # second's worth (at least one request) rather than a full minute's.
        self._rpm_bucket = TokenBucket(rpm / 60.0, max(1.0, rpm / 60.0)) if rpm else None
        self._tpm_bucket = TokenBucket(tpm / 60.0, max(1.0, tpm / 60.0)) if tpm else None
        self._cooldown_until = 0.0  # monotonic time before which no request is sent (after a 429)
        # Per event loop (see _get_session): the HTTP session and a semaphore bounding requests in
        # flight. The caller's window should already keep to max_concurrency; the semaphore makes
        # sure an over-eager caller queues here, outside the timeout, not in the connection pool.
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._models_lock: asyncio.Lock | None = None
        self._context_read = False  # GET /models asked once (see context_length)
        self._context_length: int | None = None

    def __repr__(self) -> str:
        key = "set" if self.__api_key else "none"
        return (
            f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, api_key={key}, "
            f"max_concurrency={self.max_concurrency})"
        )

    # -- HTTP session -----------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A session belongs to one event loop; one left from an earlier asyncio.run is unusable
            # (its loop is closed), so it is dropped rather than closed.
            headers = {"Content-Type": "application/json"}
            if self.__api_key:
                headers["Authorization"] = f"Bearer {self.__api_key}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(self.max_concurrency, 1) + 4, ttl_dns_cache=300),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None),  # _attempt times each attempt itself
            )
            self._session_loop = loop
            self._slots = asyncio.Semaphore(max(self.max_concurrency, 1))
            self._models_lock = asyncio.Lock()
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (engines ship backends to workers): the session is rebuilt where it is used."""
        state = self.__dict__.copy()
        state.update(_session=None, _session_loop=None, _slots=None, _models_lock=None)
        return state

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._session_loop is asyncio.get_running_loop():
            await session.close()

    # -- request building and parsing -------------------------------------------------------------

    def payload(self, request: Request) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body for `request`."""
        if not 0 <= request.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature={request.temperature:g}: the OpenAI API takes 0 to {MAX_TEMPERATURE:g}")
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.messages is not None:
            url = self.base_url + "/chat/completions"
            body["messages"] = request.message_dicts()
        elif not self.supports_raw_prompt:
            raise ValueError("raw prompt on a chat-only teacher (chat_only: true); this server has no /completions")
        else:
            url = self.base_url + "/completions"
            body["prompt"] = request.prompt
        if request.seed is not None:
            body["seed"] = wire_seed(request.seed)
        if request.stop:
            body["stop"] = list(request.stop[:MAX_STOP])  # the rest: cut_at_stops, on the answer
        if request.top_logprobs:
            top = request.top_logprobs
            if request.messages is not None:
                if top > MAX_TOP_LOGPROBS:
                    raise ValueError(f"top_logprobs={top}: the OpenAI API allows at most {MAX_TOP_LOGPROBS}")
                body.update(logprobs=True, top_logprobs=top)
            else:
                if top > MAX_COMPLETION_LOGPROBS:
                    raise ValueError(f"top_logprobs={top} on a raw completion: the OpenAI API's /completions "
                                     f"allows at most {MAX_COMPLETION_LOGPROBS} (chat requests allow {MAX_TOP_LOGPROBS})")
                body["logprobs"] = top
        if request.json_schema is not None:
            body["response_format"] = response_format(json.loads(request.json_schema), self.structured_output)
        return url, body

    @staticmethod
    def parse(raw: bytes, chat: bool) -> Response:
        """A Response from a 200 body; raises _Retry when the body is not a usable completion."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise _Retry(f"invalid JSON body ({exc}): {_snippet(raw)}") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise _Retry(f"malformed response, no 'choices': {_snippet(raw)}")
        choice = choices[0]
        extra: dict[str, Any] = {}
        if chat:
            message = choice.get("message") or {}
            text = message.get("content")
            # Reasoning servers (vLLM/SGLang reasoning parsers, DeepSeek) return the chain of thought apart.
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if reasoning:
                extra["reasoning"] = reasoning
            if text is None and message.get("refusal"):
                return Response(
                    error=f"model refused: {str(message['refusal'])[:_SNIPPET]}",
                    finish_reason=choice.get("finish_reason"),
                    permanent=True,
                )
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            raise _Retry(f"malformed response, no text in choices[0]: {_snippet(raw)}")
        top = top_logprobs_of(choice)
        if top is not None:
            extra["top_logprobs"] = top
        usage = data.get("usage") or {}
        return Response(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            extra=extra,
        )

    async def context_length(self) -> int | None:
        """The served model's context length, if the server says (vLLM: `max_model_len` in its
        GET /models entry; OpenAI and llama-cpp-python do not), read once per backend. Any
        failure to read it means unknown: requests are then sent as they are."""
        if self._context_read:
            return self._context_length
        session = self._get_session()
        async with self._models_lock:
            if not self._context_read:
                try:
                    async with _timeout(min(self.timeout, 10.0)):
                        async with session.get(self.base_url + "/models") as resp:
                            data = await resp.json(content_type=None) if resp.status == 200 else None
                    entries = data.get("data") if isinstance(data, dict) else None
                    for entry in entries if isinstance(entries, list) else []:
                        if isinstance(entry, dict) and entry.get("id") == self.model:
                            n = entry.get("max_model_len")
                            self._context_length = n if isinstance(n, int) and n > 0 else None
                except Exception:  # an optional hint: whatever went wrong, the length is unknown
                    pass
                self._context_read = True
        return self._context_length

    # -- the request loop -------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff for the retry after `attempt` (1-based), jittered to 50-100% so
        requests that failed together do not come back together."""
        return random.uniform(0.5, 1.0) * min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))

    async def _sit_out_cooldown(self) -> None:
        while (pause := self._cooldown_until - time.monotonic()) > 0:
            await asyncio.sleep(pause)

    async def _wait_for_capacity(self, est_tokens: int) -> None:
        # Cooldown first, so that requests held by a 429 take their rate tokens afterwards and
        # leave at the bucket's pace instead of all at once; again after, for a 429 seen meanwhile.
        await self._sit_out_cooldown()
        if self._rpm_bucket is not None:
            await self._rpm_bucket.acquire(1)
        if self._tpm_bucket is not None:
            await self._tpm_bucket.acquire(est_tokens)
        await self._sit_out_cooldown()

    async def _attempt(self, url: str, body: dict[str, Any], chat: bool) -> Response:
        session = self._get_session()
        try:
            async with self._slots, _timeout(self.timeout):
                async with session.post(url, data=json.dumps(body).encode()) as resp:
                    raw = await resp.read()
                    status = resp.status
                    headers = resp.headers
        except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11 on
            raise _Retry(f"timeout after {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retry(f"connection error: {type(exc).__name__}: {exc}") from None
        if status == 200:
            return self.parse(raw, chat)
        if _JSON_OBJECT_ONLY in raw and (body.get("response_format") or {}).get("type") == "json_schema":
            raise _JsonObjectOnly()
        reason = f"HTTP {status}: {_snippet(raw)}"
        if status >= 500 or status in _RETRY_STATUS:
            raise _Retry(reason, status, parse_retry_after(headers) if status == 429 else None)
        raise _Fail(reason, status)

    async def acomplete(self, request: Request) -> Response:
        try:
            url, body = self.payload(request)
        except ValueError as exc:
            return Response(error=f"cannot build request: {exc}", permanent=True)
        chat = request.messages is not None
        if (context := await self.context_length()) is not None and body["max_tokens"] > context:
            body["max_tokens"] = context  # the server caps it further to what the prompt leaves
        est = request.approx_prompt_tokens() + request.max_tokens
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._wait_for_capacity(est)
                response = await self._attempt(url, body, chat)
            except _JsonObjectOnly:
                self.structured_output = "json_object"  # for every later request of this backend too
                body = {**body, "response_format": response_format(json.loads(request.json_schema), "json_object")}
                attempts -= 1  # the server did not fail: it asked for another form
                continue
            except _Fail as exc:
                return Response(error=self._redact(_final(str(exc), attempts, retried=False)),
                                permanent=exc.status in BAD_REQUEST_STATUS)
            except _Retry as exc:
                if attempts > self.max_retries:
                    return Response(error=self._redact(_final(exc.message, attempts, retried=True)))
                delay = self._backoff(attempts)
                if exc.status == 429:
                    # Shared: the whole backend pauses, since the limit is per key, not per request.
                    pause = min(exc.retry_after, _RETRY_AFTER_CAP) if exc.retry_after is not None else delay
                    self._cooldown_until = max(self._cooldown_until, time.monotonic() + pause)
                    continue  # _wait_for_capacity sleeps out the cooldown
                await asyncio.sleep(delay)
                continue
            except Exception as exc:  # never raise out of acomplete: a bug here must not kill a run
                return Response(error=self._redact(f"unexpected client error: {type(exc).__name__}: {exc}"))
            if request.stop and len(request.stop) > MAX_STOP:
                response = cut_at_stops(response, request.stop[MAX_STOP:])
            if self._tpm_bucket is not None and (response.prompt_tokens or response.completion_tokens):
                self._tpm_bucket.credit(est - response.prompt_tokens - response.completion_tokens)
            if attempts > 1:
                response.extra["retries"] = attempts - 1
            return response

    def _redact(self, text: str) -> str:
        """Servers echo a rejected key in their error body; it must not reach logs or reject tables."""
        key = self.__api_key
        return text.replace(key, "***") if key else text


def response_format(schema: dict[str, Any], style: str = "json_schema") -> dict[str, Any]:
    """The `response_format` asking for JSON that follows `schema`. "json_schema": OpenAI's form
    (vLLM, SGLang), named by the schema's title (a pydantic model's class name) and `strict` where
    `openai_strict` says OpenAI accepts it so; "json_object": llama-cpp-python's form."""
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    title = schema.get("title")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", title.strip())[:64] if isinstance(title, str) and title.strip() else "output"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": openai_strict(schema)}}


def openai_strict(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes `schema`: every object in it lists all its properties in
    `required` and sets `additionalProperties: false` (OpenAI's structured outputs guide, "Supported
    schemas"). A schema that does not is sent with strict false: OpenAI then follows it without a
    guarantee, where a strict request would be refused with HTTP 400."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack += node
            continue
        if not isinstance(node, dict):
            continue
        types = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
        if "object" in types or "properties" in node:
            properties = node.get("properties") or {}
            if node.get("additionalProperties") is not False or set(node.get("required") or ()) != set(properties):
                return False
        for key in ("properties", "$defs", "definitions"):
            if isinstance(node.get(key), dict):
                stack += node[key].values()
        stack += [node[key] for key in ("items", "prefixItems", "anyOf", "oneOf", "allOf") if key in node]
    return True


def wire_seed(seed: int) -> int:
    """`seed` as sent: unchanged inside the signed 64-bit range the API takes, else folded into
    0..2**63-1 (a recipe seed near 2**63-1 plus a sample index leaves the range)."""
    return seed if -_INT64 <= seed < _INT64 else seed % _INT64


def cut_at_stops(response: Response, stops: tuple[str, ...]) -> Response:
    """The answer ended before the first of `stops` in it, as a server given them would have ended
    it (finish reason "stop"). For the stop sequences beyond what the API lets a request send; the
    tokens the server generated past the cut stay counted in the usage (they were generated)."""
    text = response.text
    if text is None:
        return response
    cuts = [text.find(s) for s in stops if s and s in text]
    if not cuts:
        return response
    response.text, response.finish_reason = text[: min(cuts)], "stop"
    return response


def _snippet(raw: bytes) -> str:
    text = raw[:_SNIPPET].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text + ("…" if len(raw) > _SNIPPET else "")


def _final(reason: str, attempts: int, retried: bool) -> str:
    """The error text of a request that failed for good, saying how often it was tried."""
    if not retried:
        return f"{reason} (not retried)"
    if reason.startswith("HTTP "):
        status, _, rest = reason.partition(": ")
        return f"{status} after {attempts - 1} retries: {rest}"
    return f"{reason} ({attempts} attempts)"
