"""`self_instruct`: grow a task pool from a few seed tasks, then write an instance for each new task.

Self-Instruct (Wang et al. 2022, "Self-Instruct: Aligning Language Models with Self-Generated
Instructions", arXiv 2212.10560). Loop, round by round, until `target` new instructions are in the
pool or `max_rounds` have run:
  1. instruction generation: each of `requests_per_round` prompts shows `num_human` seed
     instructions and `num_generated` instructions generated in earlier rounds (8 in all, 6 + 2 as
     in the paper; while too few are generated the rest are seeds), numbered, and asks for
     `new_per_request` more; the in-context draw is fixed by (seed, round, prompt index);
  2. parsing: the reply's numbered list ("9. ...", "Task 10: ...", "**11.** ..."); a line that does
     not start a number continues the item above it; text before the list and after a blank line
     that follows it is ignored. An item cut by `max_tokens` is dropped as "truncated";
  3. filtering, in this order, every drop a reject with its reason:
       "too short" / "too long"    fewer than `min_words` or more than `max_words` words (3, 150);
       "malformed"                 does not start with a letter, digit or quote (list debris);
       "unusable keyword"          names something a text model cannot handle (image, picture,
                                   graph, file, video, ... : `unusable_words`, whole words);
       "copied prompt words"       80% of its words appear in order in the generation prompt's
                                   own text, or it has a `scaffold_phrases` entry ("new tasks",
                                   "the numbering", ...): it is about the prompt, not a task;
       "similar to pool"           ROUGE-L F >= `rouge_threshold` (0.7) against any instruction
                                   already in the pool, seeds and earlier kept candidates of the
                                   same round included (synth.rouge.NoveltyFilter: exact, indexed);
       "over target"               accepted in the last round after `target` was reached;
  4. instance generation, input first, for every accepted instruction: the teacher sees
     `instance_examples` seed tasks with their input and output, then the new task, and writes
     "Input: ..." (or <none>) and "Output: ...". A reply with neither label is taken as the output
     of a task with no input. Drops: "instance truncated", "unparsable instance" (an input label
     without an output label, or text before "Output:" with no input label), "no output",
     "output repeats input",
     and with `instances_per_task` > 1, "duplicate instance" (same input and output) and
     "same input, different output" (the paper's instance filters; the first instance is kept).
The paper's classification branch (output-first instance generation for classification tasks,
after a yes/no classification call) is not implemented: every task is generated input-first.

Seeds are the recipe's input rows (the Alpaca reader makes one from instruction, input, output):
the first user turn is the seed's instruction, and the text after its first blank line (where the
reader put the Alpaca `input`) is the seed's input; the last assistant turn is its output. Seeds
without an output still serve as in-context instructions, not as instance examples.

Output rows are the generated tasks: user = instruction (+ blank line + input), assistant =
output, source "self_instruct", `self_instruct_round` (the round that made the instruction), meta
with the params and tokens of both calls. With `keep_seeds` the seed rows that have an answer are
passed through first.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

import polars as pl
from pydantic import Field, model_validator

from curate.errors import CurateError
from curate.llm import Request, Response
from curate.records import concat
from curate.steps import Context, RecipePath, Step, StepResult
from synth.base import (
    FAILED,
    PromptTemplate,
    Reject,
    TeacherCalls,
    build_rows,
    outcome,
    template_hash,
)
from synth.rouge import NoveltyFilter, lcs_length, tokenize

# Things a text-only model cannot see, hear, open or produce (Self-Instruct drops instructions that
# mention such things). Matched as whole words, case-insensitive.
UNUSABLE_WORDS = [
    "image", "images", "picture", "pictures", "photo", "photos", "photograph", "graph", "graphs",
    "chart", "charts", "diagram", "diagrams", "flowchart", "drawing", "draw", "sketch", "plot",
    "map", "maps", "file", "files", "attachment", "attached", "upload", "download", "video", "videos",
    "audio", "sound", "music", "recording", "website", "url", "link", "browse", "go to", "screenshot",
]

# Words of the generation prompt that no real task needs: an instruction with them is about the prompt.
SCAFFOLD_PHRASES = ["new tasks", "tasks above", "the numbering", "numbered line", "text-based ai assistant",
                    "tasks for the set", "in the set", "from each other"]

# "9. text", "9) text", "Task 9: text", "**9.** text", "- 9. text", "#9: text"
_ITEM = re.compile(r"^\s*(?:[-*]\s*)?(?:\*\*)?(?:(?:task|instruction)\s*)?#?\s*(\d{1,3})\s*(?:\*\*)?\s*[.):\-]"
                   r"(?:\*\*)?\s*(.*)$", re.IGNORECASE)
# "Task:", "**New instruction:**", "No 5:", "Task 3 -" in front of the instruction itself
_LEAD_LABEL = re.compile(r"^(?:\*\*)?\s*(?:(?:new\s+)?(?:task|instruction)\s*(?:#?\d+)?|no\.?\s*\d+|#\d+)\s*(?:\*\*)?"
                         r"\s*[:\-]\s*(?:\*\*)?\s*", re.IGNORECASE)
# "Input:", "**Input:**", "## Output:" at the start of a line
_INPUT = re.compile(r"^[ \t*_#>-]{0,4}input[ \t*_]{0,4}:[ \t*_]*", re.IGNORECASE | re.MULTILINE)
_OUTPUT = re.compile(r"^[ \t*_#>-]{0,4}output[ \t*_]{0,4}:[ \t*_]*", re.IGNORECASE | re.MULTILINE)
_NEXT_TASK = re.compile(r"^[ \t*_#>-]{0,4}task[ \t*_]{0,4}:", re.IGNORECASE | re.MULTILINE)
_NO_INPUT = {"", "<none>", "none", "<noinput>", "n/a", "na", "no input", "(none)", "-", "<empty>", "empty"}


# ---------------------------------------------------------------------------------------------
# Pure functions (unit-tested on handmade text)

def clean_instruction(text: str) -> str:
    """One instruction: label ("Task:"), markdown bold and wrapping quotes removed, spaces collapsed."""
    text = _LEAD_LABEL.sub("", text.strip(), count=1).replace("**", "")
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def parse_numbered(text: str | None) -> list[str]:
    """The items of a numbered list, in order (cleaned; empty items kept as "" so they can be counted)."""
    items: list[list[str]] = []
    open_item = False
    for line in (text or "").splitlines():
        m = _ITEM.match(line)
        if m:
            items.append([m.group(2)])
            open_item = True
        elif not line.strip():
            open_item = False
        elif open_item:
            items[-1].append(line.strip())
    return [clean_instruction(" ".join(parts)) for parts in items]


def _word_pattern(words: list[str]) -> re.Pattern | None:
    if not words:
        return None
    alts = sorted((re.escape(w.lower()).replace(r"\ ", r"\s+") for w in words), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(?:" + "|".join(alts) + r")(?![\w-])", re.IGNORECASE)


def instruction_failure(text: str, *, min_words: int = 3, max_words: int = 150,
                        unusable: re.Pattern | None = None) -> tuple[str, str] | None:
    """(reason, detail) when an instruction is unusable, else None (novelty is checked by the caller)."""
    n = len(text.split())
    if n < min_words:
        return "too short", f"{n} words < {min_words}"
    if n > max_words:
        return "too long", f"{n} words > {max_words}"
    if not (text[0].isalnum() or text[0] in "\"'“‘"):
        return "malformed", f"starts with {text[0]!r}"
    if unusable is not None:
        m = unusable.search(text)
        if m:
            return "unusable keyword", m.group(0).lower()
    return None


def copies_prompt(text: str, prompt_tokens: list[str], share: float = 0.8) -> bool:
    """True when `share` of the instruction's words appear, in order, in the prompt's own text
    (the model listed the prompt's wording instead of a task: cf. Evol-Instruct's scaffold check)."""
    words = tokenize(text)
    return bool(words) and bool(prompt_tokens) and lcs_length(words, prompt_tokens) >= share * len(words)


def parse_instance(text: str | None) -> tuple[str, str] | None:
    """(input, output) from an instance reply: "Input: ... Output: ..." ("<none>" input -> "").

    A reply with neither label is all output (a task with no input). None (unparsable) when there
    is an input label but no output label, or text before an output label but no input label (is
    it the input or the answer?). The output ends at a following "Task:" / "Input:" / "Output:"
    line (the model starting another example)."""
    text = (text or "").strip()
    nxt = _NEXT_TASK.search(text)
    if nxt and nxt.start() > 0:
        text = text[: nxt.start()].rstrip()
    mi, mo = _INPUT.search(text), _OUTPUT.search(text)
    if mo is None:
        return None if mi or "<none>" in text.lower() else ("", text)  # "<none>" unlabelled: format debris
    if mi is not None and mi.start() < mo.start():
        inp = text[mi.end(): mo.start()].strip()
    elif text[: mo.start()].strip():
        return None
    else:
        inp = ""
    out = text[mo.end():]
    again = [m.start() for m in (_INPUT.search(out), _OUTPUT.search(out)) if m is not None and m.start() > 0]
    out = (out[: min(again)] if again else out).strip()
    if inp.strip("*_ .`\"'").lower() in _NO_INPUT or inp.strip().lower() in _NO_INPUT:
        inp = ""
    return inp, out


def split_seed(user: str) -> tuple[str, str]:
    """(instruction, input) of a seed's user turn: the reader joins Alpaca's two with a blank line."""
    parts = re.split(r"\n\s*\n", user.strip(), maxsplit=1)
    return parts[0].strip(), (parts[1].strip() if len(parts) > 1 else "")


def format_instance(instruction: str, inp: str, out: str) -> str:
    return f"Task: {instruction}\nInput: {inp or '<none>'}\nOutput: {out}"


# ---------------------------------------------------------------------------------------------

class SelfInstruct(Step):
    """Grow `target` new instructions from the input rows (seed tasks), then write an instance for each."""

    kind: ClassVar[str] = "self_instruct"
    code_version: ClassVar[int] = 1
    needs_llm: ClassVar[bool] = True
    # Pool growth
    target: int = Field(20, ge=1)  # new instructions to accept
    max_rounds: int = Field(5, ge=1)
    requests_per_round: int = Field(4, ge=1)
    num_human: int = Field(6, ge=0)  # in-context seed instructions per prompt
    num_generated: int = Field(2, ge=0)  # in-context generated instructions per prompt (seeds fill in)
    new_per_request: int = Field(8, ge=1)  # instructions asked for per prompt
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    # Filters
    rouge_threshold: float = Field(0.7, ge=0, le=1)
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    unusable_words: list[str] = Field(default_factory=lambda: list(UNUSABLE_WORDS))
    scaffold_phrases: list[str] = Field(default_factory=lambda: list(SCAFFOLD_PHRASES))
    # Instances
    instances_per_task: int = Field(1, ge=1)
    instance_examples: int = Field(2, ge=0)  # seed tasks with outputs shown in the instance prompt
    instance_temperature: float = Field(0.7, ge=0)
    instance_max_tokens: int = Field(384, ge=1)
    keep_seeds: bool = False  # also output the seed rows that have an answer
    seed: int | None = None  # default: the recipe's seed
    instruction_template: RecipePath | None = None  # default synth/prompts/self_instruct_instructions.txt
    instance_template: RecipePath | None = None  # default synth/prompts/self_instruct_instance.txt

    @model_validator(mode="after")
    def _some_context(self):
        if self.num_human + self.num_generated == 0:
            raise ValueError("num_human + num_generated must be at least 1 (the prompt needs examples)")
        return self

    def prompt_templates(self) -> tuple[PromptTemplate, PromptTemplate]:
        """(the prompt that asks for new instructions, the prompt that writes an instance of one)."""
        return (PromptTemplate(self.instruction_template, "self_instruct_instructions"),
                PromptTemplate(self.instance_template, "self_instruct_instance"))

    def files(self) -> list[str]:
        return [*super().files(), *(str(t.path) for t in self.prompt_templates())]

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        seed = ctx.seed if self.seed is None else self.seed
        seeds = _seed_tasks(df)
        if not seeds:
            raise CurateError("self_instruct needs seed tasks: give the recipe `inputs` (e.g. an Alpaca jsonl "
                              "with instruction / input / output)")
        gen_t, inst_t = (t.read() for t in self.prompt_templates())
        thash = template_hash(gen_t.text + "\0" + inst_t.text)  # every row is made by both prompts
        calls = TeacherCalls(ctx.llm, self.kind)
        rejects = calls.rejects
        unusable = _word_pattern(self.unusable_words)
        # the prompt's own words (placeholders out), for the "copied prompt words" check
        prompt_tokens = tokenize(re.sub(r"\{\w+\}", " ", gen_t.text))
        human = [s["instruction"] for s in seeds]
        novelty = NoveltyFilter(human, self.rouge_threshold)
        # accepted: (instruction, round, request, response)
        accepted: list[tuple[str, int, Request, Response]] = []
        counts: dict[str, int] = {"requests": 0, "parsed": 0}
        rounds = []

        def drop(text: str, reason: str, detail: str | None) -> None:
            rejects.append({"messages": [{"role": "user", "content": text}], "source": self.kind,
                            "reason": reason, "detail": detail})

        for round_no in range(1, self.max_rounds + 1):
            if len(accepted) >= self.target:
                break
            generated = [a[0] for a in accepted]
            requests = []
            for j in range(self.requests_per_round):
                examples = self.in_context(human, generated, seed, round_no, j)
                prompt = gen_t.render(examples="\n".join(f"{i}. {e}" for i, e in enumerate(examples, 1)),
                                      n=self.new_per_request, start=len(examples) + 1)
                requests.append(Request.user(prompt, max_tokens=self.max_tokens, temperature=self.temperature,
                                             top_p=self.top_p, seed=seed + (round_no - 1) * self.requests_per_round + j,
                                             sample=j))
            responses = calls.ask(requests, f"instructions r{round_no}")
            counts["requests"] += len(requests)
            usable: list[tuple[str, Request, Response]] = []
            parsed_round = 0
            for req, resp in zip(requests, responses):
                if not resp.ok:  # request-level drops carry the prompt as their user turn
                    drop(req.messages[-1][1], FAILED, resp.error)
                    continue
                items = parse_numbered(resp.text)
                if not any(items):
                    drop(req.messages[-1][1], "no instructions parsed", resp.text)
                    continue
                parsed_round += len(items)
                if resp.finish_reason == "length":  # the last item may be cut mid-sentence
                    drop(items[-1], "truncated", resp.text)
                    items = items[:-1]
                for text in items:
                    why = instruction_failure(text, min_words=self.min_words, max_words=self.max_words,
                                              unusable=unusable)
                    if why is None:
                        low = text.lower()
                        phrase = next((p for p in self.scaffold_phrases if p.lower() in low), None)
                        if phrase or copies_prompt(text, prompt_tokens):
                            why = ("copied prompt words",
                                   f"contains {phrase!r}" if phrase else "repeats the generation prompt's wording")
                    if why:
                        drop(text, *why)
                    else:
                        usable.append((text, req, resp))
            keep = novelty.filter([u[0] for u in usable])
            pool = novelty.pool
            new_round = 0
            for (text, req, resp), ok, hit in zip(usable, keep, novelty.last_matches):
                if not ok:
                    j, score = hit
                    drop(text, "similar to pool", f"ROUGE-L {score:.3f} vs: {pool[j]}")
                elif len(accepted) >= self.target:
                    drop(text, "over target", f"target of {self.target} instructions reached")
                else:
                    accepted.append((text, round_no, req, resp))
                    new_round += 1
            counts["parsed"] += parsed_round
            rounds.append({"round": round_no, "requests": len(requests), "parsed": parsed_round,
                           "usable": len(usable), "accepted": new_round})

        rows, instance_stats = self._instances(accepted, seeds, inst_t, thash, seed, calls)
        new = build_rows(rows)
        frames = []
        if self.keep_seeds:
            has_answer = df["messages"].list.eval(pl.element().struct.field("role") == "assistant").list.any()
            frames.append(df.filter(has_answer))
        frames.append(new)
        kept = concat([f for f in frames if f.height]) if any(f.height for f in frames) else new
        stats = {
            "seeds": len(seeds), "rounds": rounds, "requests": counts["requests"],
            "generated": counts["parsed"], "parsed": counts["parsed"], "accepted_instructions": len(accepted),
            "target": self.target, "pool_size": len(novelty), "rouge_pairs_checked": novelty.pairs_checked,
            **instance_stats, "kept": len(rows), "seed_rows_kept": kept.height - len(rows),
        }
        return calls.result(kept, {"generation": stats})

    def in_context(self, human: list[str], generated: list[str], seed: int, round_no: int, j: int) -> list[str]:
        """The prompt's example instructions: `num_generated` generated ones (as many as exist) and
        seeds for the rest, drawn from a generator fixed by (seed, round, prompt), seeds first."""
        rng = random.Random(f"self_instruct/{seed}/{round_no}/{j}")
        n_gen = min(self.num_generated, len(generated))
        n_human = min(self.num_human + self.num_generated - n_gen, len(human))
        picks = rng.sample(human, n_human) + rng.sample(generated, n_gen)
        return picks

    def _instances(self, accepted, seeds, template: PromptTemplate, thash: str, seed: int, calls: TeacherCalls):
        examples_from = [s for s in seeds if s["output"]]
        requests = []
        for k, (text, round_no, _, _) in enumerate(accepted):
            rng = random.Random(f"self_instruct/{seed}/instance/{k}")
            shots = rng.sample(examples_from, min(self.instance_examples, len(examples_from)))
            prompt = template.render(examples="\n\n".join(format_instance(s["instruction"], s["input"], s["output"])
                                                          for s in shots), instruction=text)
            for i in range(self.instances_per_task):
                requests.append(Request.user(prompt, max_tokens=self.instance_max_tokens,
                                             temperature=self.instance_temperature, top_p=self.top_p,
                                             seed=seed + k * self.instances_per_task + i, sample=i))
        responses = calls.ask(requests, "instances")
        rows = []
        dropped = 0
        for idx, (req, resp) in enumerate(zip(requests, responses)):
            text, round_no, g_req, g_resp = accepted[idx // self.instances_per_task]
            if idx % self.instances_per_task == 0:
                seen: dict[str, str] = {}  # input -> output of the instances kept for this task
            user = [{"role": "user", "content": text}]

            def instance() -> dict[str, Any] | Reject:
                if resp.finish_reason == "length":
                    return Reject("instance truncated")
                parsed = parse_instance(resp.text)
                if parsed is None:
                    return Reject("unparsable instance")
                if not parsed[1].strip():
                    return Reject("no output")
                if parsed[0] and parsed[1].strip() == parsed[0].strip():
                    return Reject("output repeats input")
                if parsed[0] in seen:
                    return Reject("duplicate instance" if seen[parsed[0]] == parsed[1] else "same input, different output")
                return {"input": parsed[0], "output": parsed[1]}

            got = outcome(req, resp, instance)
            if isinstance(got, Reject):
                dropped += 1
                calls.rejects.append(got.row({"messages": user, "source": self.kind}))
                continue
            inp, out = got["input"], got["output"]
            seen[inp] = out
            prompt_text = f"{text}\n\n{inp}" if inp else text
            rows.append({
                "messages": [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": out}],
                "source": self.kind, "self_instruct_round": round_no,
                "meta": calls.combined_meta([("instruction", g_req, g_resp), ("instance", req, resp)], thash),
            })
        return rows, {"instances_generated": len(requests), "instances_dropped": dropped}


def _seed_tasks(df: pl.DataFrame) -> list[dict[str, str]]:
    seeds = []
    for msgs in df["messages"].to_list() if df.height else []:
        user = next((m["content"] for m in msgs or [] if m["role"] == "user"), None)
        if not user or not user.strip():
            continue
        out = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), None)
        instruction, inp = split_seed(user)
        seeds.append({"instruction": instruction, "input": inp, "output": (out or "").strip()})
    return seeds

