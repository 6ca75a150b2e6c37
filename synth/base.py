"""What every generator shares: prompt templates in files (`PromptTemplate`), the per-row `meta`
record, the one way a teacher response becomes a row or a reject (`outcome`), `RowGenerator`, the
base of generators that answer each row on its own, and `TeacherCalls`, the teacher side of those
that run rounds of their own.

Templates are plain text files with {name} placeholders filled by `render` (plain replacement, so
braces in instructions and code stay as they are). A recipe overrides a generator's template with
a path; the template's hash goes into every row's meta, so a changed prompt is visible in the data.

A generator that answers each row on its own (responses, backtranslation) is a `RowGenerator`: it
says how to build requests from a row and how to parse a response into a row or a `Reject`; the
base does the rest (one `LLM.generate` call per batch, so cache, concurrency window, retries and
usage are the LLM layer's; meta; failed requests, parse failures and cut responses to rejects).
Multi-round methods (Evol-Instruct, Self-Instruct's pool, CoT rounds, Magpie's query-then-answer)
keep their own loop, send each batch through `TeacherCalls` and decide each response with the same
`outcome`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar

import polars as pl

from curate.errors import CurateError
from curate.llm import LLM, Request, Response, Usage
from curate.records import META, conform, with_ids
from curate.steps import Context, Step, StepResult

PROMPTS = Path(__file__).parent / "prompts"

# The reject reason of a response the teacher stopped at max_tokens (finish_reason "length"): it
# ends wherever the budget ran out, often mid-sentence, and would teach a model to stop there.
TRUNCATED = "truncated at max_tokens"
# The reject reason of a request that failed for good (the error in detail); the next run resends it.
FAILED = "teacher request failed"
# The reject reason of a response whose parse raised ValueError (the error and the raw output in detail).
UNPARSEABLE = "unparseable output"


def template_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def render(template: str, **fields: Any) -> str:
    for name, value in fields.items():
        template = template.replace("{" + name + "}", str(value))
    return template


@dataclass(frozen=True)
class PromptTemplate:
    """A generator's prompt file: the recipe's (`override`) if it names one, else
    synth/prompts/<default_name>.txt. The step lists `path` in `files()`, so the step hash covers
    the file it reads; `hash` goes into every row's meta, so a changed prompt is visible in the data."""

    override: str | None
    default_name: str

    @property
    def path(self) -> Path:
        return Path(self.override) if self.override else PROMPTS / f"{self.default_name}.txt"

    @cached_property
    def text(self) -> str:
        if not self.path.exists():
            raise CurateError(f"prompt template {self.path}: no such file")
        return self.path.read_text(encoding="utf-8")

    def read(self) -> PromptTemplate:
        """This template with its text read now, so that a missing file fails before any request
        is paid for (`text` would otherwise be read on first use)."""
        _ = self.text
        return self

    @property
    def hash(self) -> str:
        return template_hash(self.text)

    def render(self, **fields: Any) -> str:
        return render(self.text, **fields)


def teacher_meta(llm: LLM, request: Request, response: Response, thash: str) -> dict[str, Any]:
    """The `meta` struct of a generated row: who answered, with what settings, at what cost."""
    return {
        "teacher": llm.model,
        "backend": llm.backend.name,
        "params": json.dumps(request.params(), sort_keys=True),
        "seed": request.seed,
        "sample": request.sample,
        "template_hash": thash,
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "cost": llm.price.cost(response.prompt_tokens, response.completion_tokens),
        "finish_reason": response.finish_reason,
    }


def cut_off(response: Response) -> bool:
    """True when the teacher stopped because max_tokens ran out, not because it had finished."""
    return response.finish_reason == "length"


