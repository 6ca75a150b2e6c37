"""`magpie`: make instructions from nothing by letting an aligned chat model write the user turn.

Magpie (Xu et al. 2024, "Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs
with Nothing", arXiv 2406.08464): give the model only its chat template up to the start of a user
turn (the pre-query template, e.g. ChatML "<|im_start|>user\\n"); as a raw completion it writes a
plausible user query and stops at the end-of-turn token. The query is then answered through the
normal chat template. An optional system prompt steers the domain.

Needs a backend that takes raw prompts (embedded, vLLM, or an OpenAI-compatible /completions
endpoint); on a chat-only backend the step stops with a CurateError before sending anything. The
pre-query template comes from `pre_query_template`, else from PRE_QUERY by model family (matched in
the teacher's model name); an unknown model with no template is an error naming the field.

Each of the `n` queries is its own request with seed + i. A query is rejected when the request
fails, it is empty, cut at `query_max_tokens` ("query truncated"), shorter than `min_query_words`,
or a duplicate (case and spacing ignored) of an earlier one. Survivors are answered; failed or empty
answers are rejected too, and answers cut at `response_max_tokens` ("truncated at max_tokens")
unless `keep_truncated`. Rows: [system?], user = query, assistant = response, source "magpie",
meta with the params of both calls and the hash of the rendered pre-query prefix.

Magpie is a source step: input rows (if the recipe has any) pass through unchanged and the new rows
are appended; a recipe may start with it and have no `inputs`. It is not a RowGenerator (synth.base):
its requests come from indices, not rows, each answer waits for its query, and a duplicate query is
found across all n; each answer is decided by the same `outcome` as every generator's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl
from pydantic import Field

from curate.errors import CurateError
from curate.llm import Request
from curate.records import concat
from curate.steps import Context, Step, StepResult
from synth.base import FAILED, Reject, TeacherCalls, answered, build_rows, outcome, template_hash
from synth.evol_instruct import normalize_instruction

RAW_PROMPT_ERROR = ("magpie needs a backend that accepts raw prompts "
                    "(embedded, vllm, or an OpenAI-compatible /completions endpoint); "
                    "this teacher takes chat requests only (e.g. teacher.chat_only: true)")


@dataclass(frozen=True)
class ChatFormat:
    """What Magpie needs of one model family's chat template."""

    match: tuple[str, ...]  # substrings of a lower-cased model name
    pre_query: str  # the template up to where the user's text starts
    system: str  # a system turn, with {system}; put in front of pre_query
    stop: tuple[str, ...]  # end-of-turn markers


PRE_QUERY: dict[str, ChatFormat] = {
    # Qwen2/2.5, SmolLM2 (the embedded model), Yi, OpenHermes and other ChatML models.
    "chatml": ChatFormat(("chatml", "qwen", "smollm", "hermes", "yi-"), "<|im_start|>user\n",
                         "<|im_start|>system\n{system}<|im_end|>\n", ("<|im_end|>", "<|im_start|>")),
    "llama-3": ChatFormat(("llama-3", "llama3", "llama-4", "llama4"),
                          "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
                          "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
                          ("<|eot_id|>", "<|start_header_id|>")),
    "phi-3": ChatFormat(("phi-3", "phi3", "phi-4", "phi4"), "<|user|>\n", "<|system|>\n{system}<|end|>\n",
                        ("<|end|>", "<|assistant|>")),
    "gemma": ChatFormat(("gemma",), "<start_of_turn>user\n", "", ("<end_of_turn>", "<start_of_turn>")),
}
ALL_STOPS = tuple(dict.fromkeys(s for f in PRE_QUERY.values() for s in f.stop))


def template_stops(template: str) -> tuple[str, ...]:
    """The end-of-turn markers for a custom pre-query template: those of the families whose chat
    markup it uses (ChatML's "<|im_start|>user", Llama-3's "<|start_header_id|>", ...), else every
    known one. Why not always all: the OpenAI API (and vLLM's server) takes at most 4 stop sequences
    per request, and ALL_STOPS holds 8; the backend would apply the rest itself, after the server
    had generated past them."""
    found = [s for f in PRE_QUERY.values()
             if f.pre_query.strip() in template or any(m in template for m in f.stop) for s in f.stop]
    return tuple(dict.fromkeys(found)) or ALL_STOPS


def chat_format(model: str) -> tuple[str, ChatFormat] | None:
    """The (family, format) of the first PRE_QUERY entry with a pattern in the model name, or None.
    Order matters: ChatML comes first, so a ChatML fine-tune named after its Llama base is ChatML."""
    name = (model or "").lower()
    for family, fmt in PRE_QUERY.items():
        if any(m in name for m in fmt.match):
            return family, fmt
    return None


def clean_query(text: str | None, stops: tuple[str, ...]) -> str:
    """The query text: cut at the first end-of-turn marker (for backends that ignore `stop`), stripped."""
    text = text or ""
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def query_failure(query: str, finish_reason: str | None, min_words: int) -> str | None:
    """Why a parsed query is unusable (None when it is); duplicates are checked by the caller."""
    if not normalize_instruction(query):
        return "query empty"
    if finish_reason == "length":
        return "query truncated"
    if len(query.split()) < min_words:
        return "query too short"
    return None


