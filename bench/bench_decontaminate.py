"""Decontamination of lightly edited eval items: planted copies caught vs clean rows flagged.

    python bench/bench_decontaminate.py [--eval-items 1000 --seed 0] [--out FILE.json]

Two eval sets, each with planted near-copies hidden among clean training rows:

- MATH (`../shared/data/math_test4500`): `--eval-items` problems that hold a number are drawn
  (seed) and written as the eval set (problem, solution, answer: every field is indexed, as a user
  would index a saved benchmark). Each is planted once, edited by `plant()`; the planted row is the
  edited problem alone (no solution: a copied gold solution would be caught by its own 13-grams and
  flatter the figure). Clean rows: all 7,473 GSM8K train rows (question + answer) and the other
  MATH problems (problem + solution), which never include the drawn originals.
- AlpacaEval (`eval_prompts/alpaca_eval_805.jsonl`, all 805 instructions indexed): every
  instruction holding a number is planted, edited the same way. Clean rows: Cherry Alpaca (3,111)
  and the Alpaca-GPT4 rows of NUGGETS (9,038), instruction + input + output.

`plant()` is deterministic: one number (a run of digits, chosen by a per-item seeded RNG) is
increased by 1, then the first three plain words outside `$...$` / `\\[...\\]` / `[asy]` math are
reworded from the fixed list `SYNONYMS` (a word not in the list gains or loses a final "s").

Each configuration is scored on the same rows: `gpt3` is the 13-gram rule alone (the filter
before issue 9: every 13-gram counts, short items need an exact run), `default` the shipped
settings. Printed per eval set: planted caught (all, and items under 30 words), and clean rows
flagged per clean set. MATH itself holds many problems that differ from another by a few numbers
(templated variants), so each flagged rest-of-MATH row is also measured against the problem it hit:
word-level edit distance between the two problems, set beside the edit distance of the planted
copies (computed here, by dynamic programming, not by the filter); the rest of MATH is also scored
without its near copies by two definitions that do not use the filter (`templated_variants`), and
`lookalike_floor` gives the fewest rest-of-MATH rows any rule that counts word edits must flag to
catch 95% of the planted copies.

Data are non-commercial in part (AlpacaEval, Alpaca): used here only, never copied into the package.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from scipy.sparse import csr_matrix

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.io import read_records, read_table  # noqa: E402
from curate.records import make_frame  # noqa: E402
from filters.decontaminate import Decontaminate  # noqa: E402
from filters.dedup import words  # noqa: E402

DATA = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Fixed rewording list for the first three plain words of a planted item.
SYNONYMS = {
    "the": "this", "a": "one", "an": "one", "is": "was", "are": "were", "what": "which", "find": "determine",
    "let": "suppose", "if": "when", "of": "for", "how": "what", "many": "number of", "in": "within",
    "and": "plus", "compute": "calculate", "for": "with", "be": "become", "has": "contains", "that": "which",
    "two": "a pair of", "given": "provided", "number": "quantity", "positive": "nonnegative", "suppose": "assume",
    "simplify": "reduce", "evaluate": "calculate", "sum": "total", "all": "every", "solve": "resolve",
    "there": "here", "real": "actual", "when": "whenever", "numbers": "values", "right": "correct",
    "to": "toward", "each": "every", "value": "number", "three": "3", "integers": "whole numbers",
    "determine": "find", "express": "write", "with": "having", "have": "possess", "at": "on", "we": "you",
    "on": "upon", "consider": "take", "smallest": "least", "largest": "greatest", "i": "I myself",
    "which": "what", "can": "could", "ways": "manners", "below": "beneath", "my": "our", "you": "one",
    "by": "through", "as": "like", "first": "initial", "one": "a single", "four": "4", "five": "5", "six": "6",
    "write": "compose", "give": "provide", "please": "kindly", "create": "make", "list": "enumerate",
    "explain": "describe", "describe": "explain", "generate": "produce", "make": "create", "me": "us",
}
_MATH = re.compile(r"(\$\$.*?\$\$|\$.*?\$|\\\[.*?\\\]|\\\(.*?\\\)|\[asy\].*?\[/asy\])", re.S)
_WORD = re.compile(r"(?<![A-Za-z0-9\\])[A-Za-z]+(?![A-Za-z0-9])")


def reword(word: str) -> str:
    new = SYNONYMS.get(word.lower())
    if new is None:
        new = word[:-1] if word.lower().endswith("s") and len(word) > 2 else word + "s"
    return new[0].upper() + new[1:] if word[0].isupper() else new


def plant(text: str, key: str, seed: int = 0) -> str | None:
    """The planted edit of one eval text (None when it holds no number): one number + 1, then the
    first three plain words outside math reworded."""
    nums = list(re.finditer(r"\d+", text))
    if not nums:
        return None
    m = nums[random.Random(f"{seed}:{key}").randrange(len(nums))]
    text = text[: m.start()] + str(int(m.group()) + 1) + text[m.end() :]
    parts = _MATH.split(text)  # even indices: prose, odd: math
    left = 3

    def sub(match: re.Match) -> str:
        nonlocal left
        if not left:
            return match.group()
        left -= 1
        return reword(match.group())

    for k in range(0, len(parts), 2):
        parts[k] = _WORD.sub(sub, parts[k])
    return "".join(parts)


def edit_distance(a: list[str], b: list[str]) -> int:
    """Word-level Levenshtein distance (numpy over b, one pass per word of a)."""
    vocab: dict[str, int] = {}
    x = np.array([vocab.setdefault(t, len(vocab)) for t in a], np.int64)
    y = np.array([vocab.setdefault(t, len(vocab)) for t in b], np.int64)
    idx = np.arange(len(y) + 1)
    prev = idx.copy()
    for i, t in enumerate(x, 1):
        tmp = np.empty(len(y) + 1, np.int64)
        tmp[0] = i
        tmp[1:] = np.minimum(prev[:-1] + (y != t), prev[1:] + 1)
        prev = np.minimum.accumulate(tmp - idx) + idx  # the insertion chain along the row
    return int(prev[-1])


def masked(text: str) -> list[str]:
    """The words of a text with every number replaced by one placeholder."""
    return ["#" if w.isdigit() else w for w in words(text)]


def templated_variants(eval_problems: list[str], planted_edits: list[int], problems: list[str]) -> dict:
    """Which of `problems` are near copies of an eval problem by definitions that do not use the
    filter (word lists of whole problems, numbers masked or not):

    - `same_skeleton`: equal to an eval problem once every number is masked (the same problem with
      other numbers);
    - `planted_lookalike`: within as few word edits (numbers unmasked) of an eval problem as that
      problem's planted copy is: a rule that counts word edits cannot catch the planted copy
      without flagging this row.
    """
    skeletons = {tuple(masked(t)) for t in eval_problems}
    same = np.array([tuple(masked(t)) in skeletons for t in problems])
    ev = [words(t) for t in eval_problems]
    rows = [words(t) for t in problems]
    vocab: dict[str, int] = {}

    def incidence(texts: list[list[str]]) -> csr_matrix:  # text x distinct word
        cols = [sorted({vocab.setdefault(w, len(vocab)) for w in ws}) for ws in texts]
        ptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])])
        return csr_matrix((np.ones(ptr[-1]), np.concatenate([np.array(c, np.int64) for c in cols]), ptr))

    E, R = incidence(ev), incidence(rows)
    E.resize(E.shape[0], len(vocab))
    R.resize(R.shape[0], len(vocab))
    shared = (R @ E.T).toarray()  # distinct words shared, row x eval problem
    budget = np.array(planted_edits)
    e_len, r_len = np.array([len(w) for w in ev]), np.array([len(w) for w in rows])
    # Each word edit removes at most one distinct word and changes the length by at most one.
    maybe = (shared >= np.diff(E.indptr) - budget) & (np.abs(r_len[:, None] - e_len[None, :]) <= budget)
    pairs = [(r, i) for r, i in zip(*np.nonzero(maybe)) if edit_distance(ev[i], rows[r]) <= budget[i]]
    lookalike = np.zeros(len(rows), bool)
    lookalike[[r for r, _ in pairs]] = True
    return {"same_skeleton": same, "planted_lookalike": lookalike, "lookalike_pairs": pairs}


def lookalike_floor(pairs: list[tuple[int, int]], n_items: int, caught_share: float) -> int:
    """The fewest clean rows a rule must flag to catch `caught_share` of the planted copies, if it
    catches a planted copy only with every clean row at least as close (word edits) to that eval
    problem: choose the items to give up so that the rows left are fewest (an integer program over
    the items that have look-alikes; scipy's HiGHS solves it exactly)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, vstack

    items = sorted({i for _, i in pairs})
    rows = sorted({r for r, _ in pairs})
    give_up = n_items - int(np.ceil(caught_share * n_items))
    if len(items) <= give_up:
        return 0
    at_i, at_r = {i: k for k, i in enumerate(items)}, {r: k for k, r in enumerate(rows)}
    n_i, n_r = len(items), len(rows)
    # Variables: keep item k (x_k), flag row j (y_j). y_j >= x_k for each look-alike pair; sum x >= n_i - give_up.
    k = np.array([at_i[i] for _, i in pairs])
    j = np.array([at_r[r] for r, _ in pairs])
    n = len(pairs)
    links = coo_matrix((np.concatenate([-np.ones(n), np.ones(n)]), (np.tile(np.arange(n), 2), np.concatenate([k, n_i + j]))),
                       shape=(n, n_i + n_r))
    total = coo_matrix(np.concatenate([np.ones(n_i), np.zeros(n_r)])[None, :])
    res = milp(np.concatenate([np.zeros(n_i), np.ones(n_r)]),
               constraints=LinearConstraint(vstack([links, total]).tocsr(), np.concatenate([np.zeros(n), [n_i - give_up]]),
                                            np.inf),
               integrality=np.ones(n_i + n_r), bounds=Bounds(0, 1))
    return int(round(res.fun))


def user_rows(prompts: list[str], source: str) -> pl.DataFrame:
    return make_frame([{"messages": [{"role": "user", "content": p}], "source": source} for p in prompts])


def qa_rows(pairs: list[tuple[str, str]], source: str) -> pl.DataFrame:
    return make_frame([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                        "source": source} for q, a in pairs])


