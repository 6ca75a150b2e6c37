"""Diversity selection: DEITA's score-first greedy filter (Liu et al. 2024, "What Makes Good Data
for Alignment?", Repr Filter): walk the rows from the best score down and keep a row unless its
embedding's cosine similarity to a row already kept exceeds `tau` (DEITA: 0.9).

Embedders (`embedder`):
- "hashing" (default): TF-IDF of word unigrams and bigrams (`curate.text.hashing_embeddings`), hashed
  with random signs into `dim` dimensions (feature hashing, Weinberger et al. 2009), L2-normalised.
  No model; 1.6k (long T0 prompts) to 14k (short Alpaca rows) rows/s measured on 2 busy cores.
  It sees shared wording, not meaning, so 0.9 means "nearly the same words". The IDF is fitted on
  the rows being scored. Against the exact sparse TF-IDF cosine the hashed one errs with std 0.03
  at dim 1024 (0.044 at 512, 0.022 at 2048; measured on 1,500 Alpaca rows).
- "llama_cpp": final hidden states of a GGUF model run by llama.cpp, by default the embedded
  SmolLM2-135M-Instruct (576 dimensions), averaged over the tokens (`pooling="mean"`) or taken at
  the last token (`pooling="last"`, what DEITA's code does with LLaMA-13B: hkust-nlp/deita
  `selection/embedder/clm_embedder.py`). A small causal LM's states are anisotropic: every pair of texts sits near cosine 0.9,
  so by default (`center=True`) the mean embedding of the scored rows is subtracted before
  normalising (Mu & Viswanath 2018 "all-but-the-top"; Su et al. 2021 whitening), which spreads
  unrelated pairs around 0 and leaves near-copies near 1 (on 100 Alpaca-GPT4 rows: raw pair
  cosines p5-p95 0.62-0.90, centered -0.38-0.39). Costs one forward pass over each row's first
  `max_tokens` tokens: ~350 tokens/s on an idle 2-core machine (notes/dependencies.md), so it
  suits thousands of rows, not millions; on a loaded machine one thread beat two by 3x.

The greedy rule is exactly the sequential one: rows are processed in blocks of `block_rows`; each
block is compared with all rows kept so far by one matrix product, then within the block row by
row against the block's own kept rows, so the result equals a one-row-at-a-time loop. Cost:
rows x selected x dim multiply-adds (9k Alpaca-GPT4 rows, all selected, dim 1024: ~4 s on 2 busy
cores; 50k rows all selected would be ~2 min).

Scores (`score_<name>_...`): `rank` (position in the walk), `max_sim` (max cosine to a row kept
earlier, at selection time; null for the first row), `nearest` (id of that kept row), `selected`
(kept by the tau rule at scoring time). keep() applies `max_rows` (the first max_rows selected in
rank order) with no rescoring. A different `tau` can be applied without rescoring exactly when it
puts every row on the same side as at scoring time (then the greedy walk is provably unchanged);
otherwise keep() says to rescore, because which rows are selected depends on tau.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field as Setting

from curate.errors import require
from curate.records import message_text
from curate.steps import FRAME, Filter, RecipePath, StaleScores, embedded_model_file, reasons
from curate.text import TextPart, hashing_embeddings

_LLAMA: dict[tuple, Any] = {}
LAST_EMBED_STATS: dict[str, Any] = {}  # rows, seconds, tokens of the last llama_cpp embedding call


# ------------------------------------------------------------------------------------------------
# Embedders


def load_embedding_model(model_path: str | Path | None = None, max_tokens: int = 512, pooling: str = "mean",
                         threads: int | None = None):
    """A llama.cpp model in embedding mode, pooling "mean" or "last" (loaded once per process)."""
    from curate.llm.embedded import default_threads, embedded_model_path, new_llama, run_on_llama_thread

    llama_cpp = require("llama_cpp", extra="embedded", package="llama-cpp-python")
    if model_path is None:
        model_path = embedded_model_path()
    key = (str(model_path), max_tokens, pooling)
    kinds = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}

    def get():  # on the llama.cpp thread, the only one that touches _LLAMA
        if key not in _LLAMA:
            _LLAMA[key] = new_llama(
                model_path,
                embedding=True,
                pooling_type=kinds[pooling],
                n_ctx=max_tokens,
                n_batch=max_tokens,  # embed() truncates each text to n_batch tokens
                n_ubatch=max_tokens,
                n_threads=threads or default_threads(),
            )
        return _LLAMA[key]

    return run_on_llama_thread(get)


def llama_embeddings(
    texts: pl.Series | list[str],
    model_path: str | Path | None = None,
    max_tokens: int = 512,
    center: bool = True,
    pooling: str = "mean",
) -> np.ndarray:
    """Pooled final hidden states of a GGUF model (default: the embedded SmolLM2-135M), one row per
    text, first `max_tokens` tokens; centered on the rows' mean (see the module docstring) and
    L2-normalised. Shape (n, n_embd) float32."""
    from curate.llm.embedded import run_on_llama_thread

    texts = texts.fill_null("").to_list() if isinstance(texts, pl.Series) else list(texts)
    llm = load_embedding_model(model_path, max_tokens, pooling)
    start = time.perf_counter()
    vecs = np.zeros((len(texts), llm.n_embd()), np.float32)

    def embed_all() -> int:
        tokens = 0
        for i, text in enumerate(texts):
            if not text.strip():
                continue  # zero vector: llama.cpp cannot decode an empty sequence
            vec, count = llm.embed(text, normalize=False, truncate=True, return_count=True)
            vecs[i] = vec
            tokens += count
        return tokens

    tokens = run_on_llama_thread(embed_all)
    LAST_EMBED_STATS.update(rows=len(texts), tokens=tokens, seconds=time.perf_counter() - start)
    norm = np.linalg.norm(vecs, axis=1, keepdims=True)
    np.divide(vecs, norm, out=vecs, where=norm > 0)
    if center and len(texts) > 1:
        nonzero = norm[:, 0] > 0
        vecs[nonzero] -= vecs[nonzero].mean(axis=0)
        norm = np.linalg.norm(vecs, axis=1, keepdims=True)
        np.divide(vecs, norm, out=vecs, where=norm > 0)
    return vecs


# ------------------------------------------------------------------------------------------------
# Greedy selection


def greedy_select(
    emb: np.ndarray, tau: float, block_rows: int = 512, max_selected: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DEITA's greedy walk over rows already in priority order.

    Row i is selected iff its cosine similarity to every earlier selected row is <= tau (emb rows
    L2-normalised, or zero). Returns (selected bool, max similarity to an earlier selected row at
    that point (nan if none), index of that row (-1 if none)). If `max_selected` is given the
    selected set stops growing once it is reached (later rows are still compared with it).
    Exactly the sequential rule: block i is compared with all rows kept before it by one matmul,
    then within itself row by row.
    """
    n, d = emb.shape
    selected = np.zeros(n, bool)
    best = np.full(n, -np.inf, np.float64)  # compared with tau in float64, as decide() does
    nearest = np.full(n, -1, np.int64)
    kept = np.empty((min(n, max_selected or n), d), np.float32)  # embeddings of selected rows
    kept_idx = np.empty(len(kept), np.int64)
    k = 0
    for lo in range(0, n, block_rows):
        hi = min(lo + block_rows, n)
        block = emb[lo:hi]
        if k:
            sims = block @ kept[:k].T
            arg = sims.argmax(axis=1)
            best[lo:hi] = sims[np.arange(hi - lo), arg]
            nearest[lo:hi] = kept_idx[arg]
        inner = block @ block.T
        local: list[int] = []  # block positions selected so far
        for j in range(hi - lo):
            if local:
                s = inner[j, local]
                a = int(s.argmax())
                if float(s[a]) > best[lo + j]:
                    best[lo + j] = float(s[a])
                    nearest[lo + j] = lo + local[a]
            if best[lo + j] <= tau and k + len(local) < len(kept):
                local.append(j)
        if local:
            rows = np.asarray(local) + lo
            selected[rows] = True
            kept[k : k + len(rows)] = emb[rows]
            kept_idx[k : k + len(rows)] = rows
            k += len(rows)
    max_sim = np.where(np.isfinite(best), best, np.nan)
    return selected, max_sim, nearest


