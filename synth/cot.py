"""`verified_cot`: sample chain-of-thought solutions, keep those whose final answer matches the gold one.

Rejection sampling for reasoning data: STaR (Zelikman et al. 2022, "STaR: Bootstrapping Reasoning
With Reasoning"), "Large Language Models Are Reasoning Teachers" (Ho et al. 2023: several diverse
rationales per question at T > 0, filtered by the final answer), and DART-Math (Tong et al. 2024,
"Difficulty-Aware Rejection Tuning", arXiv 2407.13690: vanilla sampling under-represents hard
questions, so spend more samples on them).

Each input row needs a `gold` answer (map it in the recipe's input, e.g. GSM8K `gold: final_answer`).
The teacher gets the question (the row's last user turn) in a prompt asking for step-by-step work
ending "The answer is X"; `k` samples per question per round at `temperature`, seeds seed + sample.

Checking one sample (synth.answers; the reason goes to rejects, the raw solution in the rejected
row's assistant turn, the extracted answer in `detail` and `answer`):
  "teacher request failed" / "truncated" (cut at `max_tokens`: not a finished solution) /
  "no final answer" (with `strict_format`, only a stated answer counts: "The answer is X",
  "Final answer: X" (and Minerva's "Final Answer: The final answer is $X$. I hope it is correct."),
  "Answer: X", "**Answer:** X", "#### X", a bare "A: X" line, \\boxed{X} (several adjacent boxes
  are one answer), or the looser "The answer to ... is X" / "The final result is X"; the statement
  that comes last wins; without it the last number also counts; see synth.answers.final_answer;
  `detail` is the solution's last line) /
  "wrong answer" (answers_match(pred, gold, style) is False) /
  "duplicate rationale" (a correct solution identical to one already kept for the question) /
  "over quota" (correct, but the question's quota was already full).
Input rows without a gold answer (or without a question) are rejected before sampling ("no gold").

Quotas (the number of correct rationales to keep per question):
  uniform    every question gets `quota` (DART-Math "Uniform").
  prop2diff  `quota` is a total budget for the whole input. After the first round, difficulty =
             the question's failure rate in that round; every question gets 1 and the rest of the
             budget is shared in proportion to difficulty (largest remainders; equally when every
             question was always solved). Questions that are hard for the teacher get the most, and
             no question that turns out solvable ends with none (DART-Math "Prop2Diff"). The
             allocation is fixed after the first round; if the budget is below one per question,
             each question still gets 1.
Rounds: after the first, a question is sampled again (k more) while it has fewer correct distinct
rationales than its quota and fewer than `max_samples` samples; sampling stops when every question
is full or capped.

Rationalization (STaR), with `rationalize`: a question never solved in any sample is asked again
`rationalize_samples` times with the gold answer as a hint; the solution must still state the gold
answer and must not mention the hint or state the answer before its reasoning ("mentions the
hint": a heuristic; a small model that restates the hint in other words gets through). Kept rationalizations are marked
(`rationalized` = true, source "<source>+rationalized") and their user turn is the plain question.
They do not count in the pass rate.

Kept rows follow the record contract (curate/records.py: reasoning kept apart from the answer):
the solution is cut where its last final-answer statement begins; `reasoning` = the part before
(the rationale), the assistant turn = the statement ("So, the answer is 72."), after the input's
prompt turns (the plain question, never the template). The output converter puts the reasoning
back: inline (`output.reasoning: inline`, default wrapper "<think>...</think>" before the answer;
`reasoning_wrapper: "{reasoning}\n{answer}"` gives the plain full solution) or as a field. A
solution with no statement before which there is reasoning (the answer only inline, as in "...
so she has \\boxed{5} apples.") stays whole in the assistant turn with `reasoning` null.
Also: `answer` = the extracted answer; `gold`; `score_cot_pass_rate` = correct / samples for the
question (all first-try samples, duplicates included); `cot_samples`, `cot_correct`, `cot_quota`.
Stats: stats["cot"] holds the pass-rate distribution (mean, histogram, solved questions), the
quota fill (total, filled, fill rate, questions full / capped at max_samples / empty), the
rationalization counts and, for up to 200 questions, the per-question numbers; stats["generation"]
the samples drawn and rows kept. With quota_mode prop2diff the step is global (one budget).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field

from curate.llm import Request, Response
from curate.steps import Context, RecipePath, Step, StepResult
from synth.answers import answers_match, final_answer
from synth.base import PromptTemplate, Reject, TeacherCalls, build_rows, outcome
from synth.responses import prompt_turns

# Where a solution states its final answer (cf. synth.answers): the reasoning is what comes before.
_FINAL_STATEMENT = re.compile(
    r"(?im)(?:####|\b(?:the\s+)?final\s+answer\s*(?:is|:)(?:\s*the\s+final\s+answer\s+is)?"  # (Minerva's)
    r"|\bthe\s+(?:(?:correct\s+)?answer|final\s+result)\b[^\n.]{0,60}?\b(?:is|was|equals)\b"
    r"|^\W*answer\s*:|^[ \t>*]*A[ \t]*:(?=[ \t]*(?:\S+[ \t]*){1,3}$))")  # "A: 18", not "A: <reasoning>"
_DANGLING = re.compile(r"(?i)[\s,;:*]*(?:\b(?:so|thus|therefore|hence|finally|in conclusion)\b)?[\s,;:*]*$")
_MENTIONS_HINT = re.compile(r"(?i)\b(?:hint|(?:was|were|am|are|been)\s+told|(?:was|were|is|been)\s+given\s+"
                            r"(?:that|the answer)|given\s+answer|answer\s+(?:was|is)\s+given)\b")
PASS_RATE_BINS = ("0", "(0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1)", "1")


# ---------------------------------------------------------------------------------------------
# Pure functions (unit-tested)

def split_solution(solution: str) -> tuple[str | None, str]:
    """(reasoning, final statement): the solution cut where its last final-answer statement begins
    (with a leading "So," / "Therefore" kept in the statement). No statement, or nothing before
    it: (None, the whole solution)."""
    text = solution.strip()
    last = None
    for last in _FINAL_STATEMENT.finditer(text):
        pass
    if last is None:
        return None, text
    head = _DANGLING.sub("", text[: last.start()]).rstrip()
    if not head.strip():
        return None, text
    return head.strip(), text[len(head):].strip()


def grade(text: str | None, gold: str, *, style: str = "auto", strict: bool = True,
          timeout: float = 2.0) -> tuple[str | None, str | None]:
    """(answer, failure): the extracted answer and None when it matches gold, else the reason."""
    pred = final_answer(text, style, strict)
    if pred is None:
        return None, "no final answer"
    if not answers_match(pred, gold, style, timeout=timeout):
        return pred, "wrong answer"
    return pred, None


def _leaks_hint(solution: str) -> bool:
    """A rationalization that mentions its hint, or states the answer before reasoning to it."""
    if _MENTIONS_HINT.search(solution):
        return True
    reasoning, _ = split_solution(solution)
    return bool(reasoning) and _FINAL_STATEMENT.search(reasoning) is not None


def prop2diff_quotas(fail_rates: list[float], budget: int, floor: int = 1) -> list[int]:
    """Split `budget` correct rationales over questions: `floor` each, the rest in proportion to
    the failure rate (largest remainders, ties to the harder then the earlier question)."""
    n = len(fail_rates)
    quotas = [floor] * n
    rest = budget - floor * n
    if n == 0 or rest <= 0:
        return quotas
    weights = list(fail_rates) if sum(fail_rates) > 0 else [1.0] * n
    total = sum(weights)
    raw = [rest * w / total for w in weights]
    share = [math.floor(x + 1e-9) for x in raw]
    left = rest - sum(share)
    order = sorted(range(n), key=lambda i: (-(raw[i] - share[i]), -weights[i], i))
    for i in order[:max(0, left)]:
        share[i] += 1
    return [q + s for q, s in zip(quotas, share)]


def pass_rate_histogram(rates: list[float]) -> dict[str, int]:
    hist = dict.fromkeys(PASS_RATE_BINS, 0)
    for r in rates:
        if r <= 0:
            hist["0"] += 1
        elif r >= 1:
            hist["1"] += 1
        elif r <= 0.25:
            hist["(0, 0.25]"] += 1
        elif r <= 0.5:
            hist["(0.25, 0.5]"] += 1
        elif r <= 0.75:
            hist["(0.5, 0.75]"] += 1
        else:
            hist["(0.75, 1)"] += 1
    return hist


# ---------------------------------------------------------------------------------------------

@dataclass
class _Question:
    row: int
    turns: list[dict]  # the input's prompt turns (what the kept row's user side is)
    question: str
    gold: str
    source: str | None
    samples: int = 0  # first-try samples drawn
    correct: int = 0  # first-try samples with the right answer (duplicates included)
    probe_samples: int = 0
    probe_correct: int = 0
    quota: int = 0
    kept: list[dict] = field(default_factory=list)  # rows to keep (distinct correct solutions)
    texts: set = field(default_factory=set)

    @property
    def pass_rate(self) -> float:
        return self.correct / self.samples if self.samples else 0.0


class VerifiedCoT(Step):
    """Sample rationales per question, keep those with the gold answer, per a uniform or Prop2Diff quota."""

    kind: ClassVar[str] = "verified_cot"
    code_version: ClassVar[int] = 1
    needs_llm: ClassVar[bool] = True
    k: int = Field(4, ge=1)  # samples per question per round
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    quota_mode: Literal["uniform", "prop2diff"] = "uniform"
    quota: int = Field(1, ge=1)  # uniform: per question; prop2diff: total over the input
    max_samples: int = Field(16, ge=1)  # cap on first-try samples per question
    style: Literal["auto", "gsm8k", "math"] = "auto"
    strict_format: bool = True  # the answer must be stated, not just the last number in the text
    answer_timeout: float = Field(2.0, ge=0)  # seconds for the sympy fallback of the checker
    rationalize: bool = False
    rationalize_samples: int = Field(2, ge=1)
    seed: int | None = None  # default: the recipe's seed
    template: RecipePath | None = None  # default synth/prompts/cot_solve.txt ({question})
    rationalize_template: RecipePath | None = None  # default synth/prompts/cot_rationalize.txt ({question}, {gold})

    @property
    def is_global(self) -> bool:  # type: ignore[override]
        """Prop2Diff shares one budget over the whole input; uniform quotas work batch by batch."""
        return self.quota_mode == "prop2diff"

    def solve_template(self) -> PromptTemplate:
        return PromptTemplate(self.template, "cot_solve")

    def hint_template(self) -> PromptTemplate | None:
        """The rationalization prompt (with the gold answer as a hint), used only with `rationalize`."""
        return PromptTemplate(self.rationalize_template, "cot_rationalize") if self.rationalize else None

    def files(self) -> list[str]:
        hint = self.hint_template()
        return [*super().files(), str(self.solve_template().path), *([str(hint.path)] if hint else [])]

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        seed = ctx.seed if self.seed is None else self.seed
        solve = self.solve_template().read()
        hint = self.hint_template().read() if self.rationalize else None
        calls = TeacherCalls(ctx.llm, self.kind)
        rejects = calls.rejects

        questions: list[_Question] = []
        golds = df["gold"].to_list() if "gold" in df.columns else [None] * df.height
        sources = df["source"].to_list() if "source" in df.columns else [None] * df.height
        for i, (msgs, gold, src) in enumerate(zip(df["messages"].to_list(), golds, sources)):
            turns = prompt_turns(msgs or [])
            question = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "") or ""
            if gold is None or not str(gold).strip() or not question.strip():
                rejects.append({"messages": turns or [{"role": "user", "content": question}], "source": src,
                                "gold": gold, "reason": "no gold" if question.strip() else "no question",
                                "detail": None})
                continue
            questions.append(_Question(i, turns, question, str(gold).strip(), src))

        solve_hash = solve.hash
        rounds = 0
        while True:
            if rounds == 0:
                todo = [(q, min(self.k, self.max_samples)) for q in questions]
            else:
                todo = [(q, min(self.k, self.max_samples - q.samples)) for q in questions
                        if len(q.kept) < q.quota and q.samples < self.max_samples]
            if not todo:
                break
            rounds += 1
            requests, owners = [], []
            for q, n in todo:
                prompt = solve.render(question=q.question)
                for s in range(q.samples, q.samples + n):
                    requests.append(self._request(prompt, seed + s, s))
                    owners.append(q)
            responses = calls.ask(requests, f"round {rounds}")
            for q, req, resp in zip(owners, requests, responses):
                q.samples += 1
                ok = self._check(q, req, resp, calls, solve_hash, rationalized=False)
                q.correct += ok
                if rounds == 1:
                    q.probe_samples += 1
                    q.probe_correct += ok
            if rounds == 1:
                self._set_quotas(questions)

        # STaR rationalization for the questions no sample solved
        never = [q for q in questions if q.correct == 0] if self.rationalize else []
        if never:
            hint_hash = hint.hash
            requests, owners = [], []
            for q in never:
                prompt = hint.render(question=q.question, gold=q.gold)
                for s in range(self.rationalize_samples):
                    requests.append(self._request(prompt, seed + q.samples + s, q.samples + s))
                    owners.append(q)
            responses = calls.ask(requests, "rationalize")
            for q, req, resp in zip(owners, requests, responses):
                self._check(q, req, resp, calls, hint_hash, rationalized=True)

        rows = []
        for q in questions:
            for n, row in enumerate(q.kept):
                if n < q.quota:
                    row.update(score_cot_pass_rate=q.pass_rate, cot_samples=q.samples, cot_correct=q.correct,
                               cot_quota=q.quota)
                    rows.append(row)
                else:
                    rejects.append({k: v for k, v in row.items() if k not in ("meta", "rationalized")}
                                   | {"reason": "over quota", "detail": f"quota of {q.quota} already filled"})
        return calls.result(_frame(rows), self._stats(questions, df.height, rounds, len(rows), never))

    # -----------------------------------------------------------------------------------------
    def _request(self, prompt: str, seed: int, sample: int) -> Request:
        return Request.user(prompt, max_tokens=self.max_tokens, temperature=self.temperature,
                            top_p=self.top_p, seed=seed, sample=sample)

    def _set_quotas(self, questions: list[_Question]) -> None:
        if self.quota_mode == "uniform":
            for q in questions:
                q.quota = self.quota
            return
        fails = [1 - q.probe_correct / q.probe_samples if q.probe_samples else 1.0 for q in questions]
        for q, quota in zip(questions, prop2diff_quotas(fails, self.quota)):
            q.quota = quota

    def _check(self, q: _Question, req: Request, resp: Response, calls: TeacherCalls, thash: str,
               rationalized: bool) -> bool:
        """Grade one sample; a correct one joins q.kept (unless a duplicate), a wrong one
        calls.rejects. True if correct."""
        rejects = calls.rejects
        text = (resp.text or "").strip()
        src = q.source if not rationalized else f"{q.source or self.kind}+rationalized"
        asked = {"messages": q.turns, "gold": q.gold, "source": src}
        solution = q.turns + [{"role": "assistant", "content": text}]

        def graded() -> dict[str, Any] | Reject:
            if resp.finish_reason == "length":
                return Reject("truncated", f"cut at max_tokens={self.max_tokens}", messages=solution)
            pred, why = grade(text, q.gold, style=self.style, strict=self.strict_format, timeout=self.answer_timeout)
            if why is None and rationalized and _leaks_hint(text):
                why = "mentions the hint"
            if why:
                last_line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
                detail = f"{pred} (gold {q.gold})" if pred is not None else f"last line: {last_line[-200:]}"
                return Reject(why, detail, messages=solution, answer=pred)
            return {"answer": pred}

        got = outcome(req, resp, graded)
        if isinstance(got, Reject):
            rejects.append(got.row(asked))
            return False
        pred = got["answer"]
        base = {**asked, "messages": solution}
        if text in q.texts:
            rejects.append({**base, "answer": pred, "reason": "duplicate rationale",
                            "detail": "identical to a kept solution of the same question"})
            return True
        q.texts.add(text)
        reasoning, statement = split_solution(text)
        base["messages"] = q.turns + [{"role": "assistant", "content": statement}]
        q.kept.append({**base, "reasoning": reasoning, "answer": pred, "rationalized": rationalized,
                       "meta": calls.meta(req, resp, thash)})
        return True

    def _stats(self, questions: list[_Question], rows_in: int, rounds: int, rows_out: int,
               never: list[_Question]) -> dict[str, Any]:
        rates = [q.pass_rate for q in questions]
        budget = sum(q.quota for q in questions)
        filled = sum(min(len(q.kept), q.quota) for q in questions)
        first_try = sum(min(sum(not r["rationalized"] for r in q.kept), q.quota) for q in questions)
        samples = sum(q.samples for q in questions)
        cot = {
            "mode": self.quota_mode, "k": self.k, "max_samples": self.max_samples,
            "questions": len(questions), "without_gold": rows_in - len(questions), "rounds": rounds,
            "samples": samples, "correct_samples": sum(q.correct for q in questions),
            "pass_rate": {
                "mean": round(sum(rates) / len(rates), 4) if rates else None,
                "histogram": pass_rate_histogram(rates),
                "solved_questions": sum(q.correct > 0 for q in questions),
            },
            "quota": {
                "mode": self.quota_mode, "setting": self.quota, "total": budget, "filled": filled,
                "filled_first_try": first_try, "fill_rate": round(filled / budget, 4) if budget else None,
                "questions_full": sum(len(q.kept) >= q.quota for q in questions),
                "questions_capped": sum(len(q.kept) < q.quota and q.samples >= self.max_samples for q in questions),
                "questions_empty": sum(not q.kept for q in questions),
            },
            "rationalization": {"enabled": self.rationalize, "questions": len(never),
                                "samples": len(never) * self.rationalize_samples,
                                "kept": sum(sum(r["rationalized"] for r in q.kept[:q.quota]) for q in never)},
            "rows": rows_out,
        }
        if len(questions) <= 200:
            cot["per_question"] = [
                {"row": q.row, "pass_rate": round(q.pass_rate, 4), "samples": q.samples, "correct": q.correct,
                 "quota": q.quota, "kept": min(len(q.kept), q.quota),
                 "rationalized": sum(r["rationalized"] for r in q.kept[:q.quota])}
                for q in questions]
        generation = {"generated": samples + cot["rationalization"]["samples"], "kept": rows_out}
        return {"cot": cot, "generation": generation}


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    df = build_rows(rows)
    if not rows:  # the columns a kept frame has, so later steps and the report see them
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("score_cot_pass_rate"),
                             pl.lit(None, dtype=pl.Int64).alias("cot_samples"),
                             pl.lit(None, dtype=pl.Int64).alias("cot_correct"),
                             pl.lit(None, dtype=pl.Int64).alias("cot_quota"),
                             pl.lit(None, dtype=pl.Boolean).alias("rationalized"))
    return df



__all__ = ["VerifiedCoT", "final_answer", "grade", "pass_rate_histogram", "prop2diff_quotas", "split_solution"]
