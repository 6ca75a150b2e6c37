"""Where a solution states its final answer, and what that answer is.

A solution's answer is its last final statement (a box, "The answer is X", "Final Answer: X",
"Answer: X", "#### X", a bare "A: X" line); `final_answer` makes it checkable the way VerifiedCoT
grades it (strict: a statement is required). The package docstring lists the conventions read.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def match_brace(s: str, i: int) -> int:
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
        j = match_brace(text, i)
        if j != -1:
            return m.start(), j + 1, text[i + 1 : j].strip()
    elif i > m.end() and i < len(text):  # "\boxed 5": up to whitespace or "$"
        k = re.match(r"[^\s$]+", text[i:])
        if k:
            return m.start(), i + k.end(), k.group(0)
    return None


def boxes(text: str) -> list[tuple[int, int, str]]:
    """Every well-formed \\boxed{...} / \\fbox{...} / `\\boxed 5`, as (start, end, content)."""
    return [b for b in (_box(text, m) for m in _BOX_RE.finditer(text)) if b is not None]


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed \\boxed{...} / \\fbox{...} (or `\\boxed 5`), else None."""
    found = boxes(text)
    return found[-1][2] if found else None


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
