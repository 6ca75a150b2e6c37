"""Near-duplicates and decontamination in Chinese, Japanese and Thai: this working tree against a
base revision (before character tokens for scripts without spaces), in one process.

    python bench/bench_multilingual.py [--base REV] [--seed 0] [--copies 200]

Data: the prompt-like sentences in bench/data/multilingual_prompts.json (40 Chinese, 40 Japanese,
30 Thai, written for this bench). Truth is by construction, not by any tokeniser:

- Dedup. Each base prompt is 1 sentence ("short") or 3 sentences ("long"; two long prompts share
  at most one sentence, so prompts on the same template or topic are among the negatives). Each
  base gets 3 edited copies: two adjacent characters replaced; one digit changed (or one
  character replaced when the prompt has no digit); one character inserted and another deleted.
  A base and its copies are a group; the true pairs are the pairs within a group, every other
  pair is unrelated. Reported per language, length and threshold: pair recall and precision of
  `dedup.cluster` (two rows in one cluster = a found pair), for the base revision and this tree,
  and for this tree's shingles with exact Jaccard, clustered the same way (what MinHash estimates).
- Decontamination. The sentences are split in two halves; half A is the eval set (one item per
  sentence, a `question` column). Training rows: each A sentence with one edit (a changed digit,
  else two replaced characters), and each B sentence with the same kinds of edit. Recall = A rows
  flagged; false flags = B rows flagged (B shares no sentence with A; its rows share templates).
- Diversity: mean hashing-embedding cosine of true pairs and of unrelated pairs.
- Speed: `dedup.cluster` on the corpus repeated `--copies` times (a copy number added), both
  revisions alternating; the English T0 figures are bench/bench_minhash.py's and
  bench/bench_dedup_revisions.py's.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import revisions  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "multilingual_prompts.json"
MODULES = ("curate.text", "curate.records", "filters.dedup", "filters.decontaminate", "filters.diversity")
SCRIPT = {
    "zh": re.compile(r"[\u4e00-\u9fff]"),
    "ja": re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]"),
    "th": re.compile(r"[\u0e01-\u0e2e]"),  # Thai consonants (a replacement never lands on a mark)
}
THRESHOLDS = (0.3, 0.5, 0.7, 0.8)


def long_bases(sentences: list[str], rng: np.random.Generator, rounds: int = 2) -> list[str]:
    """3-sentence prompts, each pair sharing at most one sentence."""
    chosen: list[tuple[int, ...]] = []
    for _ in range(rounds):
        order = rng.permutation(len(sentences))
        for i in range(0, len(order) - 2, 3):
            triple = tuple(sorted(order[i : i + 3].tolist()))
            if all(len(set(triple) & set(c)) <= 1 for c in chosen):
                chosen.append(triple)
    return ["".join(sentences[j] for j in triple) for triple in chosen]


def positions(text: str, lang: str) -> list[int]:
    return [m.start() for m in SCRIPT[lang].finditer(text)]


def replace_chars(text: str, lang: str, pool: list[str], rng, k: int) -> str:
    """Replace k adjacent script characters with others from the language's pool."""
    pos = [p for p in positions(text, lang) if all(p + j in set(positions(text, lang)) for j in range(k))]
    p = int(rng.choice(pos))
    new = "".join(rng.choice([c for c in pool if c != text[p + j]]) for j in range(k))
    return text[:p] + new + text[p + k :]


def change_digit(text: str, lang: str, pool, rng) -> str:
    digits = [m.start() for m in re.finditer(r"\d", text)]
    if not digits:
        return replace_chars(text, lang, pool, rng, 1)
    p = int(rng.choice(digits))
    return text[:p] + str((int(text[p]) + 1 + int(rng.integers(8))) % 10) + text[p + 1 :]


def insert_delete(text: str, lang: str, pool, rng) -> str:
    pos = positions(text, lang)
    a, b = sorted(rng.choice(pos, 2, replace=False).tolist())
    return text[:a] + rng.choice(pool) + text[a:b] + text[b + 1 :]  # insert before a, delete b