def draw_math_eval(math: pl.DataFrame, n_items: int, seed: int) -> list[int]:
    """The MATH rows drawn as the eval set: problems holding a number (so that plant() applies)."""
    eligible = [i for i, p in enumerate(math["problem"].to_list()) if re.search(r"\d", p)]
    return sorted(random.Random(seed).sample(eligible, n_items))


def math_case(tmp: Path, n_items: int, seed: int) -> dict:
    math = read_table(DATA / "math_test4500" / "math_test_minus_math500.jsonl")
    drawn = draw_math_eval(math, n_items, seed)
    eval_path = tmp / "math_eval.jsonl"
    math[drawn].select("id", "problem", "solution", "answer").write_ndjson(eval_path)
    problems = math["problem"].to_list()
    planted = [plant(problems[i], math["id"][i], seed) for i in drawn]
    rest = sorted(set(range(len(math))) - set(drawn))
    gsm = read_table(DATA / "gsm8k_train" / "train.jsonl")
    planted_edits = [edit_distance(words(problems[i]), words(p)) for i, p in zip(drawn, planted)]
    variants = templated_variants([problems[i] for i in drawn], planted_edits, [problems[i] for i in rest])
    return {
        "eval_path": eval_path,
        "planted": user_rows(planted, "planted"),
        "planted_items": [f"math_eval.jsonl:{k}" for k in range(len(drawn))],
        "planted_words": [len(words(problems[i])) for i in drawn],
        "planted_edits": planted_edits,
        "eval_prompts": [problems[i] for i in drawn],
        "clean": {
            "gsm8k_train": qa_rows(list(zip(gsm["question"].to_list(), gsm["answer"].to_list())), "gsm8k"),
            "math_rest": qa_rows([(problems[i], math["solution"][i]) for i in rest], "math_rest"),
        },
        "clean_prompts": {"math_rest": [problems[i] for i in rest]},
        "clean_variants": {"math_rest": {k: variants[k] for k in ("same_skeleton", "planted_lookalike")}},
        # The goal's floor on this clean set: rows any word-edit rule catching 95% must flag.
        "lookalike_floor": {"math_rest": lookalike_floor(variants["lookalike_pairs"], len(drawn), 0.95)},
    }


