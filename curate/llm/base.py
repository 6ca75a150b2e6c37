"""One request type and one response type for every backend (chat and raw completion).

A request is one sample: `n` samples of a prompt are n requests that differ in `sample` (and in
seed, `seed + sample`, where a seed is given). That keeps caching and resume per sample.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...) for chat
    prompt: str | None = None  # raw completion (Magpie, scoring templates)
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    sample: int = 0
    stop: tuple[str, ...] | None = None
    json_schema: str | None = None  # JSON text of a schema, for structured output
    top_logprobs: int | None = None  # return the k most likely tokens at each generated position

    def __post_init__(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of messages (chat) or prompt (completion)")

    @classmethod
    def chat(cls, messages: list[dict[str, str]], **params) -> "Request":
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **params)

    @classmethod
    def user(cls, text: str, **params) -> Request:
        """A chat request of one user turn (a rendered prompt template, a question)."""
        return cls(messages=(("user", text),), **params)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages or ()]

    def params(self) -> dict[str, Any]:
        """Sampling parameters (everything but the prompt), as recorded in a row's meta."""
        d = asdict(self)
        d.pop("messages"), d.pop("prompt")
        return d

    def sampling(self) -> dict[str, Any]:
        """The sampling settings every in-process engine takes by these names (llama.cpp, vLLM)."""
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                    stop=list(self.stop) if self.stop else None)

    def cache_key(self, backend: str, model: str) -> str:
        """Key on the rendered request: backend, model, prompt and every sampling parameter.

        Never on code or credentials: an API key is not part of a Request at all.
        """
        canon = json.dumps({"backend": backend, "model": model, **asdict(self)}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def approx_prompt_tokens(self) -> int:
        """A cheap token estimate (4 characters a token) for TPM budgeting before the real count is known."""
        text = self.prompt if self.prompt is not None else "".join(c for _, c in self.messages)
        return len(text) // 4 + 1


@dataclass
class Response:
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # set when the request failed for good; the row goes to rejects
    # With an error: the request itself is bad (HTTP 400, a prompt the model cannot take), so sending
    # it again on a rerun cannot help. Other failures (5xx, 429, timeouts, a bad key) a rerun retries.
    permanent: bool = False
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("cached"), d.pop("permanent")  # only successful responses are stored
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Response":
        return cls(**json.loads(text), cached=True)


def top_logprobs_of(choice: dict[str, Any]) -> list[dict[str, float]] | None:
    """The OpenAI-format log-probs of one choice as [{token: logprob} per generated position].

    Chat completions nest them as logprobs.content[i].top_logprobs[j].{token, logprob}; text
    completions as logprobs.top_logprobs[i] = {token: logprob}. llama.cpp returns both shapes.
    """
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    if isinstance(lp.get("content"), list):
        return [{t["token"]: float(t["logprob"]) for t in pos.get("top_logprobs") or []} for pos in lp["content"]]
    if isinstance(lp.get("top_logprobs"), list):
        return [{tok: float(v) for tok, v in (pos or {}).items()} for pos in lp["top_logprobs"]]
    return None


class Backend:
    """A way to reach a model. Subclasses implement `acomplete` for one request.

    `name` goes into cache keys and meta; `max_concurrency` bounds requests in flight (the
    in-process backends use 1: they are compute-bound and not thread-safe).
    """

    name: str = "backend"
    model: str = ""
    max_concurrency: int = 1
    supports_raw_prompt: bool = True

    async def acomplete(self, request: Request) -> Response:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections (called once when a run ends)."""

    def close(self) -> None:
        """Release in-process resources."""