def edits(text: str, lang: str, pool, rng) -> list[str]:
    return [replace_chars(text, lang, pool, rng, 2), change_digit(text, lang, pool, rng),
            insert_delete(text, lang, pool, rng)]


def build(data: dict, seed: int):
    """Rows of (text, lang, length, group) for dedup; (text, lang, contaminated) rows and eval items
    for decontamination."""
    rng = np.random.default_rng(seed)
    rows = []
    group = 0
    for lang in ("zh", "ja", "th"):
        sents = data[lang]
        pool = sorted({c for s in sents for c in SCRIPT[lang].findall(s)})
        for length, bases in (("short", sents), ("long", long_bases(sents, rng))):
            for base in bases:
                for text in [base, *edits(base, lang, pool, rng)]:
                    rows.append((text, lang, length, group))
                group += 1
    dedup = pl.DataFrame(rows, schema=["text", "lang", "length", "group"], orient="row")
    evals, train = [], []
    for lang in ("zh", "ja", "th"):
        sents = data[lang]
        pool = sorted({c for s in sents for c in SCRIPT[lang].findall(s)})
        half = len(sents) // 2
        for i, s in enumerate(sents):
            in_eval = i < half
            if in_eval:
                evals.append({"question": s})
            edited = change_digit(s, lang, pool, rng) if re.search(r"\d", s) else replace_chars(s, lang, pool, rng, 2)
            train.append((edited, lang, in_eval))
    decon = pl.DataFrame(train, schema=["text", "lang", "contaminated"], orient="row")
    return dedup, decon, evals