def alpaca_case(seed: int) -> dict:
    path = DATA / "eval_prompts" / "alpaca_eval_805.jsonl"
    ev = read_table(path)
    instr = ev["instruction"].to_list()
    keep = [i for i, t in enumerate(instr) if re.search(r"\d", t)]
    planted = [plant(instr[i], str(ev["id"][i]), seed) for i in keep]
    return {
        "eval_path": path,
        "planted": user_rows(planted, "planted"),
        "planted_items": [f"alpaca_eval_805.jsonl:{i}" for i in keep],
        "planted_words": [len(words(instr[i])) for i in keep],
        "planted_edits": [edit_distance(words(instr[i]), words(p)) for i, p in zip(keep, planted)],
        "eval_prompts": instr,
        "clean": {
            "cherry_alpaca": read_records(DATA / "quality_cherry_alpaca_ifd" / "cherry_alpaca_5_percent.jsonl"),
            "alpaca_gpt4_nuggets": read_records(DATA / "nuggets_alpaca_gpt4" / "alpaca_gpt4_bad_scored.jsonl"),
        },
        "clean_prompts": {},
    }


CONFIGS = {
    "gpt3": dict(short_words=0, common_items=0, min_prose=0, min_answer_share=0),
    "default": {},
}


def flagged(f: Decontaminate, df: pl.DataFrame) -> pl.DataFrame:
    scored = f.score(df)
    mask, _ = f.keep(scored)
    return scored.with_columns(pl.Series("flagged", ~mask))


