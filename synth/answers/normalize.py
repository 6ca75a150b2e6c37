"""Answer strings -> canonical structure: what two spellings of one answer have in common.

`structure_of` cleans LaTeX and plain-text spellings (\\dfrac, \\left, units, "x =", thousands
separators, inequalities as intervals) and reads the answer's shape: a scalar, an ordered tuple or
interval, an unordered list or set, a union, a matrix or an equation. It evaluates nothing: the
comparison (synth.answers.match) decides whether 0.5 and \\frac{1}{2} are the same value.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from fractions import Fraction

from synth.answers.extract import extract_answer, last_boxed, match_brace
from synth.answers.latex import is_word

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
        j = match_brace(s, m.end() - 1)
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
    if is_word(s):  # plain words: Monday, even, neither
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


def render(node) -> str:
    """A structure as its canonical string (unordered lists sorted)."""
    kind = node[0]
    if kind == "scalar":
        return node[1]
    if kind == "seq":
        return node[1] + ",".join(map(render, node[3])) + node[2]
    if kind in ("list", "set"):
        return ",".join(sorted(map(render, node[1])))
    if kind == "union":
        return "\\cup".join(sorted(map(render, node[1])))
    if kind == "matrix":
        return "\\begin{pmatrix}" + "\\\\".join("&".join(map(render, r)) for r in node[1]) + "\\end{pmatrix}"
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
    return render(structure_of(str(s)))


@functools.lru_cache(maxsize=65536)
def structure_of(s: str):
    """An answer string as a nested ("kind", ...) tuple: scalar, seq, list, set, union, matrix, eq."""
    return _structure(_clean(s))
