"""Numeric comparison of parsed answers: exact Fractions while possible, complex floats otherwise.

Two expressions with variables are equal when they agree at random rational points of both
signs (polynomial-identity testing). Returns None when it cannot decide, and the caller asks sympy.
"""

from __future__ import annotations

import cmath
import math
import random
import zlib
from fractions import Fraction

from synth.answers.latex import symbols


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


def numeric_equal(a: str, b: str, na, nb, ratio: bool = False) -> bool | None:
    """Compare two parsed scalars numerically. True/False, or None if undecided.

    ratio: equal up to a non-zero constant factor instead (the two sides of equations moved to
    one side: 2x + 4y - 6 against x + 2y - 3); without variables, up to sign."""
    syms = sorted(symbols(na, set()) | symbols(nb, set()))
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
