"""The scorer contract: token log-probabilities for the likelihood filters (perplexity, IFD, NUGGETS).

The one question every scorer answers: log p(target tokens | context), token by token. Three
backends answer it: llama.cpp (`curate.llm.scoring_llama`), transformers (`curate.llm.scoring_hf`)
and vLLM's prompt log-probs (`curate.llm.vllm_backend.VLLMScorer`); `curate.llm.scorers.get_scorer`
picks one by name. A backend writes two methods, `tokenize` and `target_logprobs` (one batch of
token-id pairs after a shared prefix); `Scorer` writes the rest once: the text and id entry points,
the length check, the chat template.

Alignment, stated once: texts are tokenized piece by piece (prefix, context, target separately,
then concatenated), so the target span is exact and never depends on how a tokenizer would merge
across the boundary. After evaluating ids[0..n), row i of the logits predicts ids[i+1]; the
log-prob of target token ids[j] is read from row j-1. A target with no context at all loses its
first token (nothing predicts it), as in Superfiltering's direct-answer loss. No BOS token is
added (the embedded model's GGUF adds none); a chat template that writes one has it in its text.

The backends agree on the same token ids up to their arithmetic: llama.cpp runs the embedded
model's Q4_1 weights, transformers and vLLM the dequantized float32 folder, ~0.06 nat per token
apart (figures in tests/test_vllm.py and bench/README.md).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

Ids = Sequence[int]
Stop = Callable[[list[np.ndarray]], bool]


class Scorer(ABC):
    """Per-token log p(target | context) from a causal LM.

    Entry points, all built on `score_ids_after_prefix`:
    - `score(context, target)` / `score_ids(context_ids, target_ids)`: one pair;
    - `score_many(pairs)`: (context, target) texts; the token prefix the contexts share (a chat
      template's system turn) goes first as a shared prefix;
    - `score_after_prefix(prefix, pairs)`: log p(target | prefix + context) for each pair;
    - `score_ids_after_prefix(prefix, pairs, parallel=, stop=)`: the same on token ids, with early
      stopping (NUGGETS).
    """

    name: ClassVar[str]
    can_embed: ClassVar[bool] = False  # `embed` works (NUGGETS' anchor choice with embedding="model")
    n_ctx: int  # the most tokens one scored sequence (prefix + context + target) may hold
    chat_template: str | None = None  # the model's chat template (Jinja source), if it has one
    special_tokens: dict[str, str] = {}  # e.g. {"bos_token": "<s>"}, for templates that write them

    # What a backend writes ------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without added special tokens ("" gives [])."""

    @abstractmethod
    def target_logprobs(
        self, prefix: list[int], pairs: list[tuple[list[int], list[int]]], parallel: int, stop: Stop | None
    ) -> list[np.ndarray]:
        """For each (context, target): float64 log-probs of the target tokens given prefix + context
        + the target tokens before each, as aligned above. `parallel` (>= 1) pairs may share one
        forward pass; after each pass `stop(results so far)` may end the call early, and the
        results are then those of the first pairs, in order. Called by `score_ids_after_prefix`,
        which has checked that every sequence fits."""

    # Written once -----------------------------------------------------------------------------
    def score_ids_after_prefix(
        self, prefix: Ids, pairs: Sequence[tuple[Ids, Ids]], *, parallel: int = 1, stop: Stop | None = None
    ) -> list[np.ndarray]:
        """Per-token log p(target | prefix + context) for token-id pairs."""
        prefix, pairs = list(prefix), [(list(c), list(t)) for c, t in pairs]
        for c, t in pairs:
            self.check_fits(len(prefix) + len(c) + len(t))
        if not pairs:
            return []
        return self.target_logprobs(prefix, pairs, max(1, min(parallel, len(pairs))), stop)

    def score_ids(self, context: Ids, target: Ids) -> np.ndarray:
        """Per-token log p(target | context) on token ids."""
        return self.score_ids_after_prefix([], [(context, target)])[0]

    def score(self, context: str, target: str) -> np.ndarray:
        """Per-token log p(target | context)."""
        return self.score_ids(self.tokenize(context), self.tokenize(target))

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """`score` for each pair. The token prefix that the contexts share is scored once as a shared
        prefix (llama.cpp then decodes it once); pairs with an empty context go without it."""
        tokenized = [(self.tokenize(c), self.tokenize(t)) for c, t in pairs]
        prefix = shared_prefix([c for c, _ in tokenized if c])
        groups: dict[bool, list[int]] = {True: [], False: []}
        for i, (ctx, _) in enumerate(tokenized):
            groups[bool(prefix) and ctx[: len(prefix)] == prefix].append(i)
        out: list[np.ndarray] = [np.zeros(0)] * len(pairs)
        for has_prefix, idx in groups.items():
            pre = prefix if has_prefix else []
            got = self.score_ids_after_prefix(pre, [(tokenized[i][0][len(pre) :], tokenized[i][1]) for i in idx])
            for i, lp in zip(idx, got):
                out[i] = lp
        return out

    def score_after_prefix(self, prefix: str, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """Per-token log p(target | prefix + context) for each (context, target) text pair."""
        return self.score_ids_after_prefix(
            self.tokenize(prefix), [(self.tokenize(c), self.tokenize(t)) for c, t in pairs]
        )

    def check_fits(self, n_tokens: int) -> None:
        if n_tokens > self.n_ctx:
            raise ValueError(f"{n_tokens} tokens do not fit the scorer's context of {self.n_ctx}")

    def chat_prompt(self, messages: list[dict]) -> str:
        """`messages` rendered with the model's chat template, ending with the opening of the
        assistant turn, so that log p(response | chat_prompt) is what the model sees when it answers."""
        if not self.chat_template:
            raise ValueError("the scorer's model has no chat template; use template='plain'")
        return render_chat(self.chat_template, messages, self.special_tokens)

    def embed(self, texts: Sequence[str], max_tokens: int = 512) -> np.ndarray:
        """Mean-pooled last hidden state of each text (first `max_tokens` tokens), float32 (n, d)."""
        raise NotImplementedError(f"the {self.name} scorer has no embeddings")

    @classmethod
    def option_names(cls) -> set[str]:
        """The keyword options `get_scorer` may pass on (beside the model), for checking a recipe's
        `scorer_options` before any model loads."""
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, model
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def in_groups(run: Callable[[list], list], pairs: list, size: int, stop: Stop | None) -> list[np.ndarray]:
    """`run(pairs)` at once, or, with `stop`, on consecutive groups of `size` pairs until
    `stop(results so far)` holds: early stopping for backends that score a group per call."""
    if stop is None:
        return run(pairs)
    out: list[np.ndarray] = []
    for g in range(0, len(pairs), size):
        out += run(pairs[g : g + size])
        if stop(out):
            break
    return out


def shared_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix common to all `seqs` (empty if there are none)."""
    if not seqs:
        return []
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        n = next((j for j in range(n) if s[j] != first[j]), n)
    return list(first[:n])


_TEMPLATES: dict[str, object] = {}


def _raise(message: str):
    raise ValueError(f"the chat template refused the messages: {message}")


def render_chat(template: str, messages: list[dict], special_tokens: dict[str, str]) -> str:
    """A chat template rendered up to the assistant's turn, in the environment transformers'
    `apply_chat_template` gives it (sandboxed Jinja, trimmed blocks, loop controls,
    `raise_exception`), so every scorer sees the same text for the same model."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if template not in _TEMPLATES:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        _TEMPLATES[template] = env.from_string(template)
    values = {"bos_token": "", "eos_token": "", **special_tokens}
    return _TEMPLATES[template].render(messages=messages, add_generation_prompt=True, **values)
