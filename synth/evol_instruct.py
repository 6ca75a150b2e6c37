"""`evol_instruct`: rewrite instructions into harder or new ones, round by round, and eliminate the
failed rewrites.

Evol-Instruct (WizardLM; Xu et al. 2023, arXiv 2304.12244): each round an LLM rewrites every
instruction with one operation, in depth (add constraints, deepen, concretize, increase reasoning
steps, complicate the input) or in breadth (a new, rarer instruction of the same domain), then
answers it; an elimination step discards failed evolutions and the instruction goes back to the pool
unchanged. Most reimplementations skip the elimination; here it is the point:

  (a) no information gain: the rewrite equals the original after normalisation (case, spacing,
      punctuation), or, with `check_equal`, the teacher says the two ask for the same thing;
  (b) the response contains "sorry" and has fewer than `apology_max_words` (80) words;
  (c) the response is only punctuation and stop words;
  (d) the rewrite copies scaffold words of the rewriting prompt ("given prompt", "#Rewritten
      Prompt#", "the instruction below", ...; `scaffold_phrases`).
Plus parse failures: empty output, output cut at max_tokens, a rewrite longer than
`max_instruction_words` (usually the model answered the instruction instead of rewriting it). An
answer cut at `response_max_tokens` eliminates its evolution too ("truncated at max_tokens"; a seed
answered here with a cut answer goes to rejects the same way) unless `keep_truncated`.
A leading answer label ("New instruction:") is formatting and is removed before the checks.

Every failed evolution goes to rejects with a reason "evolution: ..." and the raw text in `detail`;
its lineage keeps the previous instruction for the next round. Output rows: the seeds (if
`keep_seeds`; a seed without an answer is answered once) and every surviving evolution with its
response. Provenance: `source` is "evol_instruct/r<round>/<operation>", and the columns
`evol_round`, `evol_op`, `evol_parent` (id of the row that was rewritten) and `evol_root` (id of the
seed) let a lineage be followed. Operations are drawn per lineage and round from `seed` and the
seed row's id, so a rerun (or a reordered input) makes the same choices.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator

from curate.llm import Request
from curate.records import concat, message_text
from curate.steps import Context, RecipePath, Step, StepResult
from synth.base import (
    FAILED,
    PromptTemplate,
    Reject,
    TeacherCalls,
    answered,
    build_rows,
    outcome,
    template_hash,
)

Operation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"]
OPERATIONS: tuple[str, ...] = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input",
                               "breadth")

# Words of the rewriting prompts (the paper's and ours): a rewrite that contains them copied the scaffold.
SCAFFOLD_PHRASES = [
    "given prompt", "rewritten prompt", "#rewritten prompt#", "created prompt", "#created prompt#", "#given prompt#",
    "given instruction", "original instruction", "the instruction below", "instruction above",
    "harder instruction", "deeper instruction", "more specific instruction", "changed instruction",
    "example instruction", "new instruction", "rewritten instruction",
]

# A short answer label in front of the rewrite ("**New instruction:**", "#Rewritten Prompt#:").
_LABEL = re.compile(
    r"^[\s#*\"'`]*(?:(?:the|your|my|here is (?:the|my)|here's (?:the|my))\s+)?"
    r"(?:(?:new|rewritten|created|evolved|harder|deeper|more specific|specific|changed|modified|updated|final)\s+)?"
    r"(?:instruction|prompt)[\s#*]*:[\s#*]*",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")

STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below between
both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few for from
further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his
how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most mustn't my myself no nor
not of off on once only or other ought our ours ourselves out over own same shan't she she'd she'll she's should
shouldn't so some such than that that's the their theirs them themselves then there there's these they they'd
they'll they're they've this those through to too under until up very was wasn't we we'd we'll we're we've were
weren't what what's when when's where where's which while who who's whom why why's with won't would wouldn't you
you'd you'll you're you've your yours yourself yourselves yes ok okay oh um uh well just also
""".split())


# ---------------------------------------------------------------------------------------------
# Pure checks (unit-tested on handmade cases)

def normalize_instruction(text: str) -> str:
    """Lower case, words only: two instructions equal under this have no information gain."""
    return " ".join(_WORD.findall(text.lower()))


def strip_label(text: str) -> str:
    """The rewrite without wrapping quotes and a leading answer label such as "New instruction:"."""
    text = text.strip()
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def copied_scaffold(text: str, phrases: list[str]) -> str | None:
    """The first scaffold phrase the rewrite contains (case-insensitive), or None."""
    low = text.lower()
    return next((p for p in phrases if p.lower() in low), None)


