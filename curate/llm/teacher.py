"""The `teacher:` block of a recipe, and building an `LLM` from it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.llm.base import Backend
from curate.llm.cache import ResponseCache
from curate.llm.client import LLM

log = logging.getLogger(__name__)


class PriceConfig(BaseModel):
    """USD per million tokens at the standard (synchronous) rate. Given, it overrides the price table
    (curate/pricing.py); a batch API is priced at half of it."""

    model_config = ConfigDict(extra="forbid")
    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class BatchConfig(BaseModel):
    """`teacher.batch`: send each step's requests through a batch API instead of one HTTP request
    each (curate.llm.batch). OpenAI's Batch API answers within 24 hours at half the price.

    `max_requests` and `max_bytes` split a step into several batches: OpenAI takes up to 50,000
    requests and 200 MB per input file (other providers: set theirs). `poll_seconds` is how often
    a batch's state is asked. `folder` writes the batch input files there instead of uploading them,
    and waits for `<name>.output.jsonl` beside each: the file format of vLLM's
    `python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model M` (README.md), which takes
    chat requests only, so with a folder the teacher is chat-only (Magpie refuses to start).
    """

    model_config = ConfigDict(extra="forbid")
    poll_seconds: float = Field(30.0, gt=0)
    max_requests: int = Field(50_000, ge=1)
    max_bytes: int = Field(200_000_000, ge=1_000)
    folder: str | None = None


class TeacherConfig(BaseModel):
    """Which model answers, and how to reach it. The default is the embedded model (no key, no GPU).

    To use a real teacher, e.g. a vLLM server or OpenAI:
        teacher: {backend: openai, model: Qwen/Qwen2.5-7B-Instruct, base_url: http://localhost:8000/v1}
    The API key is read from the environment variable named by `api_key_env`, never from the recipe.
    `chat_only: true` says the server has no raw-completion (/completions) endpoint, as with most
    hosted chat APIs: steps that need raw prompts (Magpie) then stop with a clear error up front
    instead of sending requests that all fail.
    """

    model_config = ConfigDict(extra="forbid")
    backend: Literal["embedded", "openai", "vllm"] = "embedded"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    model_path: str | None = None  # embedded: another GGUF file instead of the shipped one
    max_concurrency: int = Field(16, ge=1)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    # Seconds per request. vllm: no limit unless set here, since requests queue behind the engine's
    # running batch and 120 s is a normal wait for one on CPU.
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    chat_only: bool = False  # openai: the server only serves /chat/completions
    price: PriceConfig = Field(default_factory=PriceConfig)  # unset: from the price table (curate/pricing.py)
    # The license or terms the teacher's outputs come under (an id from curate/licenses.py, e.g.
    # llama3.1, or `other`), checked against the output license like an input's.
    license: str | None = None
    # openai: requests through the provider's batch API (true, or BatchConfig's settings)
    batch: BatchConfig | None = None
    # vllm: model = HF id or folder, model_path = a .gguf to convert; neither = the embedded model
    dtype: str | None = None
    max_model_len: int | None = Field(None, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool | None = None  # None: True on CPU, vLLM's default on GPU

    @field_validator("batch", mode="before")
    @classmethod
    def _batch_true(cls, value):
        """`batch: true` takes the defaults, `batch: false` is no batch."""
        if value is True:
            return {}
        return None if value is False else value

    @property
    def batch_api(self) -> bool:
        """Requests go through a provider's batch API, so they cost its batch price (a `batch.folder`
        is answered by whoever runs the files: no batch price)."""
        return self.batch is not None and not self.batch.folder

    @model_validator(mode="after")
    def _batch_needs_openai(self) -> TeacherConfig:
        if self.batch is not None and self.backend != "openai":
            raise ValueError(f"batch applies to backend 'openai' only; '{self.backend}' answers in-process, "
                             "where batching is what it does already")
        return self

    @model_validator(mode="after")
    def _chat_only_needs_http(self) -> TeacherConfig:
        """The in-process backends always take raw prompts; a flag that would change nothing is a mistake."""
        if self.chat_only and self.backend != "openai":
            raise ValueError(f"chat_only applies to backend 'openai' only; '{self.backend}' always accepts raw prompts")
        return self


def build_backend(cfg: TeacherConfig) -> Backend:
    if cfg.backend == "vllm":
        from curate.llm.vllm_backend import VLLMBackend

        return VLLMBackend(
            cfg.model_path or cfg.model,
            max_concurrency=cfg.max_concurrency if "max_concurrency" in cfg.model_fields_set else 256,
            dtype=cfg.dtype, max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size, enforce_eager=cfg.enforce_eager,
            timeout=cfg.timeout if "timeout" in cfg.model_fields_set else None,
        )
    if cfg.backend == "embedded":
        from curate.llm.embedded import EmbeddedBackend

        return EmbeddedBackend(model_path=cfg.model_path, model=cfg.model)
    from curate.llm.openai_backend import OpenAIBackend

    if not cfg.model:
        from curate.errors import CurateError

        raise CurateError("teacher.model is required with backend 'openai'")
    kwargs = dict(
        model=cfg.model,
        api_key_env=cfg.api_key_env,
        max_concurrency=cfg.max_concurrency,
        rpm=cfg.rpm,
        tpm=cfg.tpm,
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
        # batch files for vLLM's run_batch hold chat requests only: steps needing raw prompts refuse to start
        raw_prompts=not cfg.chat_only and not (cfg.batch is not None and cfg.batch.folder),
    )
    if cfg.base_url:
        kwargs["base_url"] = cfg.base_url
    return OpenAIBackend(**kwargs)


def build_llm(cfg: TeacherConfig, cache_path: str | Path | None, show_progress: bool = True,
              backend: Backend | None = None) -> LLM:
    """The LLM a recipe's steps call. With `batch`, its requests go through the batch route, which
    keeps the batches in flight in the response cache, and are priced at the batch rate. `backend`
    replaces the one `cfg` builds (the Ray engine's actors)."""
    from curate.pricing import teacher_price

    price = teacher_price(cfg, batch=cfg.batch_api)
    if not price.known:
        log.warning("teacher %s: %s", cfg.model, price.source)
    backend = backend or build_backend(cfg)
    cache = ResponseCache(cache_path) if cache_path else None
    route = None
    if cfg.batch is not None:
        from curate.llm.batch import build_batch_route

        route = build_batch_route(cfg, backend, cache, show_progress)
    return LLM(backend=backend, cache=cache, price=price, show_progress=show_progress, batch=route)