class TeacherCalls:
    """The teacher side of a generator that runs rounds of its own (CoT, Evol-Instruct,
    Self-Instruct, Magpie): every batch goes through `ask`, which adds its usage to the step's
    total; rejected rows are collected in `rejects`; `result` is the StepResult every such
    generator returns (kept rows, rejects, the usage under stats["llm"]), so none of them can
    forget a part of it."""

    def __init__(self, llm: LLM, kind: str):
        self.llm, self.kind = llm, kind
        self.usage = Usage()
        self.rejects: list[dict[str, Any]] = []

    def ask(self, requests: list[Request], label: str) -> list[Response]:
        """One batch of teacher calls, shown as "<kind> <label>" (e.g. "self_instruct instances")."""
        if not requests:
            return []
        responses, used = self.llm.generate(requests, label=f"{self.kind} {label}")
        self.usage.add(used)
        return responses

    def meta(self, request: Request, response: Response, thash: str) -> dict[str, Any]:
        """The meta of a row one call made (`thash`: the hash of the template behind the request)."""
        return teacher_meta(self.llm, request, response, thash)

    def combined_meta(self, calls: list[tuple[str, Request, Response]], thash: str) -> dict[str, Any]:
        """One row's meta when several teacher calls made it (e.g. an instruction, then its answer):
        the first call's seed and sample, the params of every call under its name, tokens and cost
        summed, so that a row's cost covers every request behind it, and the finish reason of the
        last call (the one that wrote the response)."""
        _, req, resp = calls[0]
        meta = teacher_meta(self.llm, req, resp, thash)
        meta["params"] = json.dumps({n: r.params() for n, r, _ in calls}, sort_keys=True)
        meta["prompt_tokens"] = sum(r.prompt_tokens for _, _, r in calls)
        meta["completion_tokens"] = sum(r.completion_tokens for _, _, r in calls)
        meta["cost"] = self.llm.price.cost(meta["prompt_tokens"], meta["completion_tokens"])
        meta["finish_reason"] = calls[-1][2].finish_reason
        return meta

    def result(self, kept: pl.DataFrame, stats: dict[str, Any]) -> StepResult:
        return StepResult(kept=kept, rejected=reject_rows(self.rejects), stats={"llm": self.usage.as_dict(), **stats})


def build_rows(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A record frame from dicts holding `messages`, `meta` and optional record/score fields."""
    if not rows:
        return conform(pl.DataFrame({"messages": []}, schema={"messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))}))
    df = pl.DataFrame(rows, infer_schema_length=None)
    if "meta" in df.columns:
        df = df.with_columns(pl.Series("meta", [r.get("meta") for r in rows], dtype=META))
    return conform(df, recompute_ids=True)


def reject_rows(rows: list[dict[str, Any]]) -> pl.DataFrame | None:
    """Rejects from dicts with `messages`, `reason` and `detail` (the raw output or the error)."""
    if not rows:
        return None
    df = build_rows([{k: v for k, v in r.items() if k not in ("reason", "detail")} for r in rows])
    return df.with_columns(
        pl.Series("reason", [r["reason"] for r in rows], dtype=pl.String),
        pl.Series("detail", [r.get("detail") for r in rows], dtype=pl.String),
    )


# ---------------------------------------------------------------------------------------------
# From a response to a row or a reject

class Reject:
    """What `parse` returns for a response it cannot use: parse failures are data, not silence.

    `reason` is short and stable (the report counts rows per reason); `detail` says what went wrong
    with this row and defaults to the raw output; `fields` are the rejected row's own values (say,
    the messages the response would have made), on top of the row that was asked about."""

    def __init__(self, reason: str, detail: str | None = None, **fields: Any):
        self.reason, self.detail, self.fields = reason, detail, fields

    def row(self, base: dict[str, Any]) -> dict[str, Any]:
        """The rejected row as a dict for `reject_rows`: `base` with this reject's fields, reason and detail."""
        return {**base, **self.fields, "reason": self.reason, "detail": self.detail}

    def __repr__(self) -> str:
        return f"Reject({self.reason!r}, {self.detail!r}{''.join(f', {k}=...' for k in self.fields)})"


