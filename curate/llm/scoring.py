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

Two routes to the same numbers. `score` / `score_ids` / `score_after_prefix` run the high-level
`Llama` with logits at every position (simple; the reference). `score_ids_after_prefix` drives
llama.cpp's batch API on a second context that shares the loaded weights (`score_many` uses it): the vocabulary
projection runs only at rows that predict a target token (a fifth of this model's weights, paid
per row), and a shared prefix is decoded once. On the embedded model its numbers equal `score_ids`
bit for bit (tests/test_nuggets.py); in general llama.cpp may pick other kernels for other batch
shapes, so compare to float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from curate.llm.embedded import run_on_llama_thread


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (float32 sums over 49k entries lose ~1e-4 nats)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def picked_logprobs(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log_softmax_rows(logits)[i, targets[i]] with the same float64 operations (so the same bits),
    without writing the full log-softmax matrix."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x[np.arange(len(x)), np.asarray(targets)] - lse[:, 0]


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
        self._contexts: dict[tuple, _BatchContext] = {}  # batch-API contexts on the same weights

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
        return self.score_ids(self.tokenize(context), self.tokenize(target))

    def score_ids(self, context: Sequence[int], target: Sequence[int]) -> np.ndarray:
        """`score` on token ids: the whole sequence from scratch, logits at every position."""
        ids = list(context) + list(target)
        self._check_fits(len(ids))
        return run_on_llama_thread(self._eval_and_read, ids, len(context))

    def _eval_and_read(self, ids: list[int], start: int) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return self._target_logprobs(start, ids)

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """`score` for each pair, by the batch route: the token prefix that the contexts share (a
        chat template's system turn, for example) is decoded once, and the vocabulary projection
        runs only at rows that predict a target token. Pairs with an empty context go without it."""
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
        """Per-token log p(target | prefix + context) for each (context, target); the prefix is
        evaluated once and its KV cache kept while each pair is evaluated after it."""
        return run_on_llama_thread(self._score_after_prefix, prefix, pairs)

    def _score_after_prefix(self, prefix: str, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        pre = self.tokenize(prefix)
        out = []
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

    # The batch API route ---------------------------------------------------------------------
    def score_ids_after_prefix(
        self,
        prefix: Sequence[int],
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        *,
        parallel: int = 1,
        stop: Callable[[list[np.ndarray]], bool] | None = None,
    ) -> list[np.ndarray]:
        """Per-token log p(target | prefix + context) for token-id pairs, computing only what is read.

        The prefix is decoded once; each pair is decoded after it with logits requested only at the
        rows that predict a target token, and the pair's last token is not fed (nothing reads what
        it predicts). `parallel` pairs share one llama_decode as separate sequences, each a copy of
        the prefix's KV cells (llama_memory_seq_cp). After each decode `stop(results so far)` may
        end the call early (NUGGETS early stopping). Equal to `score_ids(prefix + ctx, target)`.
        """
        import llama_cpp

        prefix, pairs = list(prefix), [(list(c), list(t)) for c, t in pairs]
        for c, t in pairs:
            self._check_fits(len(prefix) + len(c) + len(t))
        # The prefix's last token is fed again with each pair: its logits row predicts the first
        # target token when a pair has no context of its own.
        head, tail = prefix[:-1], prefix[-1:]
        parallel = max(1, min(parallel, len(pairs) or 1))

        def work() -> list[np.ndarray]:
            out: list[np.ndarray] = []
            bc = self._batch_context(parallel)
            bc.clear()
            if head:
                bc.decode([(tok, pos, 0, False) for pos, tok in enumerate(head)])
            for g0 in range(0, len(pairs), parallel):
                group = pairs[g0 : g0 + parallel]
                tokens, targets = [], []
                for g, (ctx, tgt) in enumerate(group):
                    seq = 0 if parallel == 1 else g + 1
                    if seq:
                        llama_cpp.llama_memory_seq_cp(bc.memory, 0, seq, -1, -1)
                    fed = tail + ctx + tgt[:-1]
                    first = max(len(prefix) + len(ctx), 1)  # full-sequence index of the first scored token
                    for j, tok in enumerate(fed):
                        pos = len(head) + j
                        tokens.append((tok, pos, seq, pos >= first - 1))
                    targets.append(tgt[first - len(prefix) - len(ctx) :] if tgt else [])
                n_out = sum(len(t) for t in targets)
                if n_out:
                    logits = bc.decode(tokens, n_out)
                off = 0
                for tgt in targets:
                    out.append(picked_logprobs(logits[off : off + len(tgt)], tgt) if tgt else np.zeros(0))
                    off += len(tgt)
                if parallel == 1:
                    llama_cpp.llama_memory_seq_rm(bc.memory, 0, len(head), -1)
                else:
                    for g in range(len(group)):
                        llama_cpp.llama_memory_seq_rm(bc.memory, g + 1, -1, -1)
                if stop is not None and stop(out):
                    break
            return out

        return run_on_llama_thread(work)

    def embed(self, texts: Sequence[str], max_tokens: int = 512) -> np.ndarray:
        """Mean-pooled last hidden state of each text (first `max_tokens` tokens), float32 (n, n_embd):
        NUGGETS' anchor embedding (mean of `last_hidden_state`, here without pad positions)."""

        def work() -> np.ndarray:
            out = np.zeros((len(texts), self.llm.n_embd()), dtype=np.float32)
            bc = self._batch_context(1, embeddings=True)
            for i, text in enumerate(texts):
                ids = self.tokenize(text)[:max_tokens] or [self.llm.token_eos()]
                bc.clear()
                bc.decode([(tok, pos, 0, True) for pos, tok in enumerate(ids)], 0)
                out[i] = bc.embedding(0)
            return out

        return run_on_llama_thread(work)

    def set_threads(self, n_threads: int) -> None:
        """Threads for both routes (benchmarks compare them on equal threads)."""
        import llama_cpp

        def work() -> None:
            self.llm.context_params.n_threads = self.llm.context_params.n_threads_batch = n_threads
            for ctx in [self.llm._ctx.ctx] + [bc.ctx for bc in self._contexts.values()]:
                llama_cpp.llama_set_n_threads(ctx, n_threads, n_threads)

        run_on_llama_thread(work)

    def _batch_context(self, parallel: int, embeddings: bool = False) -> _BatchContext:
        key = (parallel, embeddings)
        if key not in self._contexts:
            self._contexts[key] = _BatchContext(self.llm, self.n_ctx, parallel, embeddings)
        return self._contexts[key]


class _BatchContext:
    """A llama.cpp context on the loaded weights of a `Llama`, for the batch API: one sequence for
    the prefix plus `parallel` sequences (if more than one), each with its own `n_ctx` cells.
    Non-unified KV: with a unified cache, parallel sequences changed log-probs by up to 0.4 nats
    on this build, while per-sequence caches give the single-sequence numbers exactly."""

    def __init__(self, llm, n_ctx: int, parallel: int, embeddings: bool):
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        n_seq = 1 if parallel == 1 else parallel + 1
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = n_ctx * n_seq
        params.n_ubatch = llm.context_params.n_ubatch
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.n_threads = llm.context_params.n_threads
        params.n_threads_batch = llm.context_params.n_threads_batch
        params.flash_attn_type = llm.context_params.flash_attn_type
        params.no_perf = True
        params.embeddings = embeddings
        if embeddings:
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        # LlamaContext frees itself before the model it borrows (see llama_cpp._internals).
        with suppress_stdout_stderr(disable=False):  # llama.cpp logs a pooling notice on stderr
            self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.ctx, self.memory = self._ctx.ctx, self._ctx.memory
        self.n_vocab, self.n_embd = llm.n_vocab(), llm.n_embd()

    def clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(self.memory, True)

    def decode(self, tokens: list[tuple[int, int, int, bool]], n_out: int = 0) -> np.ndarray | None:
        """Decode (token, position, sequence, wants-logits) rows; return the requested logits rows,
        in batch order, as a (n_out, n_vocab) view valid until the next decode."""
        import llama_cpp

        b = self._batch.batch
        b.n_tokens = len(tokens)
        for i, (tok, pos, seq, want) in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {len(tokens)} tokens")
        if not n_out:
            return None
        ptr = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab)

    def embedding(self, seq: int) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq)
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()


def shared_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix common to all `seqs` (empty if there are none)."""
    if not seqs:
        return []
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        n = next((j for j in range(n) if s[j] != first[j]), n)
    return list(first[:n])


def sum_and_count(logprobs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-prob and token count per item."""
    return np.array([float(lp.sum()) for lp in logprobs]), np.array([len(lp) for lp in logprobs])
