"""What the staleness checks cost: score fingerprints and the step hash, against the work they guard.

    python bench/bench_fingerprint.py [--limit N] [--repeat 3]

Data: the 55k T0 prompts in ../shared/data/dedup_t0_templates as records (prompt, completion as the
answer). In one process, per filter: `compute_scores` alone (the baseline: what scoring costs),
`score` (the same plus writing the fingerprint column), and on frames it scored itself `decide`,
`split` (a re-threshold: the fingerprint check, `decide`, the split) and the check alone (`owned`),
as a share of scoring. For the engine: hashing every value of
the input frame (`frame_digest`, the start of the step hash chain) against reading the input, and
hashing the embedded model file. Ratios > 1 are the overhead factor; the absolute times move with
the machine's load, so the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.io import to_records  # noqa: E402
from curate.records import frame_digest  # noqa: E402
from curate.steps import embedded_model_file, file_digest  # noqa: E402
from filters.dedup import ExactDedup, MinHashDedup  # noqa: E402
from filters.heuristics import Heuristics  # noqa: E402

from bench_minhash import best_of  # noqa: E402  (this folder is on sys.path when run as a script)

DATA = ROOT.parent / "shared" / "data" / "dedup_t0_templates" / "t0_train_50k_per_template.jsonl.gz"
if not DATA.exists():
    DATA = Path("/work/shared/data/dedup_t0_templates/t0_train_50k_per_template.jsonl.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    raw = pl.read_ndjson(DATA, infer_schema_length=1000)
    raw = raw.head(args.limit) if args.limit else raw
    t_read, df = best_of(lambda: to_records(raw.select("prompt", "completion"), prompt="prompt", response="completion"),
                         args.repeat)
    print(f"{df.height} rows")
    print(f"{'filter':<14} {'compute s':>10} {'score s':>8} {'/compute':>9} {'decide s':>9} {'split s':>8} "
          f"{'check s':>8} {'/compute':>9}")
    for f in (Heuristics(), ExactDedup(), MinHashDedup()):
        t_compute, _ = best_of(lambda: f.compute_scores(df), args.repeat)
        t_score, scored = best_of(lambda: f.score(df), args.repeat)
        t_decide, _ = best_of(lambda: f.decide(scored), args.repeat)
        t_split, _ = best_of(lambda: f.split(scored), args.repeat)  # a re-threshold: check, decide, split
        t_check, _ = best_of(lambda: f.owned(scored), args.repeat)
        print(f"{f.kind:<14} {t_compute:>10.3f} {t_score:>8.3f} {t_score / t_compute:>9.2f} {t_decide:>9.3f} "
              f"{t_split:>8.3f} {t_check:>8.3f} {t_check / t_compute:>9.3f}")
    t_hash, _ = best_of(lambda: frame_digest(df), args.repeat)
    print(f"inputs: to_records {t_read:.3f} s, frame_digest {t_hash:.3f} s ({t_hash / t_read:.2f} of reading)")
    model = embedded_model_file()
    t0 = time.perf_counter()
    file_digest(model)
    first = time.perf_counter() - t0
    t_again, _ = best_of(lambda: file_digest(model), args.repeat)
    size = Path(model).stat().st_size / 1e6
    print(f"embedded model ({size:.0f} MB): first digest {first:.3f} s, memoised {t_again * 1e6:.0f} us")


if __name__ == "__main__":
    main()
