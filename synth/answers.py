"""Final-answer extraction and checking for verified chain-of-thought (rejection sampling).

    extract_answer(text, style)        -> the final answer a solution commits to, or None
    final_answer(text, style, strict)  -> the same, made checkable (what VerifiedCoT grades)
    normalize_answer(s, style)         -> a canonical string (for exact matching, majority votes)
    answers_match(pred, gold, style)   -> bool

Styles: "gsm8k" (plain numbers: commas, $, units, percentages), "math" (Hendrycks MATH LaTeX) and
"auto" (both; the default). The checker is a cascade so the common case stays cheap:
  1. canonical strings equal (LaTeX spacing, \\dfrac, \\left, units, "x =" ... removed);
  2. structure: intervals and tuples compare element-wise in order with their brackets; bare
     comma lists ("1, 2"), \\{sets\\} and unions compare as multisets; matrices row by row;
  3. scalars: a small LaTeX parser (this file) evaluates both sides exactly with Fractions where it
     can (0.5 == \\frac12, 2\\sqrt2 == \\sqrt8 numerically), and at a few random points when there
     are variables (polynomial-identity testing: x(x+1) == x^2+x);
  4. only if numeric evaluation cannot decide: sympy `simplify(a - b) == 0` in a worker
     subprocess that is killed after `timeout` seconds (sympy can hang; a killed worker is
     restarted on the next call, so this is safe from any thread and any number of calls).

Documented decisions (the test table in tests/test_answers.py pins each one):
- A solution's answer is its last final statement: \\boxed{X}, "#### X", "The answer is X",
  "Final Answer: X" (Minerva's "Final Answer: The final answer is $X$. I hope it is correct."),
  "Answer: X", "**Answer:** X", a bare few-shot "A: X" line (not "A: <reasoning>"). A later
  statement beats an earlier box; adjacent boxes joined by "and", "or", "," are one answer
  ("$\\boxed{2}$ and $\\boxed{3}$" is "2, 3"); "The largest $n$ is 34." answers 34.
- Percent: "25%" matches both 25 (GSM8K golds state percentages as bare numbers) and 0.25
  (the same quantity); a bare 0.25 does not match a bare 25.
- Decimals are exact: 0.5 == 1/2, but 0.333 != 1/3 and 1.414 != \\sqrt2 (MATH asks for exact forms);
  irrational forms compare with a relative tolerance of 1e-9 (float evaluation).
- Bare comma lists are unordered ("1, 2" == "2, 1": MATH's "enter all solutions"), parenthesised ones
  are ordered pairs / intervals ("(1, 2)" != "(2, 1)"; "(1, 2]" != "(1, 2)").
- "1,000" alone is one thousand (thousands separator); inside brackets "(1,000)" is a pair; a comma
  with a space after it separates items: "3, 100" is a list, not 3100 ("1,000, 2,500" is two).
- An integer directly before a numeric \\frac is a mixed number: 6\\frac15 == 31/5 (MATH writes them).
- Units and degrees are dropped, not converted: 30^\\circ == 30, but 30^\\circ != \\frac{\\pi}{6}.
- A named left side is dropped: "x =", "f(x) =", "x \\in", "AB =", "m\\angle ABC =", "(p,q) =";
  other equations are equal when lhs - rhs are proportional by a non-zero constant
  (2x + 4y = 6 == x + 2y = 3; x(y - 1) = 0 != y - 1 = 0).
- An inequality in one variable is its interval, either way round: "-2 \\le x \\le 7" == [-2, 7],
  "3 \\le x" == [3, \\infty), "5 \\ge x" == "x \\le 5".
- `e` is Euler's number and `i` the imaginary unit when they appear as lone letters; words of three
  or more letters compare as words (case-insensitive), not as products of variables.
- Expressions with variables are equal if they agree at random rational points of both signs (exact
  arithmetic where possible), so x(x+1) == x^2+x and |x| != x, but also \\sqrt{x}\\sqrt{y} != \\sqrt{xy}.
- An integer that overflows floats is compared exactly while under 100k bits; beyond that, sympy
  decides within the time limit, and an undecided comparison is False.
"""

from __future__ import annotations

import atexit
import cmath
import functools
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
import zlib
from decimal import Decimal
from fractions import Fraction

__all__ = ["answers_match", "extract_answer", "final_answer", "last_boxed", "normalize_answer"]

# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _match_brace(s: str, i: int) -> int:
    """Index of the "}" closing the "{" at s[i], or -1. Escaped braces (\\{ \\}) don't count."""
    depth = 0
    j = i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def _box(text: str, m: re.Match) -> tuple[int, int, str] | None:
    """The box a _BOX_RE match opens as (start, end, content); None if it is not well-formed."""
    i = m.end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        j = _match_brace(text, i)
        if j != -1:
            return m.start(), j + 1, text[i + 1 : j].strip()
    elif i > m.end() and i < len(text):  # "\boxed 5": up to whitespace or "$"
        k = re.match(r"[^\s$]+", text[i:])
        if k:
            return m.start(), i + k.end(), k.group(0)
    return None


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every well-formed \\boxed{...} / \\fbox{...} / `\\boxed 5`, as (start, end, content)."""
    return [b for b in (_box(text, m) for m in _BOX_RE.finditer(text)) if b is not None]


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed \\boxed{...} / \\fbox{...} (or `\\boxed 5`), else None."""
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


# Where a final-answer statement begins (its answer is the text after the match), each with a
# lower-case word the text must contain for the pattern to be tried (most texts have no "answer").
_STATEMENT_RES = [
    ("####", re.compile(r"####")),  # GSM8K's gold format
    ("answer", re.compile(r"(?<![A-Za-z])[fF](?i:inal\s+answer(?:\*\*)?\s*(?:is\b|:)\s*:?)")),  # also Minerva's
    ("answer", re.compile(r"(?im)^[ \t#*]*final\s+answer[ \t*:]*$")),  # a "Final Answer" heading, answer below
    ("answer", re.compile(r"(?<![A-Za-z])[tT](?i:he\s+(?:correct\s+)?answer\s+is\b\s*:?)")),
    ("answer", re.compile(r"(?im)^\W*answer(?:\*\*)?\s*:")),  # "Answer: X", "**Answer:** X"
]
# Few-shot "Q: ... A: 18": an "A:" line counts only when it holds a bare answer, not reasoning.
_QA_RE = re.compile(r"(?m)^[ >*]*A ?:(?:\*\*)?")
# "The answer to the problem is X", "The final result is X": accepted in strict mode only when no
# statement above is found (small models write them).
_LOOSE_STATEMENT = re.compile(r"(?i)\b(?:answer|final\s+result)\b[^\n.]{0,60}?\b(?:is|was|equals)\b\s*:?")
# Between two boxes of one answer: "$\boxed{2}$ and $\boxed{3}$", "x = \boxed{1}, \boxed{4}".
_BOX_GAP = re.compile(r"(?:\s|\$|\\[()\[\]]|\\\\|[,;&]|\\q?quad\b|\\text\{\s*(?:and|or)?\s*,?\s*\}|\b(?:and|or)\b"
                      r"|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*")