class Magpie(Step):
    """Generate `n` user queries from the pre-query template alone, then answer each."""

    kind: ClassVar[str] = "magpie"
    code_version: ClassVar[int] = 2  # 2: a custom template stops at its own markup's end-of-turn markers, not all 8
    needs_llm: ClassVar[bool] = True
    is_source: ClassVar[bool] = True
    n: int = Field(8, ge=1)
    pre_query_template: str | None = None  # default: PRE_QUERY by the teacher's model family
    system_prompt: str | None = None  # steers the domain; needs a known family (or write it into pre_query_template)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    query_max_tokens: int = Field(128, ge=1)
    min_query_words: int = Field(3, ge=1)
    response_temperature: float = Field(0.7, ge=0)
    response_max_tokens: int = Field(512, ge=1)
    keep_truncated: bool = False  # keep answers cut at response_max_tokens (they end mid-answer)
    stop: list[str] | None = None  # default: the family's end-of-turn markers (a custom template: template_stops)
    seed: int | None = None  # default: the recipe's seed; query i uses seed + i

    def prefix(self, model: str) -> tuple[str, tuple[str, ...]]:
        """The raw prompt for a query and its stop strings, or a CurateError naming the field to set."""
        if self.pre_query_template is not None:
            if self.system_prompt is not None:
                raise CurateError("magpie: with pre_query_template, write the system turn into the template "
                                  "itself (system_prompt is only filled into the built-in templates)")
            stops = tuple(self.stop) if self.stop is not None else template_stops(self.pre_query_template)
            return self.pre_query_template, stops
        found = chat_format(model)
        if found is None:
            raise CurateError(
                f"magpie: no pre-query template known for model {model!r}; set pre_query_template "
                f"(e.g. '<|im_start|>user\\n' for ChatML models). Known families: {', '.join(PRE_QUERY)}")
        family, fmt = found
        stops = tuple(self.stop) if self.stop is not None else fmt.stop
        if self.system_prompt is None:
            return fmt.pre_query, stops
        if not fmt.system:
            raise CurateError(f"magpie: the {family} chat template has no system turn; drop system_prompt "
                              "or give a pre_query_template")
        system = fmt.system.replace("{system}", self.system_prompt)
        # Llama-3's system turn already opens with <|begin_of_text|>; do not repeat it.
        pre = fmt.pre_query.removeprefix("<|begin_of_text|>") if system.startswith("<|begin_of_text|>") else fmt.pre_query
        return system + pre, stops

    def run(self, df: pl.DataFrame, ctx: Context) -> StepResult:
        if not getattr(ctx.llm.backend, "supports_raw_prompt", False):
            raise CurateError(RAW_PROMPT_ERROR)
        seed = ctx.seed if self.seed is None else self.seed
        prefix, stops = self.prefix(ctx.llm.model)
        thash = template_hash(prefix)
        calls = TeacherCalls(ctx.llm, self.kind)

        q_reqs = [Request(prompt=prefix, max_tokens=self.query_max_tokens, temperature=self.temperature,
                          top_p=self.top_p, seed=seed + i, sample=i, stop=stops or None) for i in range(self.n)]
        q_resps = calls.ask(q_reqs, "queries")
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        rejects = calls.rejects
        seen: set[str] = set()
        queries: list[tuple[str, Request, Any]] = []
        for req, resp in zip(q_reqs, q_resps):
            if not resp.ok:
                rejects.append(Reject(FAILED, resp.error).row({"messages": system + [{"role": "user", "content": ""}],
                                                              "source": self.kind}))
                continue
            query = clean_query(resp.text, stops)
            why = query_failure(query, resp.finish_reason, self.min_query_words)
            key = normalize_instruction(query)
            if why is None and key in seen:
                why = "duplicate query"
            if why:
                rejects.append({"messages": system + [{"role": "user", "content": query}], "source": self.kind,
                                "reason": why, "detail": resp.text})
                continue
            seen.add(key)
            queries.append((query, req, resp))

        a_reqs = [Request.chat(system + [{"role": "user", "content": q}], max_tokens=self.response_max_tokens,
                               temperature=self.response_temperature, top_p=self.top_p, seed=req.seed, sample=req.sample)
                  for q, req, _ in queries]
        a_resps = calls.ask(a_reqs, "responses")
        rows = []
        for (query, q_req, q_resp), a_req, a_resp in zip(queries, a_reqs, a_resps):
            asked = {"messages": system + [{"role": "user", "content": query}], "source": self.kind}
            got = outcome(a_req, a_resp, lambda: answered(asked["messages"], a_resp),
                          keep_truncated=self.keep_truncated, setting="response_max_tokens")
            if isinstance(got, Reject):
                rejects.append(got.row(asked))
            else:
                meta = calls.combined_meta([("query", q_req, q_resp), ("response", a_req, a_resp)], thash)
                rows.append({**asked, **got, "meta": meta})
        new = build_rows(rows)
        kept = concat([df, new]) if df.height else new
        return calls.result(kept, {"generation": {"generated": self.n, "parsed": len(queries), "kept": len(rows),
                                                  "passed_through": df.height, "pre_query_template": prefix}})
