"""Answer checking: agreement with the intended verdict, per class, for ours and math-verify.

    python bench/eval_answers.py [--data DIR] [--limit N] [--baseline REV] [--mv-cap N | --no-math-verify]
                                 [--rounds R] [--show K] [--only CLASS ...] [--dump FILE]

The table is built from real data (tests and benchmarks only, never the package):
- GSM8K train (7,473): every gold rationale (calculator annotations removed, "#### N" taken off)
  ended in each final-answer convention real model outputs use (`#### N`, `A: N`, `Answer: N`,
  `**Answer:** N`, `The answer is N.`, `\\boxed{N}`, Minerva's `Final Answer: The final answer is
  $N$. I hope it is correct.`), with the gold number (accept) and with a wrong one (reject); the
  rationale with no statement, and opened by a Q/A-style "A:" line of prose (reject: strict mode
  needs a final statement); `Final Answer: The total is N.`; a boxed equation whose right side
  is the gold (reject).
- MATH test minus MATH500 (4,500): the gold solution (accept); the solution with its boxes taken
  off, ended in one of the conventions (rotating), with the gold (accept) and a perturbed answer
  (reject); the answer respelled (accept) or perturbed (reject) against the gold.
- The classes of issue 9 part 1, generated from the data above: several boxes for a list answer;
  a \\boxed{} followed by a later "Final Answer:" (the later one counts); a named left side
  (`(p,q)=(3,2)`, `AB=5`); inequalities for intervals, both directions; equations equal up to a
  scale factor; "3, 100" (a list) vs "3100"; a boxed equation vs the same equation.

A perturbed answer changes its last digit (or, with no digit, its last capital letter), so it is a
different value by construction. A row is a whole solution (ours: `synth.cot.grade` in strict mode,
the VerifiedCoT default; math-verify: `verify(parse("$gold$"), parse(solution))`) or an answer pair
(ours: `answers_match`; math-verify: `verify(parse("$gold$"), parse("$pred$"))`). Ours runs with
the row's native style (gsm8k for GSM8K rows, math for MATH rows) and with "auto" (the default).

Speed: each checker's wall time over the same rows in this process (both cache parsed golds: a gold
seen again is cheaper, as in rejection sampling). Agreement = rows whose verdict is the intended
one; "wrong acc." counts rejects that the checker accepted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import answers  # noqa: E402
from synth.cot import grade  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Row:
    cls: str
    kind: str  # "solution" (a whole text) or "answer" (an answer against the gold)
    text: str
    gold: str
    style: str  # the native style: gsm8k or math
    expected: bool


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ---- conventions -------------------------------------------------------------------------------

CONVENTIONS = ["####", "A:", "Answer:", "**Answer:**", "The answer is", "\\boxed", "Final Answer (Minerva)"]


def with_statement(body: str, conv: str, ans: str, latex: bool) -> str:
    """`body` ended by the answer stated in one convention; LaTeX answers go in $...$ where a writer
    would put them."""
    m = f"${ans}$" if latex else ans
    tail = {
        "####": f"#### {ans}",
        "A:": f"A: {m}",
        "Answer:": f"Answer: {m}",
        "**Answer:**": f"\n**Answer:** {m}",
        "The answer is": f"The answer is {m}.",
        "\\boxed": f"$$\\boxed{{{ans}}}$$",
        "Final Answer (Minerva)": f"Final Answer: The final answer is ${ans}$. I hope it is correct.",
    }[conv]
    return f"{body}\n{tail}"


def perturb(ans: str) -> str | None:
    """A different answer: the last digit changed (9 -> 8, else + 1), or the last capital letter;
    never inside a unit (\\text{ cm}^2 -> cm^3 is the same value: units are not compared)."""
    units = [range(m.start(), m.end()) for m in re.finditer(r"\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d\}?)?", ans)]
    for i in range(len(ans) - 1, -1, -1):
        c = ans[i]
        if any(i in u for u in units):
            continue
        if c.isdigit():
            return ans[:i] + ("8" if c == "9" else str(int(c) + 1)) + ans[i + 1:]
    for i in range(len(ans) - 1, -1, -1):
        c = ans[i]
        if "A" <= c <= "Y" and not (i > 0 and ans[i - 1].isalpha()) and not (i + 1 < len(ans) and ans[i + 1].isalpha()):
            return ans[:i] + chr(ord(c) + 1) + ans[i + 1:]
    return None


def respell(ans: str, rng: random.Random) -> str:
    """The same answer as another writer puts it (LaTeX spellings only, no value changes)."""
    out = ans.replace("\\frac", rng.choice(["\\frac", "\\dfrac", "\\tfrac"]))
    out = re.sub(r",(?=\S)(?!\\!|\}|\d{3}(?!\d))", ", ", out)  # not in thousands (1,000 / 1,\\!000)
    if out.startswith("(") and out.endswith(")") and rng.random() < 0.5:
        out = "\\left(" + out[1:-1] + "\\right)"
    if re.fullmatch(r"-?\d+", out) and rng.random() < 0.5:
        out = rng.choice(["x = ", "", "\\text{ }"]) + out
    return rng.choice(["{}", "${}$", "\\boxed{{{}}}", " {} "]).format(out)


def _split_list(ans: str) -> list[str] | None:
    """A bare comma list answer ("1, -2, 3") as its items, else None (thousands, tuples, sets)."""
    if re.search(r"\\[!,]|\{,\}|^\s*(?:\\left)?[(\[{]|\\\{|\d,\d{3}(?!\d)", ans):
        return None
    items, depth, start = [], 0, 0
    for i, c in enumerate(ans):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            items.append(ans[start:i].strip())
            start = i + 1
    items.append(ans[start:].strip())
    return items if len(items) > 1 and all(items) else None


# ---- builders ----------------------------------------------------------------------------------

def gsm8k_rows(recs: list[dict]) -> list[Row]:
    rows = []
    rng = random.Random(0)
    for k, r in enumerate(recs):
        text = re.sub(r"<<[^>]*>>", "", r["answer"])
        body, _, written = text.rpartition("\n####")
        gold, written = r["final_answer"], written.strip()
        wrong = str(Fraction(gold) + 1)
        for conv in CONVENTIONS:
            rows.append(Row(f"gsm8k {conv}", "solution", with_statement(body, conv, written, False), gold, "gsm8k", True))
            rows.append(Row(f"gsm8k {conv}, wrong", "solution", with_statement(body, conv, wrong, False), gold, "gsm8k", False))
        if not re.search(r"(?i)answer", body):  # (49 rationales state "the answer is" themselves)
            rows.append(Row("gsm8k no statement", "solution", body, gold, "gsm8k", False))
            lines = body.split("\n")
            if len(lines) >= 2 and len(re.findall(r"[A-Za-z]{2,}", lines[0])) >= 3:  # Q/A few-shot
                rows.append(Row("gsm8k 'A:' opening the reasoning", "solution", "A: " + body, gold, "gsm8k", False))
        noun = ["The total is", "The answer to the question is", "The number we want is"][k % 3]
        rows.append(Row("Final Answer: The <noun> is N.", "solution", f"{body}\nFinal Answer: {noun} {written}.", gold, "gsm8k", True))
        rows.append(Row("Final Answer: The <noun> is N., wrong", "solution", f"{body}\nFinal Answer: {noun} {wrong}.", gold, "gsm8k", False))
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        rows.append(Row("boxed equation vs its right side", "solution",
                        f"{body}\nSo $\\boxed{{{a}x + {b}y = {gold}}}$.", gold, "gsm8k", False))
        nxt = recs[(k + 1) % len(recs)]["final_answer"]
        if re.fullmatch(r"\d{3}", nxt) and re.fullmatch(r"\d{1,3}", gold):
            rows.append(Row("list 'a, bcd' vs number 'abcd'", "answer", f"{gold}, {nxt}", gold + nxt, "gsm8k", False))
            rows.append(Row("list 'a, bcd' vs list 'bcd, a'", "answer", f"{gold}, {nxt}", f"{nxt}, {gold}", "math", True))
            rows.append(Row("thousands 'a,bcd' vs 'abcd'", "answer", f"{gold},{nxt}", gold + nxt, "gsm8k", True))
    return rows


def math_rows(recs: list[dict]) -> list[Row]:
    rows = []
    rng = random.Random(0)
    for k, r in enumerate(recs):
        ans, sol = r["answer"], r["solution"]
        unboxed = re.sub(r"\\(?:boxed|fbox)\{", "{", sol)
        wrong = perturb(ans)
        rows.append(Row("MATH gold solution", "solution", sol, ans, "math", True))
        conv = CONVENTIONS[k % len(CONVENTIONS)]
        plain = bool(re.fullmatch(r"-?\d+", ans))
        rows.append(Row("MATH solution + convention", "solution", with_statement(unboxed, conv, ans, not plain), ans, "math", True))
        rows.append(Row("MATH answer respelled", "answer", respell(ans, rng), ans, "math", True))
        if wrong is not None:
            rows.append(Row("MATH solution + convention, wrong", "solution",
                            with_statement(unboxed, conv, wrong, not plain), ans, "math", False))
            rows.append(Row("MATH answer perturbed", "answer", wrong, ans, "math", False))
            box_then_final = "\nFinal Answer: The final answer is ${}$. I hope it is correct."
            bad_box = sol.replace("\\boxed{" + ans + "}", "\\boxed{" + wrong + "}")
            if bad_box != sol:
                rows.append(Row("\\boxed{} then a later Final Answer", "solution", bad_box + box_then_final.format(ans), ans, "math", True))
                rows.append(Row("\\boxed{} then a later Final Answer, wrong", "solution", sol + box_then_final.format(wrong), ans, "math", False))
        items = _split_list(ans)
        if items:
            bad = items[:-1] + [perturb(items[-1]) or items[-1] + "1"]
            for xs, ok in ((items[::-1], True), (bad, False)):
                if (k + ok) % 2:
                    stated = "The solutions are " + " and ".join(f"$\\boxed{{{x}}}$" for x in xs) + "."
                else:
                    stated = "So $x = " + ", ".join(f"\\boxed{{{x}}}" for x in xs) + "$."
                rows.append(Row("several boxes for a list" + ("" if ok else ", wrong"), "solution",
                                f"{unboxed}\n{stated}", ans, "math", ok))
        tup = re.fullmatch(r"\((-?\d+), ?(-?\d+)\)", ans)
        if tup:
            rows.append(Row("named left side", "answer", f"(p,q)={ans}", ans, "math", True))
            rows.append(Row("named left side, wrong", "answer", f"(p,q)={wrong}", ans, "math", False))
        elif re.fullmatch(r"\d+(?:\.\d+)?", ans) and r["type"] == "Geometry":
            rows.append(Row("named left side", "answer", f"AB = {ans}", ans, "math", True))
            rows.append(Row("named left side, wrong", "answer", f"AB = {wrong}", ans, "math", False))
        if "=" in ans:
            rows.append(Row("boxed equation vs the same equation", "solution", f"{unboxed}\n$\\boxed{{{ans}}}$", ans, "math", True))
    return rows


def interval_rows(recs: list[dict], n_synthetic: int = 300) -> list[Row]:
    """Inequalities for intervals: MATH interval answers of single intervals, plus synthetic ones."""
    found = []
    for r in recs:
        m = re.fullmatch(r"(?:\\left)?([(\[])\s*(-?[\w\\{}.]+?)\s*,\s*(-?[\w\\{}.]+?)\s*(?:\\right)?([)\]])", r["answer"])
        if m and ("interval" in r["problem"] or "\\infty" in r["answer"] or m.group(1) + m.group(4) in ("[)", "(]", "[]")):
            found.append(m.groups())
    rng = random.Random(0)
    for _ in range(n_synthetic):
        lo = rng.randint(-20, 20)
        kind = rng.choice(["both", "lower", "upper"])
        a = str(lo) if kind != "upper" else "-\\infty"
        b = str(lo + rng.randint(1, 20)) if kind != "lower" else "\\infty"
        found.append(("(" if kind == "upper" else rng.choice("(["), a, b, ")" if kind == "lower" else rng.choice(")]")))
    rows = []
    for lb, a, b, rb in found:
        gold = f"{lb}{a}, {b}{rb}"
        lo_op = {"(": "<", "[": "\\le"}[lb]
        hi_op = {")": "<", "]": "\\le"}[rb]
        rev = {"<": ">", "\\le": "\\ge"}
        flip = {"<": "\\le", "\\le": "<"}
        if a != "-\\infty" and b != "\\infty":
            forms = [f"{a} {lo_op} x {hi_op} {b}", f"{b} {rev[hi_op]} x {rev[lo_op]} {a}"]
            wrong = f"{a} {flip[lo_op]} x {hi_op} {b}"
        elif a == "-\\infty" and b != "\\infty":
            forms = [f"x {hi_op} {b}", f"{b} {rev[hi_op]} x"]
            wrong = f"x {flip[hi_op]} {b}"
        elif b == "\\infty" and a != "-\\infty":
            forms = [f"x {rev[lo_op]} {a}", f"{a} {lo_op} x"]
            wrong = f"{a} {flip[lo_op]} x"
        else:
            continue
        for f in forms:
            rows.append(Row("inequality vs interval", "answer", f, gold, "math", True))
        rows.append(Row("inequality vs interval, wrong", "answer", wrong, gold, "math", False))
        rows.append(Row("inequality vs reversed inequality", "answer", forms[0], forms[1], "math", True))
    return rows


def equation_rows(recs: list[dict], n_synthetic: int = 300) -> list[Row]:
    """Linear equations equal up to a non-zero factor (MATH's plane equations plus synthetic ones)."""
    eqs = []
    for r in recs:
        m = re.fullmatch(r"((?:[-+]?\s*\d*[xyz]\s*)+)([-+]\s*\d+)?\s*=\s*(-?\d+)", r["answer"].replace(" ", ""))
        if m:
            coef = {v: 0 for v in "xyz"}
            for sign, c, v in re.findall(r"([-+]?)(\d*)([xyz])", m.group(1)):
                coef[v] += int(c or 1) * (-1 if sign == "-" else 1)
            const = int((m.group(2) or "0").replace(" ", "")) - int(m.group(3))
            if sum(1 for c in coef.values() if c) >= 2:  # "x = 9" is a named value, not an equation
                eqs.append((coef, const))
    rng = random.Random(1)
    for _ in range(n_synthetic):
        coef = {v: rng.choice([0, rng.randint(-12, 12)]) for v in "xyz"}
        for v in rng.sample("xyz", 2):  # two variables at least
            coef[v] = coef[v] or rng.choice([-1, 1]) * rng.randint(1, 12)
        eqs.append((coef, rng.randint(-30, 30)))

    def render(coef: dict, const: int, rhs_const: bool) -> str:
        terms = "".join(f"{c:+d}{v}" for v, c in coef.items() if c).lstrip("+")
        terms = re.sub(r"(?<![\d])1([xyz])", r"\1", terms)
        if rhs_const:
            return f"{terms} = {-const}"
        return f"{terms} {const:+d} = 0" if const else f"{terms} = 0"

    rows = []
    for coef, const in eqs:
        gold = render(coef, const, rng.random() < 0.5)
        k = rng.choice([2, 3, -1, -2, 5])
        scaled = render({v: k * c for v, c in coef.items()}, k * const, rng.random() < 0.5)
        rows.append(Row("equation scaled by a constant", "answer", scaled, gold, "math", True))
        shifted = render({v: k * c for v, c in coef.items()}, k * const + 1, rng.random() < 0.5)
        rows.append(Row("equation scaled, constant changed", "answer", shifted, gold, "math", False))
        v = next(v for v, c in coef.items() if c)
        other = dict(coef, **{v: coef[v] * (k + 1) if k != -1 else coef[v] * 2})
        rows.append(Row("equation with one coefficient scaled", "answer", render(other, const, False), gold, "math", False))
    return rows


def build_table(data: Path, limit: int | None) -> list[Row]:
    gsm = _jsonl(data / "gsm8k_train" / "train.jsonl")[:limit]
    math_recs = _jsonl(data / "math_test4500" / "math_test_minus_math500.jsonl")[:limit]
    return gsm8k_rows(gsm) + math_rows(math_recs) + interval_rows(math_recs) + equation_rows(math_recs)


# ---- checkers -----------------------------------------------------------------------------------

def ours_checker(answers_module, grade_fn, style: str | None):
    """Ours at the call site: VerifiedCoT's grade (strict) for solutions, answers_match for pairs.
    style None: each row's native style."""
    def check(row: Row) -> bool:
        st = style or row.style
        if row.kind == "solution":
            return grade_fn(row.text, row.gold, style=st, strict=True)[1] is None
        return answers_module.answers_match(row.text, row.gold, st)

    return check


def load_baseline(rev: str):
    """(answers module, grade) as they were at git revision `rev`, imported as `synth_baseline`
    beside today's code, so both are timed in this process on the same rows."""
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    files = subprocess.run(git + ["ls-tree", "-r", "--name-only", rev, "--", "synth/answers.py", "synth/answers",
                                  "synth/cot.py"], check=True, capture_output=True, text=True).stdout.split()
    tmp = Path(tempfile.mkdtemp(prefix="answers_baseline_"))
    for f in files:
        src = subprocess.run(git + ["show", f"{rev}:{f}"], check=True, capture_output=True, text=True).stdout
        out = tmp / "synth_baseline" / Path(f).relative_to("synth")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(re.sub(r"\bsynth\.(answers|cot)\b", r"synth_baseline.\1", src), encoding="utf-8")
    (tmp / "synth_baseline" / "__init__.py").write_text("", encoding="utf-8")
    sys.path.insert(0, str(tmp))
    answers_b = importlib.import_module("synth_baseline.answers")
    return answers_b, importlib.import_module("synth_baseline.cot").grade


def clear_caches(prefix: str) -> None:
    """Empty the lru caches of every module under `prefix`, so each timed pass starts cold."""
    for name, mod in list(sys.modules.items()):
        if name == prefix or name.startswith(prefix + "."):
            for obj in vars(mod).values():
                if callable(getattr(obj, "cache_clear", None)):
                    obj.cache_clear()


def math_verify_checker():
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def check(row: Row) -> bool:
        pred = parse(row.text if row.kind == "solution" else f"${row.text}$")
        return verify(parse(f"${row.gold}$"), pred)

    return check


def run(rows: list[Row], check, cache_prefix: str | None = None) -> tuple[list[bool], float]:
    if cache_prefix:
        clear_caches(cache_prefix)
    t = time.perf_counter()
    out = [bool(check(r)) for r in rows]
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    ap.add_argument("--limit", type=int, default=None, help="records per dataset (default: all)")
    ap.add_argument("--baseline", metavar="REV", help="also run synth/answers + synth/cot as of this git revision")
    ap.add_argument("--mv-cap", type=int, default=1000,
                    help="math-verify runs on at most this many rows per class, a seeded sample (0: all rows)")
    ap.add_argument("--no-math-verify", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="timed passes of ours (and the baseline); the fastest counts")
    ap.add_argument("--show", type=int, default=3, help="disagreements printed per class and checker")
    ap.add_argument("--only", action="append", default=[], help="classes whose name contains this")
    ap.add_argument("--dump", type=Path, help="write every row some checker gets wrong here (JSONL)")
    args = ap.parse_args()

    rows = build_table(args.data, args.limit)
    if args.only:
        rows = [r for r in rows if any(o in r.cls for o in args.only)]
    by_cls = defaultdict(list)
    for i, r in enumerate(rows):
        by_cls[r.cls].append(i)
    print(f"{len(rows):,} rows in {len(by_cls)} classes")

    checkers = {"ours (native style)": (ours_checker(answers, grade, None), "synth.answers"),
                "ours (auto)": (ours_checker(answers, grade, "auto"), "synth.answers")}
    if args.baseline:
        answers_b, grade_b = load_baseline(args.baseline)
        checkers[f"{args.baseline} (native style)"] = (ours_checker(answers_b, grade_b, None), "synth_baseline.answers")
    results, times = {}, {}
    for _ in range(args.rounds):
        for name, (check, prefix) in checkers.items():
            results[name], t = run(rows, check, prefix)
            times[name] = min(t, times.get(name, t))
    sample = list(range(len(rows)))
    if not args.no_math_verify:
        rng = random.Random(0)
        sample = sorted(i for idx in by_cls.values()
                        for i in (rng.sample(idx, args.mv_cap) if 0 < args.mv_cap < len(idx) else idx))
        mv, t_mv = run([rows[i] for i in sample], math_verify_checker())
        results["math-verify"] = dict(zip(sample, mv))
        sub = [rows[i] for i in sample]
        _, t_ours_sub = run(sub, checkers["ours (native style)"][0], "synth.answers")

    names = list(results)
    print("| class | rows | intended | " + " | ".join(f"{n} agree | wrong acc." for n in names) + " |")
    print("|" + "---|" * (3 + 2 * len(names)))
    totals = {n: [0, 0, 0] for n in names}
    for cls, idx in by_cls.items():
        cells = []
        for n in names:
            mine = [i for i in idx if i in results[n]] if n == "math-verify" else idx
            agree = sum(results[n][i] == rows[i].expected for i in mine)
            wrong_acc = sum(results[n][i] and not rows[i].expected for i in mine)
            totals[n][0] += agree
            totals[n][1] += wrong_acc
            totals[n][2] += len(mine)
            note = f" ({len(mine):,})" if len(mine) != len(idx) else ""
            cells.append(f"{100 * agree / len(mine):.2f}%{note} | {wrong_acc}")
        intended = "accept" if rows[idx[0]].expected else "reject"
        print(f"| {cls} | {len(idx):,} | {intended} | " + " | ".join(cells) + " |")
    print(f"| **all** | {len(rows):,} | | "
          + " | ".join(f"**{100 * a / n:.3f}%**{f' ({n:,})' if n != len(rows) else ''} | **{w}**" for a, w, n in totals.values())
          + " |")
    print()
    base = times["ours (native style)"]
    for n, t in times.items():
        print(f"{n}: {t:.2f} s for {len(rows):,} rows ({len(rows) / t:,.0f} rows/s), {t / base:.3f}x ours (native style)")
    if args.baseline:  # the same work: time both again on the rows whose verdict did not change
        base_name = f"{args.baseline} (native style)"
        same = [r for i, r in enumerate(rows) if results["ours (native style)"][i] == results[base_name][i]]
        t_same = {}
        for _ in range(args.rounds):
            for name in ("ours (native style)", base_name):
                check, prefix = checkers[name]
                t = run(same, check, prefix)[1]
                t_same[name] = min(t, t_same.get(name, t))
        print(f"verdicts that differ from {args.baseline}: {len(rows) - len(same):,} of {len(rows):,}; on the "
              f"{len(same):,} others, ours / {args.baseline} time = {t_same['ours (native style)']:.2f} s / "
              f"{t_same[base_name]:.2f} s = {t_same['ours (native style)'] / t_same[base_name]:.3f}")
    if not args.no_math_verify:
        print(f"math-verify: {t_mv:.1f} s for {len(sample):,} rows ({len(sample) / t_mv:,.0f} rows/s); ours (native "
              f"style) on the same rows, cold caches: {t_ours_sub:.2f} s; math-verify / ours = {t_mv / t_ours_sub:.0f}x")
    if args.dump:
        with args.dump.open("w", encoding="utf-8") as fh:
            for i, r in enumerate(rows):
                got = {n: results[n][i] for n in names if n != "math-verify" or i in results[n]}
                if any(v != r.expected for v in got.values()):
                    fh.write(json.dumps({**r.__dict__, "got": got}) + "\n")
    if args.show:
        print()
        for n in names:
            for cls, idx in by_cls.items():
                ran = [i for i in idx if i in results[n]] if n == "math-verify" else idx
                bad = [i for i in ran if results[n][i] != rows[i].expected][: args.show]
                for i in bad:
                    print(f"[{n}] {cls}: got {results[n][i]}, pred {rows[i].text[-120:]!r} gold {rows[i].gold!r}")


if __name__ == "__main__":
    main()