_COPULA = re.compile(r"\b(?:is|are|was|were|equals)\b")
_PROSE_WORD = re.compile(r"(?<![\\\w])[A-Za-z]{2,}\b")
_MATH_SPAN = re.compile(r"(?<!\\)\$+[^$]*(?<!\\)\$+")
_BRACE_GROUP = re.compile(r"\{[^{}]*\}")
# A number as people write it: 1,234.5 / -3 / .5 / 3/4 ; commas only as thousands separators;
# not glued to a word ("COVID19") and "3-4" ends in 4, not -4.
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)")


def _trim_answer(x: str) -> str:
    """Cut "X. More prose" to X, drop markdown bold and math delimiters and a final period."""
    x = x.strip()
    m = re.match(r"(\$+)(.+?)(?<!\\)\1", x, re.DOTALL)
    if m:  # "$\frac{1}{2}.$ So ..." -> the math that opens the answer
        return m.group(2).strip().rstrip(".").strip()
    in_math = False
    for i, c in enumerate(x):  # cut at the first sentence end outside $...$
        if c == "$" and (i == 0 or x[i - 1] != "\\"):
            in_math = not in_math
        elif c == "." and not in_math and i > 0 and (i + 1 == len(x) or x[i + 1].isspace()):
            x = x[:i]
            break
    x = x.replace("**", "").strip()
    x = re.sub(r"^\$+|\$+$", "", x).strip()
    x = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", x).strip()
    return x.rstrip(".").strip()


def _blank(m: re.Match) -> str:
    return " " * len(m.group())


def _prose(s: str) -> str:
    """s with its $...$ math and {...} groups blanked out (same length): what is left is prose."""
    if "$" in s:
        s = _MATH_SPAN.sub(_blank, s)
    while "{" in s:
        s, n = _BRACE_GROUP.subn(_blank, s)
        if not n:
            break
    return s


def _prose_words(s: str) -> int:
    """Words of two or more letters outside math and braces ("The largest $n$ is" -> 3)."""
    return len(_PROSE_WORD.findall(_prose(s)))


def _stated_answer(text: str, end: int, bare: bool) -> str | None:
    """The answer a statement gives, from `end` (just after its marker) to the end of its sentence.

    A sentence names the answer after its first "is" ("The largest $n$ is 34." -> 34); words
    without a number or math ("... is indeed what we found above") are no answer. `bare` (an "A:" line): the line
    must be the answer itself, at most two words around it ("18 apples"), not reasoning."""
    while end < len(text) and text[end] in " \t":
        end += 1
    if text.startswith("\n", end):
        end += 1
    stop = text.find("\n", end)
    ans = text[end:] if stop == -1 else text[end:stop]
    head = ans.strip()
    for opener, closer in (("$$", "$$"), ("\\[", "\\]")):  # display math over the lines below
        if head.startswith(opener) and closer not in head[len(opener):]:
            close = text.find(closer, end + ans.index(opener) + len(opener))
            if close != -1:
                ans = text[end : close + len(closer)]
            break
    if len(re.findall(r"(?<!\\)\$", ans)) % 2 == 1:  # "$...\n...$": the math goes on
        close = re.compile(r"(?<!\\)\$").search(text, end + len(ans))
        if close:
            ans = text[end : close.end()]
    if bare:  # "A: 18", "A: $x = 5$", "A: 18 apples"; not "A: Nilo got 10 + 10 = 20."
        if "=" in _prose(ans):
            return None
        ans = _trim_answer(ans)
        return ans if ans and _prose_words(ans) <= 2 else None
    ans = _trim_answer(ans)
    if ans[:1].isalpha():  # a sentence: "The largest $n$ is 34", "It is 5"
        cut = _COPULA.search(_prose(ans))
        if cut and ans[cut.end():].strip():
            ans = _trim_answer(ans[cut.end():])
    if not ans or (_prose_words(ans) >= 4 and not re.search(r"[\d$\\]", ans)):
        return None  # words only: "... is indeed what we found above"
    return ans


def _final_statement(text: str) -> tuple[int, str] | None:
    """(start, answer) of the last final-answer statement: a box (with the boxes just before it
    that belong to the same answer), "The answer is X", "Final Answer: X", "Answer: X",
    "#### X", a bare "A: X" line. The statement that starts last wins."""
    opens = list(_BOX_RE.finditer(text)) if "box" in text else []  # boxes are read when reached
    cands = [(m.start(), "box", k) for k, m in enumerate(opens)]
    low = text.lower()
    for needle, rx in _STATEMENT_RES:
        if needle in low:
            cands += [(m.start(), "said", m.end()) for m in rx.finditer(text)]
    if "A:" in text or "A :" in text:
        cands += [(m.start(), "bare", m.end()) for m in _QA_RE.finditer(text)]
    for start, kind, data in sorted(cands, reverse=True):
        if kind == "box":
            group = [_box(text, opens[data])]
            if group[0] is None:
                continue
            for m in reversed(opens[:data]):  # "$\boxed{2}$ and $\boxed{3}$": one answer, "2, 3"
                prev = _box(text, m)
                if prev is None or prev[1] > group[0][0] or not _BOX_GAP.fullmatch(text, prev[1], group[0][0]):
                    break
                group.insert(0, prev)
            return group[0][0], ", ".join(c for _s, _e, c in group)
        if any(b[1] > start for b in (_box(text, m) for m in opens if m.start() < start) if b):
            continue  # words inside a box are its content
        ans = _stated_answer(text, data, bare=kind == "bare")
        if ans:
            return start, ans
    return None


def extract_answer(text: str | None, style: str = "auto") -> str | None:
    """The final answer a solution commits to.

    The last final statement (see _final_statement; several adjacent boxes give one answer,
    "2, 3"); else (styles "gsm8k" and "auto" only) the last number in the text, commas removed.
    Returns None when nothing is found.
    """
    if style not in ("auto", "gsm8k", "math"):
        raise ValueError(f"style must be auto, gsm8k or math, not {style!r}")
    if not text:
        return None
    found = _final_statement(text)
    if found is not None:
        return found[1]
    if style in ("gsm8k", "auto"):
        nums = _NUMBER_RE.findall(text)
        if nums:
            return nums[-1].replace(",", "")
    return None


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")
_NUMBER_ONLY = re.compile(r"^\s*" + _NUMBER.pattern + r"\s*$")
_TIMES_X = re.compile(r"(?<=[\d)])\s*[x×]\s*(?=[\d($])")  # "0.2 x 50": x as a times sign
_LONE_LETTER = re.compile(r"(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])")


def final_answer(text: str | None, style: str = "auto", strict: bool = True) -> str | None:
    """The answer a solution states, made checkable (what VerifiedCoT grades).

    strict: only a stated answer counts (see _final_statement), or, when there is none, the looser
    "The answer to the question is X" / "The final result is X" that small models write; not
    strict: extract_answer's last-number fallback too. Arithmetic stated as "3 + 4 = 7" is taken
    as what follows the last "=" (style gsm8k; auto only when that is a plain number; never in
    LaTeX, nor when the left side has a variable: "2x + 3y = 6" is an equation, not 6), and for
    gsm8k a stated phrase without LaTeX as its last number ("7 apples in all" -> 7)."""
    if not text:
        return None
    pred = extract_answer(text, "math" if strict else style)  # "math" extraction has no last-number fallback
    if pred is None and strict and re.search(r"(?i)answer|result", text):
        loose = None
        for loose in _LOOSE_STATEMENT.finditer(text):
            pass
        if loose is not None:
            pred = _stated_answer(text, loose.end(), bare=False)
    if pred is None or style == "math":
        return pred
    if "=" in pred and "\\" not in pred:  # not LaTeX: "3 + 4 = 7" -> 7
        lhs, rhs = (p.strip() for p in pred.rsplit("=", 1))
        arithmetic = not _LONE_LETTER.search(_TIMES_X.sub("*", lhs))
        if rhs and arithmetic and (style == "gsm8k" or _NUMBER_ONLY.match(rhs)):
            pred = rhs
    if style == "gsm8k" and "\\" not in pred and "=" not in pred and not _NUMBER_ONLY.match(pred):
        nums = _NUMBER.findall(pred)
        if nums:
            pred = nums[-1]
    return pred


