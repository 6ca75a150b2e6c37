"""NUGGETS: keep the examples that help a model most as a one-shot demonstration.

Li et al. 2023, "One Shot Learning as Instruction Data Prospector" (arXiv 2312.10302, repo
pldlgb/nuggets); SuperNUGGETS (Ni et al. 2024, arXiv 2412.09990) shows a small LM works as the
scorer, which is what runs here by default (the embedded SmolLM2-135M). For candidate i and anchors
(Q_k, A_k), k = 1..K, the golden score is the share of anchors it helps:

    GS(i) = (1/K) * sum_k 1[ l(A_k | c_i + Q_k) > l(A_k | Q_k) ]

where l sums the log-probs of the anchor's response tokens only (the query is context), the
zero-shot term is computed once per anchor, and c_i is candidate i rendered in the same template.
A higher GS means the example taught the model something that transfers to many tasks.

Template (the repo's `tasks/alpaca.py`, fields stripped, no system text, no chat template):

    Instruction:\\n{instruction}\\nInput:\\n{input}\\nResponse:\\n{output}

with the `Input:` block left out when the input is empty. Records keep an Alpaca input inside the
user turn (curate.io), so a record renders all non-assistant turns as the instruction and its last
assistant turn as the output; `golden_scores` takes (instruction, input, output) triples when the
input is kept apart. Differences from the repo, all settings: the candidate and the anchor are
joined by `separator` (the repo joins them with nothing: "...output.Instruction:"); no BOS token
anywhere (the embedded GGUF adds none); anchors are cut to `max_anchor_tokens` (the repo's 200) by
shortening the response, the query is kept whole; candidates to `max_candidate_tokens`.

Anchors: a file (`anchors`, any format `curate.io.read_records` reads), or K representatives of the
pool: k-means over embeddings, then the real row nearest to each centroid (the repo: mean of
LLaMA-7B's last hidden state, KMeans(100, random_state=0)). `embedding="model"` mean-pools the
scoring model's last hidden state, one forward pass per row, about 1/K of the scoring cost;
`embedding="hashing"` uses hashed TF-IDF word vectors (`curate.text.hashing_embeddings`, as the
diversity filter), no model pass, for quick or model-free runs. As in the repo, a row chosen as an
anchor is also scored against itself (at most 1/K of its GS).

Cost. Scoring is N*K anchor passes; what is left after the tricks below is the anchor tokens
themselves, which must be recomputed for every candidate because they attend to it:
- the candidate is decoded once and its KV cache reused for all K anchors;
- logits (the vocabulary projection) only at rows that predict anchor-response tokens, none at the
  candidate, the anchor query or the response's last token (`LlamaCppScorer.target_logprobs`);
- `parallel` anchors per decode as sequences sharing the candidate's KV cells (measured no faster on
  a 2-core CPU; kept for machines where bigger batches pay);
- `early_stop`: stop a candidate once its side of the threshold is settled, scoring the shortest
  anchors first. The decision is the one exact scoring gives; the score is then an interval,
  stored as `_low` / `_high`.
bench/bench_nuggets.py compares this with scoring every pair from scratch. The tricks are
llama.cpp's (`scorer: llama_cpp`, the default); with `transformers` or `vllm` each (candidate,
anchor) pair is one full sequence in a batch, the candidate recomputed for every anchor, and with
`early_stop` `parallel` pairs go per batch. `embedding: model` needs a scorer with hidden states
(llama_cpp, transformers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.llm.scorers import scorer_class
from curate.records import message_text
from curate.steps import BATCHES, FRAME, RecipePath, reasons
from curate.text import hashing_embeddings
from filters.perplexity import LikelihoodFilter

log = logging.getLogger(__name__)

Parts = tuple[str, str, str]  # (instruction, input, output)
Pair = tuple[list[int], list[int]]  # (query ids, response ids)


# ------------------------------------------------------------------------------------------------
# Template


def render_query(instruction: str, input: str = "") -> str:
    """The repo's query: "Instruction:\\n...\\n[Input:\\n...\\n]Response:\\n"."""
    text = f"Instruction:\n{instruction.strip()}\n"
    if input and input.strip():
        text += f"Input:\n{input.strip()}\n"
    return text + "Response:\n"


def render(instruction: str, input: str, output: str) -> str:
    """A whole example, the way a candidate is shown as a demonstration."""
    return render_query(instruction, input) + output.strip()


def record_parts(df: pl.DataFrame) -> list[Parts]:
    """(instruction, input, output) of each record: the non-assistant turns, "", the last answer."""
    prompts = message_text(df, "prompt").to_list()
    responses = message_text(df, "response").to_list()
    return [(p or "", "", r or "") for p, r in zip(prompts, responses)]