def run_case(name: str, case: dict, configs: dict) -> dict:
    out: dict = {"eval_set": Path(case["eval_path"]).name, "planted": len(case["planted"]), "configs": {}}
    words_arr = np.array(case["planted_words"])
    edits = np.array(case["planted_edits"])
    out["planted_edit_distance"] = {"median": float(np.median(edits)), "p95": float(np.percentile(edits, 95)),
                                    "max": int(edits.max())}
    short = words_arr < 30
    out["planted_under_30_words"] = int(short.sum())
    for cname, settings in configs.items():
        f = Decontaminate(eval_sets=[str(case["eval_path"])], **settings)
        f.index()
        res: dict = {}
        start = time.perf_counter()
        p = flagged(f, case["planted"])
        own = np.array([item in hits for item, hits in zip(case["planted_items"], p[f"{f.column}_hits"].to_list())])
        caught = p["flagged"].to_numpy() & own
        res["planted_caught"] = int(caught.sum())
        res["planted_caught_pct"] = round(100 * caught.mean(), 1)
        res["planted_under_30_caught_pct"] = round(100 * caught[short].mean(), 1) if short.any() else None
        tested = words_arr >= f.min_words  # under min_words words: exact copies only, by design
        res["planted_min_words_plus"] = int(tested.sum())
        res["planted_min_words_plus_caught_pct"] = round(100 * caught[tested].mean(), 1)
        res["missed_examples"] = [t[:160] for t in pl.Series(case["planted"]["messages"].to_list())
                                  .map_elements(lambda m: m[0]["content"], return_dtype=pl.String)
                                  .filter(pl.Series(~caught)).head(5).to_list()]
        rows = len(case["planted"])
        for clean_name, df in case["clean"].items():
            c = flagged(f, df)
            rows += len(df)
            n = int(c["flagged"].sum())
            by_ngrams = int((c["flagged"] & (c[f"{f.column}_matches"] > 0)).sum())
            entry = {"rows": len(df), "flagged": n, "flagged_pct": round(100 * n / len(df), 2),
                     "flagged_by_13grams": by_ngrams, "flagged_by_near_copy_only": n - by_ngrams}
            hits = c.filter("flagged")
            if clean_name in case["clean_prompts"] and n:
                prompts = case["clean_prompts"][clean_name]
                idx = np.flatnonzero(c["flagged"].to_numpy())
                ev = case["eval_prompts"]
                dists = [edit_distance(words(ev[int(h.rsplit(":", 1)[1])]), words(prompts[i]))
                         for i, h in zip(idx, hits[f"{f.column}_hit"].to_list())]
                near = int(sum(d <= out["planted_edit_distance"]["max"] for d in dists))
                entry["flagged_within_planted_edit_distance"] = near
                entry["flagged_farther_pct"] = round(100 * (n - near) / len(df), 2)
            if clean_name in case.get("lookalike_floor", {}):
                entry["lookalike_floor_for_95pct"] = case["lookalike_floor"][clean_name]
            variants = case.get("clean_variants", {}).get(clean_name)
            if variants:  # the clean set without its near copies by definitions independent of the filter
                is_flagged = c["flagged"].to_numpy()
                gone = np.zeros(len(df), bool)
                for vname, mask in variants.items():
                    gone |= mask
                    entry[f"without_{vname}"] = {"rows": int((~gone).sum()), "flagged": int(is_flagged[~gone].sum()),
                                                 "flagged_pct": round(100 * is_flagged[~gone].mean(), 2),
                                                 "variants": int(mask.sum()), "variants_flagged": int(is_flagged[mask].sum())}
            firsts = hits["messages"].head(5).map_elements(lambda m: m[0]["content"], return_dtype=pl.String)
            entry["examples"] = [{"hit": h, "text": t[:140]}
                                 for h, t in zip(hits[f"{f.column}_hit"].head(5).to_list(), firsts.to_list())]
            res[clean_name] = entry
        res["rows_per_s"] = round(rows / (time.perf_counter() - start))
        out["configs"][cname] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-items", type=int, default=1000, help="MATH problems drawn as the eval set (and planted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON file for the full results")
    args = ap.parse_args()
    report: dict = {"load_average_1m_at_start": round(os.getloadavg()[0], 1), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"math_test4500": math_case(Path(tmp), args.eval_items, args.seed),
                 "alpaca_eval_805": alpaca_case(args.seed)}
        for name, case in cases.items():
            report["cases"][name] = run_case(name, case, CONFIGS)
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 1)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(report)