# --------------------------------------------------------------------------------------------
# Normalization (string level)
# --------------------------------------------------------------------------------------------

_UNICODE = {"−": "-", "–": "-", "×": r"\times ", "·": r"\cdot ", "÷": "/", "π": r"\pi ",
            "√": r"\sqrt", "∞": r"\infty ", "°": r"^\circ", "≤": r"\le ", "≥": r"\ge ",
            "∪": r"\cup ", "±": r"\pm ", "\u2009": " ", "\u00a0": " "}
_TEXT_CMDS = r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|textsf|texttt|hbox)"
_SPACING = re.compile(r"(?<!\\)\\[!,;:> ]|\\q?quad\b|\\displaystyle|\\scriptstyle|~")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)[lr]?(?![a-zA-Z])\s*(\.)?")
# A named left side, dropped before comparing: "x =", "x_1 =", "f(x) =", "AB =", "m\\angle ABC =",
# "(p, q) =", "x \\in". Equations with anything else on the left compare as equations.
_NAME = (r"(?:[a-zA-Z]|[A-Z]{2,3}|m\s?\\angle\s?[A-Z]{1,3}|\\overline\{[A-Z]{2}\}|\\[a-zA-Z]+(?:\s?[A-Z]{1,3}(?![a-zA-Z]))?)"
         r"(?:_\{?[a-zA-Z0-9]+\}?)?(?:\^\{?-1\}?)?(?:\([a-zA-Z]\))?")
_VAR_PREFIX = re.compile(rf"^\s*(?:{_NAME}|\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\))"
                         r"\s*(?:=|\\in(?![a-zA-Z]))\s*(?=\S)")
# Plain-word units after a value: "18 dollars", "5 square feet", "3 cm^2" (not "2 pi", "x or y",
# and not the am/pm of a time).
_UNIT_WORDS = re.compile(r"(?<=[\d}%])\s+(?!(?:sqrt|pi|sin|cos|tan|log|ln|exp|or|and|infty|am|pm)\b)"
                         r"(?:[a-zA-Z]{2,}\.?(?:\s+|(?=$|[,)\]^])))+(?:\^\{?\d\}?)?(?=\s*(?:$|[,)\]]))")
_THOUSANDS_ALONE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _remove_text_groups(s: str) -> str:
    """\\text{...}: units after a value are dropped; a whole-answer text (\\text{(C)}) is unwrapped.

    "\\text{ or }" / "\\text{ and }" separate several answers, so they become commas."""
    groups = []
    for m in re.finditer(_TEXT_CMDS + r"\s*\{", s):
        j = _match_brace(s, m.end() - 1)
        if j != -1:
            groups.append((m.start(), m.end(), j))
    if not groups:
        return s
    outside = s
    for a, _b, j in reversed(groups):
        outside = outside[:a] + outside[j + 1 :]
    has_value = bool(re.search(r"[\da-zA-Z\\]", re.sub(r"\^\{?\d\}?", "", outside)))
    out = s
    for a, b, j in reversed(groups):  # right to left keeps the earlier indices valid
        inner = out[b:j]
        word = inner.strip().lower()
        if word in ("or", "and", ","):
            rep = ","
        elif has_value and re.fullmatch(r"[a-zA-Z][a-zA-Z .]*", inner.strip()) and word not in ("am", "pm"):
            rep = " "
            tail = re.match(r"\s*\^\{?\d\}?", out[j + 1 :])  # \text{ cm}^2
            if tail:
                j += tail.end()
        else:
            rep = inner
        out = out[:a] + rep + out[j + 1 :]
    return out


def _repeating(m: re.Match) -> str:
    """0.1\\overline{6} -> (1/6): a repeating decimal as the exact fraction."""
    whole, fixed, rep = m.group(1), m.group(2), m.group(3)
    neg = whole.startswith("-")
    v = Fraction(int(whole.lstrip("-") or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
    v += Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
    v = -v if neg else v
    return f"({v.numerator}/{v.denominator})"


@functools.lru_cache(maxsize=65536)
def _clean(s: str) -> str:
    """LaTeX/plain answer -> canonical string (no structure decisions yet)."""
    s = s.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    elif re.search(r"(?i)answer|####", s):  # "The answer is 42." -> "42"
        s = extract_answer(s, "math") or s
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = s.replace("\\$", " ").replace("\\(", " ").replace("\\)", " ").replace("$", " ")
    if s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2]
    # explicit thousands separators: 10,\!000  14{,}916
    s = re.sub(r"(\d)(?:,\\!|\{,\})(?=\d{3})", r"\1", s)
    s = _SIZING.sub("", s)
    if "slant" in s or "<=" in s or ">=" in s:
        s = re.sub(r"\\([lg]e)q?slant(?![a-zA-Z])|([<>])=", lambda m: f"\\{m.group(1) or {'<': 'le', '>': 'ge'}[m.group(2)]} ", s)
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![a-zA-Z])", r"\\binom", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<=\d)\s*(?:degrees?|deg)\b\.?", "", s)
    s = re.sub(r"(?i)(?<![a-z])([ap])\.?\s?m\.?(?![a-z])", lambda m: m.group(1).lower() + "m", s)  # 9 a.m.
    s = _remove_text_groups(s)
    s = s.replace("\\%", "%")
    s = re.sub(r"\s*\bpercent\b", "%", s)
    s = s.replace("**", "^")
    s = re.sub(r"\s+(?:or|and)\s+", ", ", s)
    s = s.strip()
    s = re.sub(r"[.\s]+$", "", s)  # trailing period
    s = re.sub(r"^(?:\\in(?![a-zA-Z])|:)\s*", "", s)
    # \frac12 -> \frac{1}{2}, \sqrt2 -> \sqrt{2} (LaTeX takes one character as the argument)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*(?=\{)", r"\\frac{\1}", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt\s*([\da-zA-Z])", r"\\sqrt{\1}", s)
    s = re.sub(r"([\^_])\{(-?\w)\}", r"\1\2", s)  # x^{2} -> x^2, 25_{6} -> 25_6
    s = _UNIT_WORDS.sub("", s)
    s = re.sub(r"(-?\d*)\.(\d*)\\overline\{(\d+)\}", _repeating, s)
    s = re.sub(r"\\varnothing|\\\{\s*\\\}", r"\\emptyset", s)
    s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", lambda m: m.group(1) + "\0", s)  # "\pi r"...
    if "," in s:  # "3, 100" is a list: keep its space
        s = re.sub(r"(?<=\d)(?:\s+,\s*|,\s+)(?=\d)", ",\0", s)
    return re.sub(r"\s+", "", s).replace("\0", " ")  # ...keeps its space, no other space is kept