def outcome(request: Request, response: Response, parse: Callable[[], dict[str, Any] | Reject], *,
            keep_truncated: bool = False, setting: str = "max_tokens",
            meta: dict[str, Any] | None = None) -> dict[str, Any] | Reject:
    """What one teacher response becomes, decided the same way in every generator:
    - a request that failed for good: Reject("teacher request failed", the error); a rerun resends it;
    - else `parse()`: the fields of the row it makes, or its Reject (detail: the raw output unless
      it gave one). A ValueError it raises (json.JSONDecodeError is one) is Reject("unparseable
      output", the error and the raw output): parse code may just raise where the output is bad;
    - a row made from a response cut at max_tokens: Reject("truncated at max_tokens", "cut at
      <setting>=N") with the row's fields, unless `keep_truncated` (parse sees the cut response
      first, so it may reject it for a reason of its own).
    `meta` (teacher_meta) goes into the row made, kept or cut."""
    if not response.ok:
        return Reject(FAILED, response.error)
    try:
        made = parse()
    except ValueError as exc:
        return Reject(UNPARSEABLE, f"{exc}\n\n{response.text}")
    if isinstance(made, Reject):
        if made.detail is None:
            made.detail = response.text
        return made
    if meta is not None:
        made = {**made, "meta": meta}
    if cut_off(response) and not keep_truncated:
        return Reject(TRUNCATED, f"cut at {setting}={request.max_tokens}", **made)
    return made


def answered(turns: list[dict[str, str]], response: Response) -> dict[str, Any] | Reject:
    """The parse of a plain answer: the conversation `turns` with the (stripped) answer appended;
    an empty answer is rejected ("empty response")."""
    text = (response.text or "").strip()
    if not text:
        return Reject("empty response")
    return {"messages": turns + [{"role": "assistant", "content": text}]}


