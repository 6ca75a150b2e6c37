"""The batch contract of steps (curate.steps: BATCHES, STATE, FRAME): a STATE step run batch by
batch through its compact state gives what it gives on the whole frame in a notebook, whatever the
batches; and what each kind of step declares."""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.io import read_records
from curate.mix import Mix
from curate.records import FrameDigest, frame_digest, make_frame
from curate.states import PolarsStates, Resolved
from curate.steps import BATCHES, FRAME, STATE, Context
from filters import Decontaminate, Diversity, ExactDedup, Heuristics, IFD, MinHashDedup, Nuggets, Perplexity
from tests.conftest import SHARED_DATA


class Partitioned(PolarsStates):
    """The group-bys the way the Ray engine may do them: integer keys split into 3 partitions by
    their value modulo 3 (each group whole in one), each partition on its own, the results in
    reverse order."""

    def groups(self, keys, fn, columns=()):
        schema = self.schema
        done = [self.group(key, fn, columns, part, n) for key in keys
                for n in [3 if schema[key].is_integer() else 1] for part in range(n)]
        return pl.concat(done[::-1])


def in_batches(step, df: pl.DataFrame, sizes: list[int], ctx: Context, answer=PolarsStates):
    """Run a STATE step the way an engine does: state per batch, one resolve over the state of
    all of them (reading rows back across batches, answering its group-bys with `answer`), apply
    per batch. Returns (kept, rejected, stats, every row's state)."""
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == df.height
    batches = [df.slice(int(lo), int(hi - lo)) for lo, hi in zip(bounds, bounds[1:])]
    states = [step.state(b) for b in batches]
    assert all(s.height == b.height for s, b in zip(states, batches))
    seen = []

    def fetch(rows, columns):
        rows = np.asarray(rows, np.int64)
        seen.append((tuple(columns), len(rows)))
        if not len(rows):
            yield batches[0].select([c for c in columns if c in df.columns]).head(0).with_columns(
                pl.Series("row", [], dtype=pl.Int64)).select("row", *[c for c in columns if c in df.columns])
            return
        for i, b in enumerate(batches):
            lo, hi = bounds[i], bounds[i + 1]
            mine = rows[(rows >= lo) & (rows < hi)]
            if len(mine):
                have = [c for c in columns if c in b.columns]
                yield b.select(have)[mine - lo].with_columns(pl.Series("row", mine)).select("row", *have)

    resolved = step.resolve(answer(pl.concat([s.lazy() for s in states])), ctx, fetch)
    assert isinstance(resolved, Resolved) and resolved.rows["row"].is_sorted()
    out = [step.apply(b, np.arange(lo, hi), resolved.between(int(lo), int(hi)))
           for b, lo, hi in zip(batches, bounds, bounds[1:])]
    kept = pl.concat([o.kept for o in out])
    rejected = pl.concat([o.rejected for o in out])
    return kept, rejected, resolved.stats, pl.concat(states), seen


@pytest.fixture(scope="module")
def t0():
    path = SHARED_DATA / "dedup_t0_templates" / "t0_train_50k_per_template.jsonl.gz"
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    rows = read_records(path, limit=12000).sample(3700, seed=1)  # several templates, near duplicates among them
    return pl.concat([rows, rows.sample(300, seed=2)]).sample(fraction=1.0, shuffle=True, seed=3)  # and exact copies


@pytest.mark.parametrize("step", [ExactDedup(), ExactDedup(normalize=False, field="prompt"),
                                  MinHashDedup(threshold=0.7, ngram=3), MinHashDedup(), MinHashDedup(verify=False)],
                         ids=["exact", "exact-raw-prompt", "minhash-0.7", "minhash", "minhash-unverified"])