def _clean_element(s: str) -> str:
    """Per-element cleanup: "x = 5" -> "5", "18 dollars" -> "18", "(C)" -> "C", leading +."""
    s = s.strip()
    for _ in range(2):
        m = _VAR_PREFIX.match(s)
        if m and "=" not in s[m.end():]:
            s = s[m.end():].strip()
    if _THOUSANDS_ALONE.match(s):
        s = s.replace(",", "")
    m = re.fullmatch(r"\(?\s*([A-Z])\s*\)?", s)
    if m:  # multiple choice
        s = m.group(1)
    if s.startswith("+") and len(s) > 1:
        s = s[1:]
    if _is_word(s):  # plain words: Monday, even, neither
        s = s.lower()
    return s


def _split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split at separators outside (), [], {} (any pairing, so "[1,2)" counts as a bracket)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for sep in seps:
                if s.startswith(sep, i) and not (sep[-1].isalpha() and s[i + len(sep): i + len(sep) + 1].isalpha()):
                    parts.append(s[start:i])
                    i += len(sep)
                    start = i
                    break
            else:
                i += 1
                continue
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _wraps(s: str) -> bool:
    """True if s[0] is an opening bracket whose partner is the last character."""
    depth = 0
    for k, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return k == len(s) - 1
    return False


_REL = r"\s*(<|>|\\leq?|\\geq?)\s*"
_LOWER = {"<": "(", "\\le": "[", "\\leq": "["}  # a < x  /  a \le x
_UPPER = {"<": ")", "\\le": "]", "\\leq": "]"}  # x < b  /  x \le b
_FLIP = {">": "<", "\\ge": "\\le", "\\geq": "\\le", "<": ">", "\\le": "\\ge", "\\leq": "\\ge"}


def _constant(s: str) -> bool:
    """No variable in s (LaTeX commands such as \\frac, \\sqrt, \\pi, \\infty are not variables)."""
    return not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s))


def _inequality(s: str) -> str | None:
    r""""x \le 3" -> "(-\infty,3]", "3 \le x" -> "[3,\infty)", "1 < x \le 2" -> "(1,2]",
    "7 \ge x > 1" -> "(1,7]": an inequality in one variable as its interval."""
    m = re.fullmatch(r"(.+?)" + _REL + r"([a-zA-Z])" + _REL + r"(.+)", s)
    if m and _constant(m.group(1)) and _constant(m.group(5)):
        lo, op1, _x, op2, hi = m.groups()
        if op1 not in _LOWER and op2 not in _LOWER:  # "7 \ge x > 1": read it from the right
            lo, op1, op2, hi = hi, _FLIP[op2], _FLIP[op1], lo
        if op1 in _LOWER and op2 in _UPPER:
            return f"{_LOWER[op1]}{lo},{hi}{_UPPER[op2]}"
        return None
    m = re.fullmatch(r"(.+?)" + _REL + r"([a-zA-Z])", s)
    if m and _constant(m.group(1)):  # "3 \le x" is "x \ge 3"
        return _inequality(f"{m.group(3)}{_FLIP[m.group(2)]}{m.group(1)}")
    m = re.fullmatch(r"([a-zA-Z])" + _REL + r"(.+)", s)
    if m and _constant(m.group(3)):
        op, v = m.group(2), m.group(3)
        if op in _UPPER:
            return f"(-\\infty,{v}{_UPPER[op]}"
        return f"{'(' if op == '>' else '['}{v},\\infty)"
    return None


def _structure(s: str):
    """Canonical string -> nested ("kind", ...) tuple that the comparator walks."""
    s = s.strip()
    m = re.fullmatch(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", s, re.DOTALL)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        return ("matrix", tuple(tuple(_structure(c) for c in r.split("&")) for r in rows))
    m = _VAR_PREFIX.match(s)
    if m and "=" not in s[m.end():] and len(_split_top(s, (",",))) == 1:
        s = s[m.end():]  # "x \in [1, 2]", "y = 2x + 3"
    iv = _inequality(s) if "<" in s or ">" in s or "\\le" in s or "\\ge" in s else None
    if iv is not None:
        s = iv
    parts = _split_top(s, ("\\cup",))
    if len(parts) > 1:
        return ("union", tuple(_structure(p) for p in parts))
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("set", tuple(_structure(p) for p in _split_top(s[2:-2], (",",)) if p))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _wraps(s):
        items = _split_top(s[1:-1], (",",))
        if len(items) > 1:
            return ("seq", s[0], s[-1], tuple(_structure(p) for p in items))
    if _THOUSANDS_ALONE.match(s):  # "1,000" alone is a number; "(1,000)" stays a pair
        s = s.replace(",", "")
    items = _split_top(s, (",", ";"))
    if any(p.startswith(" ") for p in items[1:]):  # "1,000, 2,500": the unspaced commas group thousands
        grouped = items[:1]
        for p in items[1:]:
            if re.fullmatch(r"\d{3}(?:\.\d+)?", p) and re.search(r"\d$", grouped[-1]):
                grouped[-1] += "," + p
            else:
                grouped.append(p)
        items = grouped
    items = [p for p in items if p.strip()]
    if len(items) > 1:
        return ("list", tuple(_structure(p) for p in items))
    s = _clean_element(s)
    for pm in ("\\pm", "\\mp"):
        if s.count(pm) == 1:  # 1 \pm \sqrt2: both roots
            return ("list", (_structure(s.replace(pm, "+")), _structure(s.replace(pm, "-"))))
    eq = _split_top(s, ("=",))
    if len(eq) == 2 and eq[0] and eq[1]:
        return ("eq", eq[0], eq[1])
    s = _plain_number(s.replace(", ", ","))  # the space after a comma only separates list items
    return ("scalar", s)


def _plain_number(s: str) -> str:
    """"18.50" -> "18.5", ".5" -> "0.5", "-0" -> "0", "1.5e3" -> "1500": one spelling per decimal."""
    if re.fullmatch(r"-?\d+(?:\.\d+)?[eE][-+]?\d{1,4}", s):  # scientific notation, alone only
        s = format(Decimal(s), "f")  # ("4e+7p" inside an expression stays 4e + 7p)
    if re.fullmatch(r"-?\d*\.\d*", s) and s.strip("-.") != "":
        s = s.rstrip("0").rstrip(".") if "." in s else s
        s = re.sub(r"^(-?)\.", r"\g<1>0.", s) or "0"
        s = re.sub(r"^(-?)0+(?=\d)", r"\1", s)
    return "0" if s == "-0" else s


def _render(node) -> str:
    kind = node[0]
    if kind == "scalar":
        return node[1]
    if kind == "seq":
        return node[1] + ",".join(map(_render, node[3])) + node[2]
    if kind in ("list", "set"):
        return ",".join(sorted(map(_render, node[1])))
    if kind == "union":
        return "\\cup".join(sorted(map(_render, node[1])))
    if kind == "matrix":
        return "\\begin{pmatrix}" + "\\\\".join("&".join(map(_render, r)) for r in node[1]) + "\\end{pmatrix}"
    if kind == "eq":
        return f"{node[1]}={node[2]}"
    raise ValueError(kind)


def normalize_answer(s: str | None, style: str = "auto") -> str:
    """Canonical string form of an answer: equal strings => answers_match is True.

    Removes \\boxed, $, \\left/\\right, spacing commands, \\dfrac/\\tfrac, degrees, units, "x =",
    a trailing period and thousands separators, and sorts unordered lists. It evaluates nothing,
    so 0.5 and \\frac{1}{2} stay different strings (answers_match decides those). The result is
    the same for every style.
    """
    if style not in ("auto", "gsm8k", "math"):
        raise ValueError(f"style must be auto, gsm8k or math, not {style!r}")
    if s is None:
        return ""
    return _render(_structure_of(str(s)))


# --------------------------------------------------------------------------------------------
# A small LaTeX expression parser -> AST of JSON-friendly lists
#   ["n", p, q] rational p/q, ["s", name], ["c", "pi"|"e"|"i"|"inf"], ["+", [..]], ["*", [..]],
#   ["neg", x], ["/", a, b], ["^", a, b], ["f", name, x], ["root", x, n], ["log", x, base],
#   ["!", x], ["binom", a, b]
# --------------------------------------------------------------------------------------------

class _ParseError(ValueError):
    pass


_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
          "tanh", "exp", "ln", "log", "lg", "abs", "floor", "ceil"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "phi", "varphi", "lambda", "mu", "omega",
          "sigma", "rho", "tau", "epsilon", "varepsilon", "psi", "xi", "eta", "zeta", "kappa", "nu",
          "chi", "Delta", "Gamma", "Theta", "Phi", "Omega", "Lambda", "Sigma", "Psi"}
