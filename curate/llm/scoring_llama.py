"""The llama.cpp scorer: a GGUF model in-process (default: the embedded SmolLM2-135M-Instruct).

The contract and the alignment rules are in `curate.llm.scoring`. llama-cpp-python's own
echo/prompt log-probs are shifted by one token (upstream issue #1983); this module reads the raw
logits instead. All llama.cpp work runs on curate's one llama.cpp thread
(`curate.llm.embedded.run_on_llama_thread`), and the model loads through `load_llama`.

Two routes to the same numbers. `score_ids` (and so `score`) runs the high-level `Llama` with
logits at every position (simple; the reference). `target_logprobs`, under every other entry point,
drives llama.cpp's batch API on a second context that shares the loaded weights: the vocabulary
projection runs only at rows that predict a target token (a fifth of this model's weights, paid
per row), and a shared prefix is decoded once. On the embedded model its numbers equal `score_ids`
bit for bit (tests/test_nuggets.py); in general llama.cpp may pick other kernels for other batch
shapes, so compare to float tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curate.llm.embedded import run_on_llama_thread
from curate.llm.scoring import Scorer, Stop


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


class LlamaCppScorer(Scorer):
    """Scores with a GGUF model in-process (default: the embedded SmolLM2-135M-Instruct).

    `target_logprobs` is the batch route (see the module docstring); `score_ids`, and so `score`,
    keep the reference route that the batch route is tested against.
    """

    name = "llama_cpp"
    can_embed = True

    def __init__(self, model_path: str | Path | None = None, n_ctx: int = 2048):
        from curate.llm.embedded import load_llama

        self.llm = load_llama(model_path, n_ctx=n_ctx, logits_all=True)
        self.n_ctx = n_ctx
        self._contexts: dict[tuple, _BatchContext] = {}  # batch-API contexts on the same weights
        self.chat_template = (self.llm.metadata or {}).get("tokenizer.chat_template")
        self.special_tokens = {
            "bos_token": self._token_text(self.llm.token_bos()),
            "eos_token": self._token_text(self.llm.token_eos()),
        }

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def score_ids(self, context: Sequence[int], target: Sequence[int]) -> np.ndarray:
        """The reference route: the whole sequence from scratch with the high-level `Llama`, logits
        at every position."""
        ids = list(context) + list(target)
        self.check_fits(len(ids))
        return run_on_llama_thread(self._eval_and_read, ids, len(context))

    def _eval_and_read(self, ids: list[int], start: int) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        first = max(start, 1)
        if first >= len(ids):
            return np.zeros(0)
        rows = log_softmax_rows(np.asarray(self.llm.scores[first - 1 : len(ids) - 1]))
        return rows[np.arange(len(rows)), np.asarray(ids[first:])]

    # The batch API route ---------------------------------------------------------------------
    def target_logprobs(
        self, prefix: list[int], pairs: list[tuple[list[int], list[int]]], parallel: int, stop: Stop | None
    ) -> list[np.ndarray]:
        """The batch route, computing only what is read. The prefix is decoded once; each pair is
        decoded after it with logits requested only at the rows that predict a target token, and
        the pair's last token is not fed (nothing reads what it predicts). `parallel` pairs share
        one llama_decode as separate sequences, each a copy of the prefix's KV cells
        (llama_memory_seq_cp). Equal to `score_ids(prefix + ctx, target)`."""
        import llama_cpp

        # The prefix's last token is fed again with each pair: its logits row predicts the first
        # target token when a pair has no context of its own.
        head, tail = prefix[:-1], prefix[-1:]

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
