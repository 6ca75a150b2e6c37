"""What every generator shares: prompt templates in files, the per-row `meta` record, and turning
teacher responses into kept rows and rejects.

Templates are plain text files with {name} placeholders filled by `render` (plain replacement, so
braces in instructions and code stay as they are). A recipe overrides a generator's template with
a path; the template's hash goes into every row's meta, so a changed prompt is visible in the data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import CurateError
from curate.llm import LLM, Request, Response, Usage
from curate.records import META, conform

PROMPTS = Path(__file__).parent / "prompts"

# The reject reason of a response the teacher stopped at max_tokens (finish_reason "length"): it
# ends wherever the budget ran out, often mid-sentence, and would teach a model to stop there.
TRUNCATED = "truncated at max_tokens"


def template_path(override: str | None, default_name: str) -> Path:
    """The template file: the recipe's if given, else synth/prompts/<default_name>.txt (a step
    lists it in `files()`, so the step hash covers the template it reads)."""
    return Path(override) if override else PROMPTS / f"{default_name}.txt"


def load_template(override: str | None, default_name: str) -> str:
    """The template text: the recipe's file if given, else synth/prompts/<default_name>.txt."""
    path = template_path(override, default_name)
    if not path.exists():
        raise CurateError(f"prompt template {path}: no such file")
    return path.read_text(encoding="utf-8")


def template_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def render(template: str, **fields: Any) -> str:
    for name, value in fields.items():
        template = template.replace("{" + name + "}", str(value))
    return template


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


def generate(llm: LLM, requests: list[Request], label: str, usage: Usage) -> list[Response]:
    """One batch of teacher calls, its usage added to the step's running total (`usage`)."""
    if not requests:
        return []
    responses, used = llm.generate(requests, label=label)
    usage.add(used)
    return responses


def combined_meta(llm: LLM, calls: list[tuple[str, Request, Response]], thash: str) -> dict[str, Any]:
    """One row's meta when several teacher calls made it (e.g. an instruction, then its answer):
    the first call's seed and sample, the params of every call under its name, tokens and cost
    summed, so that a row's cost covers every request behind it, and the finish reason of the last
    call (the one that wrote the response)."""
    _, req, resp = calls[0]
    meta = teacher_meta(llm, req, resp, thash)
    meta["params"] = json.dumps({n: r.params() for n, r, _ in calls}, sort_keys=True)
    meta["prompt_tokens"] = sum(r.prompt_tokens for _, _, r in calls)
    meta["completion_tokens"] = sum(r.completion_tokens for _, _, r in calls)
    meta["cost"] = llm.price.cost(meta["prompt_tokens"], meta["completion_tokens"])
    meta["finish_reason"] = calls[-1][2].finish_reason
    return meta


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


def chat(user: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