_WORDS = sorted(_FUNCS | {"sqrt", "pi", "infty", "infinity", "inf"}, key=len, reverse=True)
_TOK_RE = re.compile(r"(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+|\\[{}|])|(?P<word>[a-zA-Z]+)"
                     r"|(?P<op>[-+*/^_!()\[\]{}|,=<>'])|(?P<ws>\s+)")


def _tokenize(s: str) -> list[tuple[str, str]]:
    toks, i = [], 0
    while i < len(s):
        m = _TOK_RE.match(s, i)
        if not m:
            raise _ParseError(f"bad character {s[i]!r}")
        i = m.end()
        kind = m.lastgroup
        text = m.group(0)
        if kind == "ws":
            continue
        if kind == "word":  # "sinx" -> sin x; "xy" -> x y; plain-text pi / sqrt
            j = 0
            while j < len(text):
                for w in _WORDS:
                    if text.startswith(w, j):
                        toks.append(("cmd", "\\" + w))
                        j += len(w)
                        break
                else:
                    toks.append(("sym", text[j]))
                    j += 1
            continue
        if kind == "cmd":
            name = text[1:]
            if name in ("cdot", "times", "ast"):
                toks.append(("op", "*"))
                continue
            if name == "div":
                toks.append(("op", "/"))
                continue
            if name in _GREEK:
                toks.append(("sym", name))
                continue
            if name in ("lvert", "rvert", "vert", "mid", "|"):
                toks.append(("op", "|"))
                continue
            if name in ("operatorname", "mathrm"):
                continue
        toks.append((kind, text))
    return toks


_NUM = lambda p, q=1: ["n", p, q]