def test_dedup_in_batches_equals_the_whole_frame(t0, step):
    """Real templated prompts (many duplicates and near duplicates across batches): kept rows,
    rejects with reasons and details, every score column and the fingerprint are those of
    `split` on the whole frame, and the state holds no text."""
    kept, rejected = step.split(t0)
    for sizes in ([t0.height], [1000, 1000, 1000, 1000], [1, 2499, 1500]):
        got_kept, got_rejected, _, state, fetched = in_batches(step, t0, sizes, Context())
        assert_frame_equal(got_kept, kept)
        assert_frame_equal(got_rejected, rejected.drop("filter"))
        assert all(t.is_numeric() for t in state.schema.values())  # hashes and keys, no text
    assert rejected.height > 50 and kept.height > 2000
    texts = [n for columns, n in fetched if "messages" in columns and n]
    if isinstance(step, MinHashDedup):  # texts read back once, for the rows of candidate pairs only
        assert len(texts) == 1 and 0 < texts[0] < t0.height * 0.9, texts
    else:
        assert texts == []


@pytest.mark.parametrize("step", [ExactDedup(), MinHashDedup(threshold=0.7, ngram=3)], ids=["exact", "minhash-0.7"])
def test_dedup_group_bys_in_partitions_in_any_order(t0, step):
    """Each group-by function sees its groups whole but only some of them, and its results come
    back in no particular order: the same rows, scores and reasons."""
    kept, rejected = step.split(t0)
    got_kept, got_rejected, _, _, _ = in_batches(step, t0, [2000, 2000], Context(), answer=Partitioned)
    assert_frame_equal(got_kept, kept)
    assert_frame_equal(got_rejected, rejected.drop("filter"))


def test_fingerprint_of_a_frame_in_pieces():
    df = make_frame([{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * i}]}
                     for i in range(50)])
    pieces = FrameDigest(df.schema)
    for lo in range(0, 50, 7):
        pieces.update(df.slice(lo, 7))
    assert pieces.hexdigest() == frame_digest(df)
    assert FrameDigest(df.schema).update_hashes(df.hash_rows().to_numpy()).hexdigest() == frame_digest(df)


@pytest.mark.parametrize("unit", ["rows", "tokens"])
def test_mix_in_batches_equals_the_whole_frame(unit):
    rows = [{"messages": [{"role": "user", "content": f"question {i} " * (i % 5 + 1)},
                          {"role": "assistant", "content": "answer " * (i % 7 + 1)}], "source": s}
            for i, s in enumerate(["a", "b", "c", "a", "a", "b", "d"] * 30)]
    df = make_frame(rows)
    step = Mix(weights={"a": 2, "b": 1, "c": 1}, unit=unit)
    ctx = Context(seed=3)
    whole = step.run(df, ctx)
    kept, rejected, stats, state, _ = in_batches(step, df, [50, 50, 50, 60], ctx)
    assert_frame_equal(kept, whole.kept)
    assert_frame_equal(rejected, whole.rejected)
    assert stats == whole.stats and set(state.columns) == {"key", "size"}  # the value of `by` (source by default), the size
    in_parts = in_batches(step, df, [100, 110], ctx, answer=Partitioned)  # the results in another order
    assert_frame_equal(in_parts[0], whole.kept)
    assert_frame_equal(in_parts[1], whole.rejected)
    assert in_parts[2] == whole.stats
    assert set(rejected["reason"]) == {"over mixture quota", "source not in the mixture"}


def test_each_step_declares_how_it_runs():
    assert Heuristics().execution == BATCHES and not Heuristics().is_global
    assert Decontaminate(eval_sets=["x.jsonl"]).execution == BATCHES
    assert ExactDedup().execution == MinHashDedup().execution == Mix(weights={"a": 1}).execution == STATE
    assert Diversity().execution == IFD(fraction=0.5).execution == FRAME
    assert Perplexity(max=50).execution == BATCHES and Perplexity(max_percentile=80).execution == FRAME
    assert Nuggets(anchors="a.jsonl").execution == BATCHES and Nuggets().execution == FRAME
    assert Nuggets(anchors="a.jsonl", fraction=0.5).execution == FRAME