def only_stop_words(text: str) -> bool:
    """True when the text has no word outside the stop-word list (punctuation only counts as none)."""
    return all(w in STOP_WORDS for w in _WORD.findall(text.lower()))


def is_apology(text: str, max_words: int = 80) -> bool:
    """WizardLM's "hard for the LLM" signal: the response says sorry and is short."""
    return "sorry" in text.lower() and len(text.split()) < max_words


def parse_equal(text: str | None) -> bool | None:
    """The equality check's verdict: True (same: no information gain), False (different), None (unreadable)."""
    if not text:
        return None
    low = text.lower()
    if re.search(r"\b(different|not (?:the )?same|not equal|unequal)\b", low):
        return False
    if re.search(r"\b(same|equal|identical)\b", low):
        return True
    return None


def evolution_failure(original: str, evolved: str, finish_reason: str | None, *, max_words: int,
                      scaffold: list[str]) -> str | None:
    """Why a parsed rewrite fails before it is answered (None when it passes)."""
    if not evolved or not _WORD.search(evolved):
        return "evolution: empty output"
    if finish_reason == "length":
        return "evolution: truncated output"
    if len(evolved.split()) > max_words:
        return "evolution: too long"
    if copied_scaffold(evolved, scaffold):
        return "evolution: copied prompt words"
    if normalize_instruction(evolved) == normalize_instruction(original):
        return "evolution: no information gain"
    return None


def response_failure(text: str | None, apology_max_words: int = 80) -> str | None:
    """Why the response to a rewrite eliminates it (None when it passes)."""
    text = (text or "").strip()
    if not text:
        return "evolution: empty response"
    if is_apology(text, apology_max_words):
        return "evolution: apology response"
    if only_stop_words(text):
        return "evolution: response only stop words"
    return None


def last_user(messages: list[dict] | None) -> str:
    """The instruction of a row: its last user turn (a system prompt is not part of what evolves)."""
    return next((m["content"] or "" for m in reversed(messages or []) if m["role"] == "user"), "")


# ---------------------------------------------------------------------------------------------