# ------------------------------------------------------------------------------------------------
# Scoring


def prepare_anchors(scorer, anchors: Sequence[Parts], max_anchor_tokens: int = 200) -> list[Pair]:
    """Token ids of each anchor's query and response; the response is cut so that both fit in
    `max_anchor_tokens` (at least one response token is kept)."""
    pairs = []
    for ins, inp, out in anchors:
        q = scorer.tokenize(render_query(ins, inp))
        a = scorer.tokenize(out.strip())
        pairs.append((q, a[: max(1, max_anchor_tokens - len(q))]))
    return pairs


def prepare_candidates(
    scorer, candidates: Sequence[Parts], separator: str = "\n\n", max_candidate_tokens: int = 512
) -> list[list[int]]:
    """Token ids of each candidate demonstration, cut to `max_candidate_tokens`, then the separator."""
    sep = scorer.tokenize(separator)
    return [scorer.tokenize(render(*c))[:max_candidate_tokens] + sep for c in candidates]


def wins_needed(threshold: float, k: int) -> int:
    """Fewest wins W with W/k > threshold (the comparison `decide` makes); k + 1 if none."""
    return next((w for w in range(k + 1) if w / k > threshold), k + 1)


@dataclass
class GoldenScores:
    """Per-candidate results. With early stopping `evaluated` may be below K and the golden score
    is known to lie in [low, high]; without it, low == high == score == GS."""

    wins: np.ndarray  # (N,) anchors helped
    evaluated: np.ndarray  # (N,) anchors scored
    num_anchors: int  # K
    one_shot: np.ndarray  # (N, K) l(A_k | c_i + Q_k), nan where not scored
    zero_shot: np.ndarray  # (K,) l(A_k | Q_k)

    @property
    def score(self) -> np.ndarray:
        """Win rate over the anchors scored: GS when all were (with early stopping it still lies on
        the decided side of the threshold)."""
        return self.wins / np.maximum(self.evaluated, 1)

    @property
    def low(self) -> np.ndarray:
        return self.wins / self.num_anchors

    @property
    def high(self) -> np.ndarray:
        return (self.wins + self.num_anchors - self.evaluated) / self.num_anchors


def zero_shot(scorer, anchors: Sequence[Pair]) -> np.ndarray:
    """l(A_k | Q_k) for each anchor: computed once per job."""
    return np.array([lp.sum() for lp in scorer.score_ids_after_prefix([], anchors)])