class _Parser:
    def __init__(self, s: str):
        self.toks = _tokenize(s)
        self.i = 0
        self.abs_depth = 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, None)

    def take(self, text: str | None = None):
        tok = self.peek()
        if tok[0] is None or (text is not None and tok[1] != text):
            raise _ParseError(f"expected {text!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise _ParseError(f"trailing {self.peek()[1]!r}")
        return node

    def expr(self):
        terms = [self.signed()]
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            t = self.signed()
            terms.append(t if op == "+" else ["neg", t])
        return terms[0] if len(terms) == 1 else ["+", terms]

    def signed(self):
        if self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            t = self.signed()
            return t if op == "+" else ["neg", t]
        return self.term()

    def unary(self):
        if self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            t = self.unary()
            return t if op == "+" else ["neg", t]
        return self.power()

    def fn_arg(self):
        """Unbracketed function argument: "\\sin 2x" is sin(2x), "\\sin x \\cos x" two factors."""
        factors = [self.power()]
        while self._starts_atom() and self.peek()[1][1:] not in _FUNCS:
            factors.append(self.power())
        return factors[0] if len(factors) == 1 else ["*", factors]

    def _starts_atom(self) -> bool:
        kind, text = self.peek()
        if kind in ("num", "sym"):
            return True
        if kind == "cmd":
            return text not in ("\\right", "\\end", "\\cup", "\\pm", "\\le", "\\ge", "\\leq", "\\geq")
        return text in ("(", "[", "{") or (text == "|" and self.abs_depth == 0)

    def term(self):
        factors = [self.power()]
        while True:
            t = self.peek()[1]
            if t in ("*", "/"):
                self.take()
                rhs = self.unary()
                if t == "/":
                    rhs = ["/", _NUM(1), rhs]
                factors.append(rhs)
            elif self._starts_atom():
                factors.append(self.power())
            else:
                break
        return factors[0] if len(factors) == 1 else ["*", factors]

    def power(self):
        base = self.postfix()
        if self.peek()[1] == "^":
            self.take()
            return ["^", base, self.exponent()]
        return base

    def exponent(self):
        if self.peek()[1] in ("-", "+"):
            sign = self.take()[1]
            e = self.power_arg()
            return e if sign == "+" else ["neg", e]
        return self.power_arg()

    def power_arg(self):
        kind, text = self.peek()
        if text == "{":
            return self.group()
        if kind == "num":  # plain-text 2^10 means 1024 (LaTeX would render 2^1 0)
            self.take()
            return self.number(text)
        return self.postfix()

    def postfix(self):
        node = self.atom()
        while self.peek()[1] in ("!", "'"):
            if self.take()[1] == "!":
                node = ["!", node]
            else:
                raise _ParseError("prime")
        return node

    def number(self, text: str):
        f = Fraction(text)
        return _NUM(f.numerator, f.denominator)

    def group(self):
        self.take("{")
        node = self.expr()
        self.take("}")
        return node

    def arg(self):
        """A LaTeX macro argument: {group}, or a single character/token (\\frac12)."""
        kind, text = self.peek()
        if text == "{":
            return self.group()
        if kind == "num":
            self.take()
            if len(text) > 1 and text[0] != ".":
                self.toks.insert(self.i, ("num", text[1:]))
                text = text[0]
            return self.number(text)
        return self.atom()

    def atom(self):
        kind, text = self.peek()
        if kind == "num":
            self.take()
            node = self.number(text)
            if self.peek()[1] == "\\frac" and "." not in text:  # mixed number 6\frac15
                save = self.i
                self.take()
                num, den = self.arg(), self.arg()
                if num[0] == "n" and den[0] == "n" and num[2] == den[2] == 1:
                    return ["+", [node, ["/", num, den]]]
                self.i = save
            return node
        if kind == "sym":
            self.take()
            name = text
            if self.peek()[1] == "_":
                self.take()
                sub = self.take()
                if sub[1] == "{":
                    parts = []
                    while self.peek()[1] != "}":
                        parts.append(self.take()[1])
                    self.take("}")
                    sub = (None, "".join(parts))
                name = f"{name}_{sub[1]}"
            if name == "e":
                return ["c", "e"]
            if name == "i":
                return ["c", "i"]
            return ["s", name]
        if text in ("(", "[", "{"):
            self.take()
            close = {"(": ")", "[": "]", "{": "}"}[text]
            node = self.expr()
            self.take(close)
            return node
        if text == "|":
            self.take()
            self.abs_depth += 1
            node = self.expr()
            self.abs_depth -= 1
            self.take("|")
            return ["f", "abs", node]
        if kind == "cmd":
            self.take()
            name = text[1:]
            if name == "frac":
                a = self.arg()
                b = self.arg()
                return ["/", a, b]
            if name == "binom":
                return ["binom", self.arg(), self.arg()]
            if name == "sqrt":
                if self.peek()[1] == "[":
                    self.take()
                    n = self.expr()
                    self.take("]")
                    return ["root", self.arg(), n]
                return ["root", self.arg(), _NUM(2)]
            if name == "pi":
                return ["c", "pi"]
            if name in ("infty", "infinity", "inf"):
                return ["c", "inf"]
            if name in ("lfloor", "lceil"):
                node = self.expr()
                self.take("\\rfloor" if name == "lfloor" else "\\rceil")
                return ["f", name[1:], node]
            if name in ("overline", "mathbf", "boldsymbol", "vec"):
                raise _ParseError(name)
            if name in _FUNCS:
                power = None
                base = None
                if name == "log" and self.peek()[1] == "_":
                    self.take()
                    base = self.arg()
                if self.peek()[1] == "^":  # \sin^2 x
                    self.take()
                    power = self.exponent()
                arg = self.atom() if self.peek()[1] == "(" else self.fn_arg()
                if power == ["neg", _NUM(1)] and name in ("sin", "cos", "tan"):  # \tan^{-1}
                    return ["f", "arc" + name, arg]
                if name == "log" and base is not None:
                    node = ["log", arg, base]
                elif name in ("ln", "log"):
                    node = ["log", arg, None]  # natural log (log base b only when written)
                elif name == "lg":
                    node = ["log", arg, _NUM(10)]
                else:
                    node = ["f", name, arg]
                return ["^", node, power] if power is not None else node
            raise _ParseError(f"unknown command \\{name}")
        raise _ParseError(f"unexpected {text!r}")


@functools.lru_cache(maxsize=65536)
def _parse_cached(s: str) -> str | None:
    try:
        return json.dumps(_Parser(s).parse())
    except (_ParseError, ValueError, ZeroDivisionError, RecursionError, IndexError):
        return None


def _parse(s: str):
    j = _parse_cached(s)
    return None if j is None else json.loads(j)


def _symbols(node, out: set) -> set:
    if node[0] == "s":
        out.add(node[1])
    else:
        for x in node[1:]:
            if isinstance(x, list):
                if x and isinstance(x[0], list):
                    for y in x:
                        _symbols(y, out)
                else:
                    _symbols(x, out)
    return out


# --------------------------------------------------------------------------------------------
# Numeric evaluation: exact Fractions while possible, complex floats otherwise
# --------------------------------------------------------------------------------------------

class _Undecided(Exception):
    """Numeric evaluation cannot decide (overflow, domain error): ask sympy."""


class _Overflow(_Undecided):
    """A value beyond float range (and too big to keep exact)."""


_MAX_BITS = 100_000  # exact powers beyond this fall back to floats (2^{2005} is fine)


def _iroot(n: int, k: int) -> int | None:
    """Exact integer k-th root of n >= 0, or None."""
    if n < 2:
        return n
    r = round(n ** (1.0 / k)) if n.bit_length() < 1000 else int(math.exp(math.log(n) / k))
    for c in (r - 1, r, r + 1):
        if c >= 0 and c ** k == n:
            return c
    # Newton for big n
    x = 1 << ((n.bit_length() + k - 1) // k)
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            break
        x = y
    return x if x ** k == n else None


def _exact_root(v: Fraction, k: int) -> Fraction | None:
    if v < 0:
        if k % 2 == 1:
            r = _exact_root(-v, k)
            return None if r is None else -r
        return None
    a, b = _iroot(v.numerator, k), _iroot(v.denominator, k)
    return None if a is None or b is None else Fraction(a, b)


def _pow(b, e):
    if isinstance(b, Fraction) and isinstance(e, Fraction):
        if e.denominator == 1:
            n = e.numerator
            bits = max(b.numerator.bit_length(), b.denominator.bit_length()) * abs(n)
            if bits <= _MAX_BITS:
                if b == 0 and n < 0:
                    raise _Undecided("0 to a negative power")
                return b ** n
        elif abs(e.numerator) <= 64 and e.denominator <= 64:
            r = _exact_root(b, e.denominator)
            if r is not None:
                return _pow(r, Fraction(e.numerator))
    try:
        return complex(b) ** complex(e)
    except OverflowError as exc:
        raise _Overflow(str(exc)) from None
    except ZeroDivisionError as exc:
        raise _Undecided(str(exc)) from None


_CFUNCS = {"sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "sinh": cmath.sinh,
           "cosh": cmath.cosh, "tanh": cmath.tanh, "arcsin": cmath.asin, "arccos": cmath.acos,
           "arctan": cmath.atan, "exp": cmath.exp,
           "cot": lambda z: 1 / cmath.tan(z), "sec": lambda z: 1 / cmath.cos(z),
           "csc": lambda z: 1 / cmath.sin(z)}


def _real(v) -> float:
    z = complex(v)
    if abs(z.imag) > 1e-12 * max(1.0, abs(z.real)):
        raise _Undecided("complex argument")
    return z.real


def _eval(node, env):
    """Evaluate an AST; returns Fraction (exact) or complex. Raises _Undecided."""
    op = node[0]
    try:
        if op == "n":
            return Fraction(node[1], node[2])
        if op == "s":
            if node[1] not in env:
                raise _Undecided(f"free symbol {node[1]}")
            return env[node[1]]
        if op == "c":
            return {"pi": complex(math.pi), "e": complex(math.e), "i": 1j,
                    "inf": complex(math.inf)}[node[1]]
        if op == "+":
            vals = [_eval(x, env) for x in node[1]]
            if all(isinstance(v, Fraction) for v in vals):
                return sum(vals, Fraction(0))
            return sum(complex(v) for v in vals)
        if op == "*":
            vals = [_eval(x, env) for x in node[1]]
            if all(isinstance(v, Fraction) for v in vals):
                out = Fraction(1)
                for v in vals:
                    out *= v
                return out
            out = complex(1)
            for v in vals:
                out *= complex(v)
            return out
        if op == "neg":
            return -_eval(node[1], env)
        if op == "/":
            a, b = _eval(node[1], env), _eval(node[2], env)
            if isinstance(a, Fraction) and isinstance(b, Fraction):
                if b == 0:
                    raise _Undecided("division by zero")
                return a / b
            if complex(b) == 0:
                raise _Undecided("division by zero")
            return complex(a) / complex(b)
        if op == "^":
            return _pow(_eval(node[1], env), _eval(node[2], env))
        if op == "root":
            x, n = _eval(node[1], env), _eval(node[2], env)
            if isinstance(x, Fraction) and isinstance(n, Fraction) and n.denominator == 1 and n > 0:
                r = _exact_root(x, n.numerator)
                if r is not None:
                    return r
                if x < 0 and n.numerator % 2 == 1:  # real odd root of a negative number
                    return complex(-((-float(x)) ** (1.0 / n.numerator)))
            if n == 2:
                return cmath.sqrt(complex(x))
            return complex(x) ** (1 / complex(n))
        if op == "log":
            x = _eval(node[1], env)
            if node[2] is None:
                return cmath.log(complex(x))
            b = _eval(node[2], env)
            if isinstance(x, Fraction) and isinstance(b, Fraction) and x > 0 and b > 0 and b != 1:
                # exact when x is an integer power of b (log_2 8 = 3)
                k = round(math.log(float(x)) / math.log(float(b)))
                if abs(k) <= 4096 and _pow(b, Fraction(k)) == x:
                    return Fraction(k)
            return cmath.log(complex(x)) / cmath.log(complex(b))
        if op == "f":
            name = node[1]
            x = _eval(node[2], env)
            if name == "abs":
                return abs(x) if isinstance(x, Fraction) else complex(abs(complex(x)))
            if name in ("floor", "ceil"):
                fn = math.floor if name == "floor" else math.ceil
                return Fraction(fn(x if isinstance(x, Fraction) else _real(x)))
            return _CFUNCS[name](complex(x))
        if op == "!":
            x = _eval(node[1], env)
            if isinstance(x, Fraction) and x.denominator == 1 and 0 <= x <= 2000:
                return Fraction(math.factorial(int(x)))
            return complex(math.gamma(_real(x) + 1))  # x! of a variable: Gamma(x + 1)
        if op == "binom":
            a, b = _eval(node[1], env), _eval(node[2], env)
            if all(isinstance(v, Fraction) and v.denominator == 1 for v in (a, b)) and 0 <= a <= 10**6:
                return Fraction(math.comb(int(a), int(b))) if b >= 0 else Fraction(0)
            a, b = _real(a), _real(b)  # binom(n+1, 2) of a variable n, through Gamma
            return complex(math.gamma(a + 1) / (math.gamma(b + 1) * math.gamma(a - b + 1)))
    except (ValueError, OverflowError, ZeroDivisionError, TypeError) as exc:
        raise _Undecided(str(exc)) from None
    raise _Undecided(f"unknown node {op}")


def _close(x, y) -> bool | None:
    """Exact for two rationals; relative tolerance 1e-9 otherwise; None if NaN."""
    if isinstance(x, Fraction) and isinstance(y, Fraction):
        return x == y
    try:
        x, y = complex(x), complex(y)
    except OverflowError:  # an exact rational beyond float range vs a float: different
        return False
    if any(map(math.isnan, (x.real, x.imag, y.real, y.imag))):
        return None
    if any(map(math.isinf, (x.real, x.imag, y.real, y.imag))):
        return x == y
    return abs(x - y) <= max(1e-9 * max(abs(x), abs(y)), 1e-12)


def _is_zero(v) -> bool:
    return v == 0 if isinstance(v, Fraction) else abs(complex(v)) <= 1e-12


def _numeric_equal(a: str, b: str, na, nb, ratio: bool = False) -> bool | None:
    """Compare two parsed scalars numerically. True/False, or None if undecided.

    ratio: equal up to a non-zero constant factor instead (the two sides of equations moved to
    one side: 2x + 4y - 6 against x + 2y - 3); without variables, up to sign."""
    syms = sorted(_symbols(na, set()) | _symbols(nb, set()))
    if not syms:
        vals = []
        for node in (na, nb):
            try:
                vals.append(_eval(node, {}))
            except _Overflow:
                vals.append(None)
            except _Undecided:
                return None
        va, vb = vals
        if va is None or vb is None:  # one side beyond float range: different unless both are
            other = vb if va is None else va
            if other is None:
                return None
            if isinstance(other, Fraction):
                huge = other.numerator.bit_length() - other.denominator.bit_length() > 990
            else:
                huge = abs(other) > 1e300
            return None if huge else False
        if ratio and _close(va, -vb):
            return True
        return _close(va, vb)
    # polynomial-identity style test: random points shared by both sides
    rng = random.Random(zlib.crc32(f"{a}\0{b}".encode()))  # deterministic
    agree = tries = 0
    factor = None  # ratio: the constant factor seen at the first point where both sides are non-zero
    while agree < 5 and tries < 14:
        # both signs, so |x| != x and \sqrt{x^2} != x (at the cost of \sqrt{x}\sqrt{y} != \sqrt{xy}):
        # all +, all -, alternating both ways, then random signs
        signs = [(1, -1, 1, -1)[tries] * (-1 if tries >= 2 and k % 2 else 1) if tries < 4
                 else rng.choice((-1, 1)) for k in range(len(syms))]
        tries += 1
        env = {s: Fraction(sg * rng.randint(3, 97), rng.randint(7, 41)) for s, sg in zip(syms, signs)}
        try:
            va, vb = _eval(na, env), _eval(nb, env)
        except _Undecided:
            continue
        if ratio:
            if _is_zero(va) or _is_zero(vb):
                if not (_is_zero(va) and _is_zero(vb)):
                    return False
                agree += 1
                continue
            q = va / vb if isinstance(va, Fraction) and isinstance(vb, Fraction) else complex(va) / complex(vb)
            factor = q if factor is None else factor
            c = _close(q, factor)
        else:
            c = _close(va, vb)
        if c is None:
            continue
        if not c:
            return False
        agree += 1
    return True if agree >= 4 else None


# --------------------------------------------------------------------------------------------
# sympy fallback in a killable worker process
# --------------------------------------------------------------------------------------------

def _to_sympy(node, sp):
    op = node[0]
    if op == "n":
        return sp.Rational(node[1], node[2])
    if op == "s":
        return sp.Symbol(node[1])
    if op == "c":
        return {"pi": sp.pi, "e": sp.E, "i": sp.I, "inf": sp.oo}[node[1]]
    if op == "+":
        return sp.Add(*[_to_sympy(x, sp) for x in node[1]])
    if op == "*":
        return sp.Mul(*[_to_sympy(x, sp) for x in node[1]])
    if op == "neg":
        return -_to_sympy(node[1], sp)
    if op == "/":
        return _to_sympy(node[1], sp) / _to_sympy(node[2], sp)
    if op == "^":
        return sp.Pow(_to_sympy(node[1], sp), _to_sympy(node[2], sp))
    if op == "root":
        return sp.root(_to_sympy(node[1], sp), _to_sympy(node[2], sp))
    if op == "log":
        x = _to_sympy(node[1], sp)
        return sp.log(x) if node[2] is None else sp.log(x, _to_sympy(node[2], sp))
    if op == "f":
        fn = {"abs": sp.Abs, "floor": sp.floor, "ceil": sp.ceiling, "arcsin": sp.asin,
              "arccos": sp.acos, "arctan": sp.atan}.get(node[1]) or getattr(sp, node[1])
        return fn(_to_sympy(node[2], sp))
    if op == "!":
        return sp.factorial(_to_sympy(node[1], sp))
    if op == "binom":
        return sp.binomial(_to_sympy(node[1], sp), _to_sympy(node[2], sp))
    raise ValueError(op)


def _sympy_worker_main() -> None:
    """Loop of the worker process: one JSON request per line -> {"ok": true|false|null}."""
    try:
        import sympy as sp
    except ImportError:
        sp = None
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        ok = None
        if req.get("sleep"):  # for tests of the time limit
            time.sleep(req["sleep"])
        elif sp is not None:
            try:
                a, b = _to_sympy(req["a"], sp), _to_sympy(req["b"], sp)
                if req.get("ratio"):  # equal up to a non-zero constant factor
                    q = sp.simplify(a / b)
                    ok = True if not q.free_symbols and q.is_zero is False and q.is_finite else None
                else:
                    diff = sp.simplify(a - b)
                    ok = bool(diff == 0) or (True if diff.is_zero else None)
                    if ok is None and diff.is_number and diff.is_zero is False:
                        ok = False
            except Exception:  # noqa: BLE001 - any sympy failure means "cannot decide"
                ok = None
        sys.stdout.write(json.dumps({"ok": ok}) + "\n")
        sys.stdout.flush()


class _SympyWorker:
    """One long-lived child process; killed and restarted when a request overruns its limit.

    POSIX only (select on a pipe); elsewhere every request is undecided, i.e. no sympy fallback."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.owner = os.getpid()  # a forked child must not share its parent's pipes
        self.lock = threading.Lock()
        self.calls = 0
        self.kills = 0

    def _start(self) -> None:
        code = ("import importlib.util, sys; "
                f"spec = importlib.util.spec_from_file_location('_answers_worker', {__file__!r}); "
                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                "m._sympy_worker_main()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        if self._readline(60.0) != "ready":  # importing sympy is slow the first time
            self._kill()
            raise RuntimeError("sympy worker did not start")

    def _readline(self, timeout: float) -> str | None:
        import select

        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ask(self, request: dict, timeout: float) -> bool | None:
        with self.lock:
            self.calls += 1
            try:
                if self.owner != os.getpid():
                    self.proc, self.owner = None, os.getpid()
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                line = self._readline(timeout)
            except (OSError, RuntimeError, ValueError):
                line = None
            if line is None:  # overran (or died): kill it, the next call starts a fresh one
                self.kills += 1
                self._kill()
                return None
            return json.loads(line)["ok"]

    def close(self) -> None:
        with self.lock:
            self._kill()


_WORKER = _SympyWorker()
atexit.register(_WORKER.close)


def _sympy_equal(na, nb, timeout: float, ratio: bool = False) -> bool | None:
    if timeout <= 0:
        return None
    return _WORKER.ask({"a": na, "b": nb, "ratio": ratio}, timeout)


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

def _percent_variants(s: str) -> list[str]:
    """"25%" -> ["25", "\\frac{25}{100}"]: a percentage matches its number and its fraction."""
    if s.endswith("%"):
        base = s[:-1]
        return [base, f"({base})/100"]
    return [s]


def _scalar_equal(a: str, b: str, style: str, timeout: float) -> bool:
    if a == b:
        return True
    if a.lower() == b.lower() and re.fullmatch(r"[A-Za-z ]+", a):
        return True
    for x in _percent_variants(a):
        for y in _percent_variants(b):
            if x == y:
                return True
            if _scalar_core(x, y, style, timeout):
                return True
    return False


_WORD_RE = re.compile(r"[A-Za-z]{3,}")


def _is_word(s: str) -> bool:
    return bool(_WORD_RE.fullmatch(s)) and s.lower() not in _WORDS


def _scalar_core(a: str, b: str, style: str, timeout: float) -> bool:
    if _is_word(a) or _is_word(b):  # words are not products of letters (listen != silent)
        return a.lower() == b.lower()
    na, nb = _parse(a), _parse(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    verdict = _numeric_equal(a, b, na, nb)
    if verdict is not None:
        return verdict
    if style == "gsm8k":
        return False
    return bool(_sympy_equal(na, nb, timeout))


def _equation_equal(a, b, style, timeout) -> bool:
    """Two equations are equal when their sides moved to one side are proportional by a non-zero
    constant (2x + 4y = 6 is x + 2y = 3; x(y - 1) = 0 is not y - 1 = 0)."""
    (la, ra), (lb, rb) = a[1:], b[1:]
    if (la, ra) == (lb, rb) or (la, ra) == (rb, lb):
        return True
    da, db = f"({la})-({ra})", f"({lb})-({rb})"
    na, nb = _parse(da), _parse(db)
    if na is None or nb is None:
        return False
    verdict = _numeric_equal(da, db, na, nb, ratio=True)
    if verdict is not None:
        return verdict
    return style != "gsm8k" and bool(_sympy_equal(na, nb, timeout, ratio=True))


def _multiset_equal(xs, ys, style, timeout) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        for k, y in enumerate(left):
            if _struct_equal(x, y, style, timeout):
                del left[k]
                break
        else:
            return False
    return True


def _flat_items(node):
    """A one-row or one-column matrix as a flat tuple of entries, else None."""
    rows = node[1]
    if len(rows) == 1:
        return rows[0]
    if all(len(r) == 1 for r in rows):
        return tuple(r[0] for r in rows)
    return None


def _struct_equal(a, b, style: str, timeout: float) -> bool:
    ka, kb = a[0], b[0]
    if ka == kb == "scalar":
        return _scalar_equal(a[1], b[1], style, timeout)
    if ka == kb == "seq":
        return (a[1], a[2]) == (b[1], b[2]) and len(a[3]) == len(b[3]) and all(
            _struct_equal(x, y, style, timeout) for x, y in zip(a[3], b[3]))
    if ka in ("list", "set") and kb in ("list", "set"):
        return _multiset_equal(a[1], b[1], style, timeout)
    if ka == kb == "union":
        return _multiset_equal(a[1], b[1], style, timeout)
    if ka == kb == "matrix":
        return len(a[1]) == len(b[1]) and all(
            len(ra) == len(rb) and all(_struct_equal(x, y, style, timeout) for x, y in zip(ra, rb))
            for ra, rb in zip(a[1], b[1]))
    if {ka, kb} == {"matrix", "seq"}:  # column vector (1, 2) written as a tuple
        m, s = (a, b) if ka == "matrix" else (b, a)
        flat = _flat_items(m)
        return (flat is not None and s[1] == "(" and len(flat) == len(s[3])
                and all(_struct_equal(x, y, style, timeout) for x, y in zip(flat, s[3])))
    if ka == kb == "eq":
        return _equation_equal(a, b, style, timeout)
    return False


@functools.lru_cache(maxsize=65536)
def _structure_of(s: str):
    return _structure(_clean(s))


def answers_match(pred: str | None, gold: str | None, style: str = "auto", timeout: float = 2.0) -> bool:
    """True if the predicted final answer equals the gold one (see the module docstring).

    `pred` and `gold` are answers (use extract_answer on whole solutions first; a \\boxed{} in
    either is unwrapped). `timeout` bounds the sympy fallback in seconds; 0 disables it.
    """
    if style not in ("auto", "gsm8k", "math"):
        raise ValueError(f"style must be auto, gsm8k or math, not {style!r}")
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if not pred.strip() or not gold.strip():
        return False
    if pred.strip() == gold.strip():
        return True
    a, b = _structure_of(pred), _structure_of(gold)
    if _render(a) == _render(b):
        return True
    return _struct_equal(a, b, style, timeout)