class EvolInstruct(Step):
    """Evolve each input instruction for `rounds` rounds; keep the seeds and every surviving evolution."""

    kind: ClassVar[str] = "evol_instruct"
    code_version: ClassVar[int] = 1
    needs_llm: ClassVar[bool] = True
    rounds: int = Field(2, ge=1)
    operations: list[Operation] = Field(default_factory=lambda: list(OPERATIONS))
    seed: int | None = None  # default: the recipe's seed
    keep_seeds: bool = True
    # Evolution (rewriting) requests
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    # Responses to the evolved instructions (and to seeds that have none)
    response_temperature: float = Field(0.7, ge=0)
    response_max_tokens: int = Field(512, ge=1)
    keep_truncated: bool = False  # keep answers cut at response_max_tokens (they end mid-answer)
    # Elimination
    check_equal: bool = False  # also ask the teacher whether the rewrite adds anything (rule a)
    apology_max_words: int = Field(80, ge=1)
    max_instruction_words: int = Field(300, ge=1)
    scaffold_phrases: list[str] = Field(default_factory=lambda: list(SCAFFOLD_PHRASES))
    # Prompt templates: operation name (or "equal") -> file; default synth/prompts/evol_<name>.txt
    templates: dict[str, RecipePath] = Field(default_factory=dict)

    @field_validator("operations")
    @classmethod
    def _some_operations(cls, ops: list[str]) -> list[str]:
        if not ops:
            raise ValueError("give at least one operation")
        return list(dict.fromkeys(ops))

    @field_validator("templates")
    @classmethod
    def _known_templates(cls, templates: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(templates) - set(OPERATIONS) - {"equal"})
        if unknown:
            raise ValueError(f"unknown template names {unknown}; use operation names {list(OPERATIONS)} or 'equal'")
        return templates

    def files(self) -> list[str]:
        names = [*self.operations, *(["equal"] if self.check_equal else [])]
        return [*super().files(), *(str(self.template(n).path) for n in names)]

    def template(self, name: str) -> PromptTemplate:
        """The prompt of an operation, or of the equality check ("equal")."""
        return PromptTemplate(self.templates.get(name), f"evol_{name}")

    def pick_operation(self, seed: int, root_id: str, round_no: int) -> str:
        """The operation for one lineage in one round: random but fixed by (seed, seed row id, round)."""
        return random.Random(f"{seed}/{root_id}/{round_no}").choice(self.operations)

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        seed = ctx.seed if self.seed is None else self.seed
        calls = TeacherCalls(ctx.llm, self.kind)
        templates = {op: self.template(op).read() for op in self.operations}
        equal_template = self.template("equal").read() if self.check_equal else None

        instructions = [last_user(m) for m in df["messages"].to_list()]
        answers = message_text(df, "response").to_list()
        ids = df["id"].to_list()
        kept_frames: list[pl.DataFrame] = []
        stats: dict[str, Any] = {"seeds": df.height, "rounds": []}

        # Seeds: kept as they are, answered first where they have no answer.
        out_ids: dict[int, str] = {}
        if self.keep_seeds:
            seeds, out_ids = self._seed_rows(df, answers, seed, calls)
            kept_frames.append(seeds)
        stats["seed_rows_kept"] = sum(f.height for f in kept_frames)

        # Each lineage: [current instruction, id of the row holding it, id of its seed row in the
        # output, id of the input row (fixes the operation draws)].
        pool = [[q, out_ids.get(k, i), out_ids.get(k, i), i] for k, (q, i) in enumerate(zip(instructions, ids))]
        live = [k for k, p in enumerate(pool) if p[0].strip()]
        for round_no in range(1, self.rounds + 1):
            kept, round_stats = self._round(round_no, pool, live, templates, equal_template, seed, calls)
            kept_frames.append(kept)
            stats["rounds"].append(round_stats)

        # generated = rewrites asked for, parsed = rewrites that passed the cheap checks (and the
        # equality check), kept = evolutions that also passed the response checks.
        evolved = sum(r["evolved"] for r in stats["rounds"])
        attempted = sum(r["attempted"] for r in stats["rounds"])
        stats.update(evolved_rows=evolved, generated=attempted,
                     parsed=sum(r["parsed"] for r in stats["rounds"]), kept=evolved)
        kept = concat([f for f in kept_frames if f.height])
        if kept.height == 0:
            kept = build_rows([])
        return calls.result(kept, {"generation": stats})


    def _response_request(self, instruction: str, seed: int) -> Request:
        return Request.user(instruction, max_tokens=self.response_max_tokens,
                            temperature=self.response_temperature, top_p=self.top_p, seed=seed)

    def _seed_rows(self, df: pl.DataFrame, answers: list[str], seed: int,
                   calls: TeacherCalls) -> tuple[pl.DataFrame, dict[int, str]]:
        """The seed rows for the output (answered where they had no answer) and, per input row, the
        id of its output row (so `evol_parent` of a first-round rewrite points at it)."""
        from synth.responses import prompt_turns

        msgs, ids, sources = df["messages"].to_list(), df["id"].to_list(), df["source"].to_list()
        have = [k for k, a in enumerate(answers) if a.strip()]
        todo = [k for k, a in enumerate(answers) if not a.strip()]
        requests = [Request.chat(prompt_turns(msgs[k]), max_tokens=self.response_max_tokens,
                                 temperature=self.response_temperature, top_p=self.top_p, seed=seed) for k in todo]
        responses = calls.ask(requests, "seeds")
        made, made_k = [], []
        for k, req, resp in zip(todo, requests, responses):
            row = {"messages": prompt_turns(msgs[k]), "source": sources[k]}
            got = outcome(req, resp, lambda: answered(row["messages"], resp), keep_truncated=self.keep_truncated,
                          setting="response_max_tokens")
            if isinstance(got, Reject):
                calls.rejects.append(got.row(row))
            else:  # the seed itself is the prompt: no template
                made.append({**row, **got, "meta": calls.meta(req, resp, template_hash(""))})
                made_k.append(k)
        new = build_rows(made)
        out_ids = {k: ids[k] for k in have} | dict(zip(made_k, new["id"].to_list()))
        frame = concat([df[have], new]) if made else df[have]
        frame = frame.with_columns(pl.lit(0, dtype=pl.Int64).alias("evol_round"),
                                   pl.lit(None, dtype=pl.String).alias("evol_op"),
                                   pl.lit(None, dtype=pl.String).alias("evol_parent"),
                                   pl.col("id").alias("evol_root"))
        return frame, out_ids

    def _round(self, round_no, pool, live, templates, equal_template, seed, calls: TeacherCalls):
        """One round over the live lineages; updates `pool` in place for the evolutions that survive."""
        rejects = calls.rejects
        ops = {k: self.pick_operation(seed, pool[k][3], round_no) for k in live}
        evo_reqs = {k: Request.user(templates[ops[k]].render(instruction=pool[k][0]),
                                    max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                    seed=seed + round_no)
                    for k in live}
        evo_resps = dict(zip(evo_reqs, calls.ask(list(evo_reqs.values()), f"r{round_no}")))

        def base_row(k, text):
            return {"messages": [{"role": "user", "content": text}], "source": f"{self.kind}/r{round_no}/{ops[k]}",
                    "evol_round": round_no, "evol_op": ops[k], "evol_parent": pool[k][1], "evol_root": pool[k][2]}

        reasons: dict[str, int] = {}

        def reject(k, text, reason, detail):
            rejects.append({**base_row(k, text), "reason": reason, "detail": detail})
            reasons[reason] = reasons.get(reason, 0) + 1

        # 1. parse the rewrites and run the cheap checks
        parsed: dict[int, str] = {}
        for k in live:
            resp = evo_resps[k]
            if not resp.ok:
                reject(k, pool[k][0], FAILED, resp.error)
                continue
            text = strip_label(resp.text or "")
            why = evolution_failure(pool[k][0], text, resp.finish_reason, max_words=self.max_instruction_words,
                                    scaffold=self.scaffold_phrases)
            if why:
                reject(k, text or pool[k][0], why, resp.text)
            else:
                parsed[k] = text
        n_parsed = len(parsed)

        # 2. optional LLM equality check (rule a)
        made_by: dict[int, list] = {k: [("evolve", evo_reqs[k], evo_resps[k])] for k in parsed}  # a row's calls
        if equal_template is not None and parsed:
            eq_reqs = {k: Request.user(equal_template.render(original=pool[k][0], evolved=parsed[k]),
                                       max_tokens=8, temperature=0.0, seed=seed) for k in parsed}
            eq_resps = dict(zip(eq_reqs, calls.ask(list(eq_reqs.values()), f"r{round_no} equal")))
            for k in list(parsed):
                resp = eq_resps[k]
                verdict = parse_equal(resp.text) if resp.ok else None
                if not resp.ok:
                    reject(k, parsed.pop(k), FAILED, resp.error)
                elif verdict is None:
                    reject(k, parsed.pop(k), "evolution: equality check unparseable", resp.text)
                elif verdict:
                    reject(k, parsed.pop(k), "evolution: no information gain", f"equality check: {resp.text}")
                else:
                    made_by[k].append(("equal", eq_reqs[k], resp))

        # 3. answer the surviving rewrites, then rules b and c on the answers
        ans_reqs = {k: self._response_request(parsed[k], seed) for k in parsed}
        ans_resps = dict(zip(ans_reqs, calls.ask(list(ans_reqs.values()), f"r{round_no} responses")))

        def judge_answer(turns, resp):
            """Rules b and c on the answer to a rewrite (the answer is kept in the rejected row)."""
            answer = (resp.text or "").strip()
            messages = turns + [{"role": "assistant", "content": answer}]
            why = response_failure(answer, self.apology_max_words)
            return Reject(why, messages=messages) if why else {"messages": messages}

        rows, op_counts = [], {}
        for k, text in parsed.items():
            resp, row = ans_resps[k], base_row(k, text)
            got = outcome(ans_reqs[k], resp, lambda: judge_answer(row["messages"], resp),
                          keep_truncated=self.keep_truncated, setting="response_max_tokens")
            if isinstance(got, Reject):
                rejects.append(got.row(row))
                reasons[got.reason] = reasons.get(got.reason, 0) + 1
                continue
            row.update(got, meta=calls.combined_meta(made_by[k] + [("response", ans_reqs[k], resp)], templates[ops[k]].hash))
            rows.append((k, row))
            op_counts[ops[k]] = op_counts.get(ops[k], 0) + 1

        frame = build_rows([r for _, r in rows])
        for (k, row), row_id in zip(rows, frame["id"].to_list() if frame.height else []):
            pool[k][0], pool[k][1] = row["messages"][0]["content"], row_id  # the lineage moves on
        return frame, {"round": round_no, "attempted": len(live), "parsed": n_parsed, "evolved": len(rows),
                       "eliminated": reasons, "operations": op_counts}
