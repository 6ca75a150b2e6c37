"""A small LaTeX expression parser: answer strings -> an AST of JSON-friendly lists.

    ["n", p, q] rational p/q, ["s", name], ["c", "pi"|"e"|"i"|"inf"], ["+", [..]], ["*", [..]],
    ["neg", x], ["/", a, b], ["^", a, b], ["f", name, x], ["root", x, n], ["log", x, base],
    ["!", x], ["binom", a, b]

It reads the spellings MATH answers use (\\frac12, a mixed number 6\\frac15, \\sin^2 x, |x|,
plain-text 2^10) into an AST that synth.answers.numeric evaluates exactly; lists, not tuples, so
an AST crosses to the sympy worker as JSON.
"""

from __future__ import annotations

import functools
import json
import re
from fractions import Fraction


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
        """A sum of signed terms: "a - b" is a plus the term -b."""
        terms = [self.signed(self.term)]
        while self.peek()[1] in ("+", "-"):
            terms.append(self.signed(self.term))
        return terms[0] if len(terms) == 1 else ["+", terms]

    def signed(self, operand):
        """`operand()` after any number of + and - signs, each minus a "neg" node: a term of a sum
        (operand `term`), or a factor after * or / (operand `power`, so "2 / -x" parses)."""
        if self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            t = self.signed(operand)
            return t if op == "+" else ["neg", t]
        return operand()

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
                rhs = self.signed(self.power)
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


def parse(s: str):
    """The AST of an answer string (a fresh copy each call), or None if it does not parse."""
    j = _parse_cached(s)
    return None if j is None else json.loads(j)


def symbols(node, out: set) -> set:
    """The variable names in an AST, added to `out`."""
    if node[0] == "s":
        out.add(node[1])
    else:
        for x in node[1:]:
            if isinstance(x, list):
                if x and isinstance(x[0], list):
                    for y in x:
                        symbols(y, out)
                else:
                    symbols(x, out)
    return out


_WORD_RE = re.compile(r"[A-Za-z]{3,}")


def is_word(s: str) -> bool:
    """A plain word of three or more letters (Monday, even), not letters to multiply or a function."""
    return bool(_WORD_RE.fullmatch(s)) and s.lower() not in _WORDS