def with_fields(rows: pl.DataFrame, index: list[int], fields: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows `index` of the record frame `rows`, each with its `fields` put in (a field `rows` has no
    column for becomes one), as a record frame. Columns keep their types, so a batch's own columns
    (scores, routing) come out as they went in; a row whose fields changed gets its id anew."""
    out = rows[index]
    updates = []
    for name in dict.fromkeys(k for f in fields for k in f):
        old = out[name].to_list() if name in out.columns else [None] * out.height
        values = [f[name] if name in f else o for f, o in zip(fields, old)]
        updates.append(pl.Series(name, values, dtype=META if name == "meta" else out.schema.get(name)))
    out = conform(out.with_columns(updates) if updates else out)
    changed = pl.Series([bool(f) for f in fields], dtype=pl.Boolean)
    if changed.any():
        out = out.with_columns(pl.when(changed).then(with_ids(out)["id"]).otherwise(pl.col("id")).alias("id"))
    return out


# ---------------------------------------------------------------------------------------------
# Generators that answer each row on its own

@dataclass
class Asked:
    """The requests of one batch, made by `RowGenerator.build_requests` and read back by
    `parse_batch`: plain data (frames, Requests), so it can cross to another process."""

    rows: pl.DataFrame  # the rows asked about: the batch, or its parts (`units`)
    requests: list[Request]
    owners: list[int]  # for each request, its row in `rows`
    rejected: list[tuple[int, Reject]]  # rows rejected before asking (no request sent)
    template_hash: str
    rows_in: int  # rows in the batch


class RowGenerator(Step):
    """A generator that answers each row on its own, written as two methods: `requests(row, ctx)`
    (n samples are n requests) and `parse(row, request, response)` (the fields of the output row,
    or a Reject). The framework does everything else:

    - one `ctx.llm.generate` call for every request of the batch: cache (keyed on the rendered
      request), the window of requests in flight, rate limits, retries and usage are the LLM's;
    - meta on every row made (teacher, params, seed, sample, template hash, tokens, cost, finish
      reason); `prompt_template()` is the text hashed into meta.template_hash;
    - rejects, each with a reason and detail: a request that failed ("teacher request failed", the
      error), a Reject or ValueError from parse (the raw output), a response cut at max_tokens
      ("truncated at max_tokens" with the cut row and its meta, unless `keeps_truncated()`);
    - the record frame: the row asked about with parse's fields put in and its id recomputed, so
      the batch's other columns (gold, scores, routing columns) carry through.

    How an engine uses it. `run(batch, ctx)` is `build_requests` + `ctx.llm.generate` +
    `parse_batch`, and every row's result depends on that row alone (no state across rows or
    batches), so `run` on any subset of rows gives the rows of that subset: a streaming engine
    calls it per part, a Ray engine per block. The two halves are there for an engine that sends
    requests itself (a Ray actor pool around one model, a provider's batch API): `build_requests`
    needs no LLM, and `parse_batch` takes the responses in request order. That is the whole step
    when `single_call` is True; a step that adds a round of its own in `run` (best_of_n's judge)
    sets it False and is run whole.

    Optional hooks: `units(batch)` for a generator that asks about parts of a row (backtranslation:
    one row per document segment); `requests` may return a Reject to drop a row without asking;
    `batch_stats` for numbers of its own in the step's stats.
    """

    needs_llm: ClassVar[bool] = True
    # True when build_requests + parse_batch are the whole step (see the class docstring).
    single_call: ClassVar[bool] = True
    # The setting that bounded the response, named in the detail of a "truncated at max_tokens" reject.
    truncation_setting: ClassVar[str] = "max_tokens"

    # What a generator implements ---------------------------------------------------------------
    def requests(self, row: dict[str, Any], ctx: Context) -> list[Request] | Reject:
        """The requests for one row (a dict of its columns), or a Reject to drop it unasked."""
        raise NotImplementedError

    def parse(self, row: dict[str, Any], request: Request, response: Response) -> dict[str, Any] | Reject:
        """The fields of the row one successful response makes (at least `messages`), put in on
        top of the row asked about; or a Reject (raising ValueError rejects it too)."""
        raise NotImplementedError

    def units(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The rows to ask about: the batch itself, unless the generator asks about parts of a row."""
        return batch

    def prompt_template(self) -> str:
        """The prompt text behind the requests, hashed into every row's meta.template_hash."""
        return ""

    def keeps_truncated(self) -> bool:
        """Whether rows made from responses cut at max_tokens are kept (a `keep_truncated` setting)."""
        return False

    def batch_stats(self, asked: Asked, kept: pl.DataFrame) -> dict[str, Any]:
        """Step stats of the generator's own (beside "llm", the usage)."""
        return {}

    # What the framework does -------------------------------------------------------------------
    def build_requests(self, batch: pl.DataFrame, ctx: Context) -> Asked:
        """Every request of a batch (no LLM needed), and the rows rejected before asking."""
        rows = self.units(batch)
        requests, owners, rejected = [], [], []
        for i, row in enumerate(rows.to_dicts()):
            made = self.requests(row, ctx)
            if isinstance(made, Reject):
                rejected.append((i, made))
                continue
            requests += made
            owners += [i] * len(made)
        return Asked(rows, requests, owners, rejected, template_hash(self.prompt_template()), batch.height)

    def parse_batch(self, asked: Asked, responses: list[Response], ctx: Context,
                    usage: Usage | None = None) -> StepResult:
        """Kept rows and rejects from the responses to `asked.requests`, in request order. `ctx.llm`
        names the teacher in meta and prices tokens; `usage` goes into the stats."""
        if len(responses) != len(asked.requests):
            raise ValueError(f"{self.kind}: {len(responses)} responses for {len(asked.requests)} requests")
        rows = asked.rows.to_dicts()
        kept: list[tuple[int, dict[str, Any]]] = []
        rejected = list(asked.rejected)
        for owner, request, response in zip(asked.owners, asked.requests, responses):
            row = rows[owner]
            meta = teacher_meta(ctx.llm, request, response, asked.template_hash) if response.ok else None
            got = outcome(request, response, lambda: self.parse(row, request, response),
                          keep_truncated=self.keeps_truncated(), setting=self.truncation_setting, meta=meta)
            (rejected if isinstance(got, Reject) else kept).append((owner, got))
        kept_frame = with_fields(asked.rows, [i for i, _ in kept], [f for _, f in kept])
        rejects = with_fields(asked.rows, [i for i, _ in rejected], [r.fields for _, r in rejected]).with_columns(
            pl.Series("reason", [r.reason for _, r in rejected], dtype=pl.String),
            pl.Series("detail", [r.detail for _, r in rejected], dtype=pl.String),
        )
        stats = {**self.batch_stats(asked, kept_frame), "llm": (usage or Usage()).as_dict()}
        return StepResult(kept=kept_frame, rejected=rejects, stats=stats)

    def run(self, batch: pl.DataFrame, ctx: Context) -> StepResult:
        asked = self.build_requests(batch, ctx)
        responses, usage = ctx.llm.generate(asked.requests, label=self.kind) if asked.requests else ([], Usage())
        return self.parse_batch(asked, responses, ctx, usage)