class Diversity(Filter):
    """DEITA's Repr Filter (Liu et al. 2024): sort by a score, then keep a row only if its cosine
    similarity to every row already kept is <= `tau`; optionally stop at `max_rows` kept.

    `sort_by`: a score column, best = highest (`descending=False` for lower-is-better); None keeps
    the input order. Ties keep input order. `embedder`: "hashing" (word-n-gram TF-IDF, no model) or
    "llama_cpp" (pooled hidden states of the embedded SmolLM2, or `model_path`); see the
    module docstring for what tau means with each.
    """

    kind: ClassVar[str] = "diversity"
    code_version: ClassVar[int] = 1
    execution: ClassVar[str] = FRAME  # the greedy walk compares every row with the rows kept before it
    # A new tau is applied from the stored scores when it keeps every row on its side (else
    # decide raises StaleScores and split rescores); max_rows always is.
    decide_settings: ClassVar[tuple[str, ...]] = ("tau", "max_rows")

    sort_by: str | None = None
    descending: bool = True
    tau: float = Setting(0.9, ge=-1.0, le=1.0)
    max_rows: int | None = Setting(None, ge=1)
    embedder: Literal["hashing", "llama_cpp"] = "hashing"
    field: TextPart = "text"
    dim: int = Setting(1024, ge=8)  # hashing
    model_path: RecipePath | None = None  # llama_cpp: a GGUF file; default the embedded SmolLM2-135M
    max_tokens: int = Setting(512, ge=8)  # llama_cpp: tokens of each row embedded
    center: bool = True  # llama_cpp: subtract the mean embedding (see the module docstring)
    pooling: Literal["mean", "last"] = "mean"  # llama_cpp: average the tokens' states, or the last token's
    block_rows: int = Setting(512, ge=1)

    def score_columns(self) -> list[str]:
        return [f"{self.column}_{c}" for c in ("rank", "max_sim", "nearest", "selected")]

    def reads(self, df: pl.DataFrame) -> list[str]:
        return super().reads(df) + ([self.sort_by] if self.sort_by in df.columns else [])

    def files(self) -> list[str]:
        default = self.embedder == "llama_cpp" and not self.model_path
        return super().files() + ([embedded_model_file()] if default else [])

    def embed(self, texts: pl.Series) -> np.ndarray:
        """The embeddings the filter compares (L2-normalised rows)."""
        if self.embedder == "hashing":
            return hashing_embeddings(texts, self.dim)
        return llama_embeddings(texts, self.model_path, self.max_tokens, self.center, self.pooling)

    def order(self, df: pl.DataFrame) -> np.ndarray:
        """Row positions in walk order: by `sort_by` (best first, nulls last), ties in input order."""
        if self.sort_by is None:
            return np.arange(len(df))
        if self.sort_by not in df.columns:
            raise ValueError(f"diversity: sort_by column {self.sort_by!r} not found; the columns are {df.columns}")
        keyed = df.select(pl.col(self.sort_by).alias("key"), pl.int_range(len(df)).alias("pos"))
        return keyed.sort("key", "pos", descending=[self.descending, False], nulls_last=True)["pos"].to_numpy()

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        n = len(df)
        order = self.order(df)
        emb = self.embed(message_text(df, self.field).gather(order))
        selected, max_sim, nearest = greedy_select(emb, self.tau, self.block_rows)
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        ids = df["id"].cast(pl.String) if "id" in df.columns else pl.Series([str(i) for i in range(n)])
        near_row = np.where(nearest >= 0, order[np.maximum(nearest, 0)], -1)
        nearest_id = pl.select(
            pl.when(pl.Series(near_row >= 0)).then(ids.gather(np.maximum(near_row, 0))).otherwise(None)
        ).to_series()
        c_rank, c_sim, c_near, c_sel = self.score_columns()
        inv = np.argsort(order)  # walk position -> row: scatter back to input order
        return df.with_columns(
            pl.Series(c_rank, rank),
            pl.Series(c_sim, max_sim[inv], nan_to_null=True),
            nearest_id.gather(inv).alias(c_near),
            pl.Series(c_sel, selected[inv]),
        )

    def _selected(self, df: pl.DataFrame) -> np.ndarray:
        """The tau rule from stored scores; exact only if it agrees with the scoring-time walk."""
        _, c_sim, _, c_sel = self.score_columns()
        sim = df[c_sim].fill_null(-np.inf).to_numpy()
        stored = df[c_sel].to_numpy()
        now = sim <= self.tau
        if not np.array_equal(now, stored):
            flips = int((now != stored).sum())
            raise StaleScores(
                f"diversity: tau={self.tau} puts {flips} rows on the other side of the threshold than at "
                "scoring time, which changes the greedy walk after the first of them; rescore with this tau"
            )
        return stored

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        c_rank = self.score_columns()[0]
        selected = self._selected(df)
        over = np.zeros(len(df), bool)
        if self.max_rows is not None:
            rank = df[c_rank].to_numpy()
            sel_rows = np.flatnonzero(selected)
            by_rank = sel_rows[np.argsort(rank[sel_rows], kind="stable")]
            over[by_rank[self.max_rows :]] = True
        reason = pl.select(
            pl.when(pl.Series(~selected)).then(pl.lit("too similar to a selected row"))
            .when(pl.Series(over)).then(pl.lit("over max_rows"))
            .otherwise(None)
        ).to_series()
        return reasons(pl.Series(selected & ~over), reason)

    def explain(self, df: pl.DataFrame) -> pl.Series:
        c_rank, c_sim, c_near, _ = self.score_columns()
        why = pl.format("rank {}; cosine {} to {}", pl.col(c_rank), pl.col(c_sim).round(3), pl.col(c_near))
        return df.select(why.alias("detail")).to_series()


__all__ = ["Diversity", "greedy_select", "hashing_embeddings", "llama_embeddings", "load_embedding_model"]
