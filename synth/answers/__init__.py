"""Final-answer extraction and checking for verified chain-of-thought (rejection sampling).

    extract_answer(text, style)        -> the final answer a solution commits to, or None
    final_answer(text, style, strict)  -> the same, made checkable (what VerifiedCoT grades)
    normalize_answer(s, style)         -> a canonical string (for exact matching, majority votes)
    answers_match(pred, gold, style)   -> bool

The parts, each readable alone: extract (where a solution states its answer), normalize (answer
string -> canonical structure), latex (parser -> AST), numeric (exact evaluation and numeric
comparison), sympy_worker (the killable sympy fallback), match (the comparison cascade).

Styles: "gsm8k" (plain numbers: commas, $, units, percentages), "math" (Hendrycks MATH LaTeX) and
"auto" (both; the default). The checker is a cascade so the common case stays cheap:
  1. canonical strings equal (LaTeX spacing, \\dfrac, \\left, units, "x =" ... removed);
  2. structure: intervals and tuples compare element-wise in order with their brackets; bare
     comma lists ("1, 2"), \\{sets\\} and unions compare as multisets; matrices row by row;
  3. scalars: a small LaTeX parser (latex.py) evaluates both sides exactly with Fractions where it
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

from synth.answers.extract import extract_answer, final_answer, last_boxed
from synth.answers.match import answers_match
from synth.answers.normalize import normalize_answer

__all__ = ["answers_match", "extract_answer", "final_answer", "last_boxed", "normalize_answer"]