def pair_sets(labels: np.ndarray, idx: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (i < j) of rows in idx with the same label."""
    out = set()
    lab = labels[idx]
    for value in np.unique(lab):
        members = idx[lab == value]
        out.update(itertools.combinations(members.tolist(), 2))
    return out


def exact_labels(mods, texts: list[str], t: float) -> np.ndarray:
    """Cluster labels when the pairs with exact shingle Jaccard >= t are clustered over the whole
    corpus (as `cluster` clusters its verified candidates)."""
    sets = [mods["curate.text"].shingles(x, 5) for x in texts]
    edges = np.array([(a, b) for a, b in itertools.combinations(range(len(texts)), 2)
                      if len(sets[a] & sets[b]) >= (t - 1e-9) * len(sets[a] | sets[b])], np.int64).reshape(-1, 2)
    return mods["filters.dedup"].connected_components(len(texts), edges[:, 1], edges[:, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="c818b1e", help="revision before character tokens (default: issue 11 part 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copies", type=int, default=200, help="corpus repeats for the speed run")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    data = json.loads(DATA.read_text(encoding="utf-8"))
    dedup, decon, evals = build(data, args.seed)
    mods = {"base": revisions.load(args.base, *MODULES), "here": revisions.load(None, *MODULES)}
    texts = dedup["text"].to_list()
    groups = dedup["group"].to_numpy()
    print(f"{len(dedup)} prompts in {len(np.unique(groups))} groups (base + 3 edited copies); "
          f"base revision {args.base}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")

    # --- dedup --------------------------------------------------------------------------------
    labels = {(name, t): m["filters.dedup"].cluster(texts, threshold=t) for name, m in mods.items() for t in THRESHOLDS}
    labels.update({("exact", t): exact_labels(mods["here"], texts, t) for t in THRESHOLDS})
    print()
    print(f"{'lang':4} {'length':6} {'chars':>5} {'pairs':>5} {'t':>4} | {'before R':>8} {'P':>5} | "
          f"{'after R':>7} {'P':>5} | {'exact J R':>9} {'P':>5}")
    for (lang, length), sub in dedup.with_row_index("i").group_by(["lang", "length"], maintain_order=True):
        idx = sub["i"].to_numpy().astype(np.int64)
        truth = pair_sets(groups, idx)
        chars = int(sub["text"].str.len_chars().median())
        for t in THRESHOLDS:
            cells = []
            for found in [pair_sets(labels[(name, t)], idx) for name in ("base", "here", "exact")]:
                r = len(found & truth) / len(truth)
                p = len(found & truth) / len(found) if found else float("nan")
                cells.append(f"{r:.3f} {p:5.3f}")
            print(f"{lang:4} {length:6} {chars:5d} {len(truth):5d} {t:4.1f} | {cells[0]:>14} | {cells[1]:>13} | {cells[2]:>15}")
    print("  R = pair recall, P = pair precision against the groups; chars = median prompt length;")
    print("  exact J = this tree's shingles, pairs with exact Jaccard >= t, clustered (what MinHash estimates);")
    print("  clusters span the whole corpus, so a long prompt holding a short one's sentence can join their groups.")

    # --- decontamination ----------------------------------------------------------------------
    print()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "multilingual_eval.jsonl"
        path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in evals), encoding="utf-8")
        frame = mods["here"]["curate.records"].make_frame(
            [{"messages": [{"role": "user", "content": x}, {"role": "assistant", "content": "ok"}]} for x in decon["text"]])
        print(f"decontamination, 13-grams (a CJK/Thai character counts as a word), {len(evals)} eval items:")
        print(f"{'lang':4} | {'before recall':>13} {'false flags':>11} | {'after recall':>12} {'false flags':>11}")
        flagged = {}
        for name, m in mods.items():
            f = m["filters.decontaminate"].Decontaminate(eval_sets=[str(path)], field="prompt")
            mask, _ = f.keep(f.score(frame))
            flagged[name] = ~mask.to_numpy()
        for lang in ("zh", "ja", "th"):
            sel = (decon["lang"] == lang).to_numpy()
            pos = sel & decon["contaminated"].to_numpy()
            neg = sel & ~decon["contaminated"].to_numpy()
            cells = [f"{flagged[n][pos].sum():>6}/{pos.sum():<6} {flagged[n][neg].sum():>5}/{neg.sum():<5}" for n in ("base", "here")]
            print(f"{lang:4} | {cells[0]:>25} | {cells[1]:>24}")

    # --- diversity embeddings ----------------------------------------------------------------
    print()
    rng = np.random.default_rng(args.seed)
    true_pairs = np.array(sorted(pair_sets(groups, np.arange(len(texts)))))
    a, b = rng.integers(len(texts), size=(2, 4 * len(true_pairs)))
    other = np.stack([a, b], 1)[groups[a] != groups[b]]
    for name, m in mods.items():
        e = m["filters.diversity"].hashing_embeddings(texts)
        cos_t = (e[true_pairs[:, 0]] * e[true_pairs[:, 1]]).sum(1)
        cos_o = (e[other[:, 0]] * e[other[:, 1]]).sum(1)
        print(f"diversity hashing embeddings, {name}: mean cosine of true pairs {cos_t.mean():.3f}, "
              f"of unrelated pairs {cos_o.mean():.3f}")

    # --- speed ------------------------------------------------------------------------------
    print()
    rng = np.random.default_rng(args.seed + 1)
    big = [f"{x}{i}" if rng.random() < 0.5 else f"{i}{x}" for i in range(args.copies) for x in texts]
    times = {name: [] for name in mods}
    for name, m in mods.items():
        m["filters.dedup"].cluster(big[:2000])  # warm-up
    for i in range(args.repeat):
        for name in (["base", "here"] if i % 2 == 0 else ["here", "base"]):
            gc.collect()
            t0 = time.perf_counter()
            mods[name]["filters.dedup"].cluster(big)
            times[name].append(time.perf_counter() - t0)
    best = {n: min(v) for n, v in times.items()}
    mb = sum(len(x.encode()) for x in big) / 1e6
    print(f"speed, dedup.cluster on {len(big):,} CJK/Thai prompts ({mb:.1f} MB), best of {args.repeat}: "
          + ", ".join(f"{n} {best[n]:.2f} s ({len(big) / best[n]:,.0f} texts/s, {mb / best[n]:.1f} MB/s)" for n in best)
          + f"; after / before time {best['here'] / best['base']:.2f}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
