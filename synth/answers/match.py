"""The comparison cascade: canonical strings, then structure, then numbers, then sympy.

answers_match(pred, gold) walks the two structures (synth.answers.normalize) side by side;
scalars are parsed (synth.answers.latex) and compared numerically (synth.answers.numeric), and only
what numbers cannot decide goes to the sympy worker (synth.answers.sympy_worker).
"""

from __future__ import annotations

import re

from synth.answers.latex import is_word, parse
from synth.answers.normalize import render, structure_of
from synth.answers.numeric import numeric_equal
from synth.answers.sympy_worker import sympy_equal


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


def _scalar_core(a: str, b: str, style: str, timeout: float) -> bool:
    if is_word(a) or is_word(b):  # words are not products of letters (listen != silent)
        return a.lower() == b.lower()
    na, nb = parse(a), parse(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    verdict = numeric_equal(a, b, na, nb)
    if verdict is not None:
        return verdict
    if style == "gsm8k":
        return False
    return bool(sympy_equal(na, nb, timeout))


def _equation_equal(a, b, style, timeout) -> bool:
    """Two equations are equal when their sides moved to one side are proportional by a non-zero
    constant (2x + 4y = 6 is x + 2y = 3; x(y - 1) = 0 is not y - 1 = 0)."""
    (la, ra), (lb, rb) = a[1:], b[1:]
    if (la, ra) == (lb, rb) or (la, ra) == (rb, lb):
        return True
    da, db = f"({la})-({ra})", f"({lb})-({rb})"
    na, nb = parse(da), parse(db)
    if na is None or nb is None:
        return False
    verdict = numeric_equal(da, db, na, nb, ratio=True)
    if verdict is not None:
        return verdict
    return style != "gsm8k" and bool(sympy_equal(na, nb, timeout, ratio=True))


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
    a, b = structure_of(pred), structure_of(gold)
    if render(a) == render(b):
        return True
    return _struct_equal(a, b, style, timeout)