def golden_scores(
    scorer,
    prefixes: Sequence[Sequence[int]],
    anchors: Sequence[Pair],
    *,
    stop_at: float | None = None,
    parallel: int = 1,
    zero: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GoldenScores:
    """Golden scores of candidate `prefixes` (from `prepare_candidates`) against `anchors` (from
    `prepare_anchors`). `stop_at`: a threshold; stop each candidate once GS > stop_at or
    GS <= stop_at is certain (early stopping). `zero`: the anchors' `zero_shot`, if already known
    (scoring in shards). The fast route: see the module docstring."""
    k = len(anchors)
    zero = zero_shot(scorer, anchors) if zero is None else zero
    one = np.full((len(prefixes), k), np.nan)
    need = wins_needed(stop_at, k) if stop_at is not None else None
    # With early stopping the rule counts anchors, so score the cheapest first: any order gives the
    # same decision, and this one stops after the fewest tokens.
    order = np.arange(k)
    if need is not None:
        order = np.argsort([len(q) + len(a) for q, a in anchors], kind="stable")
    queue = [anchors[j] for j in order]

    def settled(done: list[np.ndarray]) -> bool:
        wins = sum(float(lp.sum()) > zero[order[j]] for j, lp in enumerate(done))
        return wins >= need or wins + (k - len(done)) < need

    for i, prefix in enumerate(prefixes):
        done = scorer.score_ids_after_prefix(
            prefix, queue, parallel=parallel, stop=settled if need is not None else None
        )
        one[i, order[: len(done)]] = [lp.sum() for lp in done]
        if progress:
            progress(i + 1, len(prefixes))
    return _result(one, zero)


def golden_scores_naive(
    scorer, prefixes: Sequence[Sequence[int]], anchors: Sequence[Pair], zero: np.ndarray | None = None
) -> GoldenScores:
    """Reference: every (candidate, anchor) pair scored from scratch with logits at every position,
    the zero-shot term once per anchor. Slow; for tests and the benchmark."""
    if zero is None:
        zero = np.array([scorer.score_ids(q, a).sum() for q, a in anchors])
    one = np.array([[scorer.score_ids(list(p) + q, a).sum() for q, a in anchors] for p in prefixes])
    return _result(one.reshape(len(prefixes), len(anchors)), zero)


def _result(one: np.ndarray, zero: np.ndarray) -> GoldenScores:
    evaluated = (~np.isnan(one)).sum(axis=1)
    wins = (np.nan_to_num(one, nan=-np.inf) > zero[None, :]).sum(axis=1)  # strict >, as the repo
    return GoldenScores(wins, evaluated, len(zero), one, zero)


# ------------------------------------------------------------------------------------------------
# Anchors from the pool


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns the (k, d) centroids."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64)
    sq = (x * x).sum(axis=1)
    centers = [x[rng.integers(len(x))]]
    d2 = np.maximum(sq - 2 * x @ centers[0] + centers[0] @ centers[0], 0)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        c = x[rng.choice(len(x), p=probs)]
        centers.append(c)
        d2 = np.minimum(d2, np.maximum(sq - 2 * x @ c + c @ c, 0))
    c = np.array(centers)
    labels = None
    for _ in range(iters):
        dist = sq[:, None] - 2 * x @ c.T + (c * c).sum(axis=1)[None, :]
        new = dist.argmin(axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            # An empty cluster takes the point farthest from its centroid.
            c[j] = members.mean(axis=0) if len(members) else x[dist[np.arange(len(x)), labels].argmax()]
    return c


def representatives(x: np.ndarray, k: int, seed: int = 0, eligible: np.ndarray | None = None) -> list[int]:
    """Indices of k distinct rows: for each k-means centroid, the nearest eligible row not taken yet
    (NUGGETS' anchors). With k >= the number of eligible rows, all of them."""
    idx = np.flatnonzero(eligible) if eligible is not None else np.arange(len(x))
    if k >= len(idx):
        return idx.tolist()
    pts = x[idx].astype(np.float64)
    c = kmeans(pts, k, seed)
    dist = (pts * pts).sum(axis=1)[:, None] - 2 * pts @ c.T + (c * c).sum(axis=1)[None, :]
    taken: set[int] = set()
    for j in range(k):
        for r in np.argsort(dist[:, j], kind="stable"):
            if int(r) not in taken:
                taken.add(int(r))
                break
    return sorted(int(idx[r]) for r in taken)


# ------------------------------------------------------------------------------------------------
# The filter


class Nuggets(LikelihoodFilter):
    """NUGGETS golden score of each row against K anchors; keep rows with GS > threshold (the
    repo's selection; its best subsets kept roughly 10-30% of Alpaca) or the top `fraction`.

    Scores: `score_nuggets` (GS; with early stopping the win rate over the anchors scored),
    `_low` / `_high` (GS bounds, equal without early stopping) and `_anchors` (anchors scored).
    """

    kind: ClassVar[str] = "nuggets"
    code_version: ClassVar[int] = 1
    decide_settings: ClassVar[tuple[str, ...]] = ("threshold", "fraction")

    anchors: RecipePath | None = None  # anchor file; None: k-means representatives of the data
    num_anchors: int = Field(100, ge=1)
    embedding: Literal["model", "hashing"] = "model"  # vectors for k-means
    seed: int = 0
    threshold: float | None = Field(0.5, ge=0, le=1)  # keep GS > threshold
    fraction: float | None = Field(None, gt=0, le=1)  # or keep the top fraction by GS
    early_stop: bool = False  # stop a row once its side of `threshold` is settled
    parallel: int = Field(1, ge=1)  # anchors per decode (transformers, vllm: per batch when early_stop)
    separator: str = "\n\n"  # between the candidate and the anchor; the repo used ""
    max_anchor_tokens: int = Field(200, ge=2)
    max_candidate_tokens: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _one_rule(self):
        if self.fraction is not None and "threshold" in self.model_fields_set and self.threshold is not None:
            raise ValueError("nuggets: give threshold or fraction, not both")
        if self.fraction is None and self.threshold is None:
            raise ValueError("nuggets: give threshold or fraction")
        if self.early_stop and self.fraction is not None:
            raise ValueError("nuggets: early_stop needs a threshold (a top fraction needs every score)")
        if self.anchors is None and self.embedding == "model" and not scorer_class(self.scorer).can_embed:
            raise ValueError(f"nuggets: the {self.scorer} scorer cannot embed rows to choose anchors; "
                             "set embedding: hashing, or give an anchors file")
        return self

    def score_columns(self) -> list[str]:
        p = self.column
        return [p, f"{p}_low", f"{p}_high", f"{p}_anchors"]

    @property
    def row_local(self) -> bool:  # type: ignore[override]
        """With an anchor file each row is scored on its own; without, the anchors come from the rows."""
        return self.anchors is not None

    @property
    def execution(self) -> str:  # type: ignore[override]
        """Batch by batch with an anchor file and a threshold; k-means anchors and a top fraction
        need every row."""
        return BATCHES if self.row_local and self.fraction is None else FRAME

    def scoring_settings(self) -> dict:
        """Early stopping stops each row at `threshold`, so the threshold then shapes the scores."""
        return {**super().scoring_settings(), **({"threshold": self.threshold} if self.early_stop else {})}

    def anchor_parts(self, df: pl.DataFrame, scorer=None) -> list[Parts]:
        """The anchors: the file's rows, or k-means representatives of `df`."""
        if self.anchors:
            from curate.io import read_records

            return record_parts(read_records(self.anchors))
        parts = record_parts(df)
        log.info("nuggets: choosing %d anchors among %d rows", self.num_anchors, len(parts))
        if self.embedding == "model":
            scorer = scorer or self.load_scorer()
            vectors = scorer.embed([render(*p) for p in parts])
        else:
            vectors = hashing_embeddings([render(*p) for p in parts])
        eligible = None
        if scorer is not None:  # a query that fills the anchor budget alone leaves nothing to score
            budget = self.max_anchor_tokens
            eligible = np.array([len(scorer.tokenize(render_query(i, n))) < budget for i, n, _ in parts])
            eligible = eligible if eligible.any() else None
        return [parts[r] for r in representatives(vectors, self.num_anchors, self.seed, eligible)]

    def compute_scores(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.column
        if df.is_empty():
            return df.with_columns(
                [pl.lit(None, dtype=pl.Float64).alias(c) for c in self.score_columns()[:3]]
                + [pl.lit(None, dtype=pl.Int64).alias(f"{p}_anchors")]
            )
        scorer = self.load_scorer()
        anchors = prepare_anchors(scorer, self.anchor_parts(df, scorer), self.max_anchor_tokens)
        if not anchors:
            raise ValueError(f"nuggets: the anchor file {self.anchors} has no rows")
        prefixes = prepare_candidates(scorer, record_parts(df), self.separator, self.max_candidate_tokens)
        res = golden_scores(
            scorer,
            prefixes,
            anchors,
            stop_at=self.threshold if self.early_stop else None,
            parallel=self.parallel,
            progress=_Progress(),
        )
        return df.with_columns(
            pl.Series(p, res.score, dtype=pl.Float64),
            pl.Series(f"{p}_low", res.low, dtype=pl.Float64),
            pl.Series(f"{p}_high", res.high, dtype=pl.Float64),
            pl.Series(f"{p}_anchors", res.evaluated, dtype=pl.Int64),
        )

    def thresholds(self) -> dict[str, list[float]]:
        """The GS threshold, drawn on the report's histogram (none with a top fraction)."""
        return {self.column: [self.threshold]} if self.fraction is None and self.threshold is not None else {}

    def decide(self, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        p = self.column
        low, high = df[f"{p}_low"], df[f"{p}_high"]
        if self.fraction is not None:
            if (low != high).any():
                raise ValueError(f"{p}: rows scored with early stopping have no exact GS to rank; rescore")
            # Ties at the cut (GS moves in steps of 1/K) go to the earlier row, so exactly n_keep stay.
            order = np.argsort(-df[p].to_numpy(), kind="stable")
            mask = np.zeros(len(df), dtype=bool)
            mask[order[: math.ceil(self.fraction * len(df))]] = True
            return reasons(pl.Series(mask), "below the top fraction of golden scores")
        t = self.threshold
        unsettled = ((low <= t) & (high > t)).sum()
        if unsettled:
            raise ValueError(
                f"{p}: {unsettled} rows were scored with early stopping at another threshold and may lie "
                f"on either side of {t}; rescore them (early_stop=False or threshold={t})"
            )
        return reasons(low > t, "golden score at or below threshold")

    def explain(self, df: pl.DataFrame) -> pl.Series:
        out = []
        cols = [df[c].to_list() for c in self.score_columns()]
        for s, lo, hi, n in zip(*cols):
            if s is None:
                out.append(None)
            elif lo == hi:
                out.append(f"GS {s:.3f} over {n} anchors")
            else:
                out.append(f"GS in [{lo:.3f}, {hi:.3f}] (early stop after {n} anchors)")
        return pl.Series("detail", out, dtype=pl.String)


class _Progress:
    """Logs rows done, rate and ETA every 30 s (scoring runs for hours on a CPU)."""

    def __init__(self, every: float = 30.0):
        self.start = self.last = time.monotonic()
        self.every = every

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = (now - self.start) / done
        log.info("nuggets: %d/%d rows, %.1f s/row, ETA %.0f s", done, total, rate, rate * (total - done))