def print_table(r: dict) -> None:
    print(f"load average {r['load_average_1m_at_start']} -> {r['load_average_1m_at_end']}")
    for name, case in r["cases"].items():
        e = case["planted_edit_distance"]
        print(f"\n{name}: {case['planted']} planted ({case['planted_under_30_words']} under 30 words), "
              f"word edit distance to the original median {e['median']}, p95 {e['p95']}, max {e['max']}")
        for cname, res in case["configs"].items():
            clean = "; ".join(
                f"{k} {v['flagged']}/{v['rows']} = {v['flagged_pct']}% (13-grams {v['flagged_by_13grams']})"
                + (f" ({v['flagged_within_planted_edit_distance']} within {e['max']} word edits of the item hit; "
                   f"farther {v['flagged_farther_pct']}%)" if "flagged_within_planted_edit_distance" in v else "")
                for k, v in res.items() if isinstance(v, dict))
            for k, v in res.items():
                if isinstance(v, dict) and "without_same_skeleton" in v:
                    a, b = v["without_same_skeleton"], v["without_planted_lookalike"]
                    clean += (f"; {k} without its {a['variants']} same-skeleton rows (numbers masked; "
                              f"{a['variants_flagged']} flagged) {a['flagged']}/{a['rows']} = {a['flagged_pct']}%, "
                              f"also without its {b['variants']} planted look-alikes ({b['variants_flagged']} flagged) "
                              f"{b['flagged']}/{b['rows']} = {b['flagged_pct']}%; a rule that counts word edits must "
                              f"flag >= {v['lookalike_floor_for_95pct']} {k} rows to catch 95%")
            print(f"  {cname}: planted caught {res['planted_caught_pct']}% (under 30 words "
                  f"{res['planted_under_30_caught_pct']}%, the {res['planted_min_words_plus']} of >= 8 words "
                  f"{res['planted_min_words_plus_caught_pct']}%); clean flagged: {clean}; {res['rows_per_s']} rows/s")


if __name__ == "__main__":
    main()
