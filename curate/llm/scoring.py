"""Token log-probabilities for scoring filters (perplexity, IFD, NUGGETS, judges' digit scores).

The one question every scorer answers: log p(target tokens | context), token by token.

Alignment, stated once: texts are tokenized piece by piece (prefix, context, target separately,
then concatenated), so the target span is exact and never depends on how a tokenizer would merge
across the boundary. After evaluating ids[0..n), row i of the logits predicts ids[i+1]; the
log-prob of target token ids[j] is read from row j-1. A target with no context at all loses its
first token (nothing predicts it), as in Superfiltering's direct-answer loss. The embedded model's
GGUF does not add a BOS token, so none is added here.

llama-cpp-python's own echo/prompt log-probs are shifted by one token (upstream issue #1983);
this module reads the raw logits instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (float32 sums over 49k entries lose ~1e-4 nats)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


class LlamaCppScorer:
    """Scores with a GGUF model in-process (default: the embedded SmolLM2-135M-Instruct).

    `score_after_prefix` evaluates a shared prefix once and reuses its KV cache for every
    (context, target) pair that follows it: the NUGGETS one-shot pattern (candidate prefix, many
    anchors) costs one prefix pass instead of one per anchor.
    """

    name = "llama_cpp"

    def __init__(self, model_path: str | Path | None = None, n_ctx: int = 2048):
        from curate.llm.embedded import load_llama

        self.llm = load_llama(model_path, n_ctx=n_ctx, logits_all=True)
        self.n_ctx = n_ctx
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _target_logprobs(self, start: int, ids: Sequence[int]) -> np.ndarray:
        """Log-probs of ids[start:], from the logits currently held for positions 0..len(ids)-1."""
        first = max(start, 1)
        if first >= len(ids):
            return np.zeros(0)
        rows = log_softmax_rows(np.asarray(self.llm.scores[first - 1 : len(ids) - 1]))
        return rows[np.arange(len(rows)), np.asarray(ids[first:])]

    def _check_fits(self, n: int) -> None:
        if n > self.n_ctx:
            raise ValueError(f"{n} tokens do not fit the scorer's context of {self.n_ctx}")

    def score(self, context: str, target: str) -> np.ndarray:
        """Per-token log p(target | context)."""
        ctx_ids, tgt_ids = self.tokenize(context), self.tokenize(target)
        ids = ctx_ids + tgt_ids
        self._check_fits(len(ids))
        with self._lock:
            self.llm.reset()
            self.llm.eval(ids)
            return self._target_logprobs(len(ctx_ids), ids)

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        return [self.score(c, t) for c, t in pairs]

    def score_after_prefix(self, prefix: str, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """Per-token log p(target | prefix + context) for each (context, target); the prefix is
        evaluated once and its KV cache kept while each pair is evaluated after it."""
        pre = self.tokenize(prefix)
        out = []
        with self._lock:
            self.llm.reset()
            self.llm.eval(pre)
            for context, target in pairs:
                ctx_ids, tgt_ids = self.tokenize(context), self.tokenize(target)
                ids = pre + ctx_ids + tgt_ids
                self._check_fits(len(ids))
                self.llm.n_tokens = len(pre)  # drop the previous pair; eval() trims the KV cache to here
                self.llm.eval(ctx_ids + tgt_ids)
                out.append(self._target_logprobs(len(pre) + len(ctx_ids), ids))
        return out


def sum_and_count(logprobs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-prob and token count per item."""
    return np.array([float(lp.sum()) for lp in logprobs]), np.array([len(lp) for lp in logprobs])
