"""The numbers of a run report, computed once into the dict that report.json holds; render.py and
card.py only format them.

During a run nothing is read back: each step's section (its score distributions and examples) is
computed by `StepSections.add` while the engine holds the step's rows, and the final rows and the
rejects come from memory. `curate report OUT` rebuilds the same numbers from a finished folder,
reading each file once (`read_sections`). Lengths are in tokens (curate/tokens.py), each turn of
each final row tokenised once.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from curate.licenses import recipe_licenses, teacher_wrote_rows
from curate.pricing import teacher_price
from curate.mix import Mix
from curate.recipe import Recipe
from curate.report.language import language_shares
from curate.report.plots import histogram_data
from curate.steps import Filter
from curate.tokens import TokenCounter, message_tokens, teacher_tokenizer, token_counter

LLM_FIELDS = ("requests", "sent", "cache_hits", "failures", "prompt_tokens", "completion_tokens", "cost")
EXAMPLES = 3  # kept and dropped examples shown per filter
SNIPPET = 400
EXAMPLE_COLUMNS = ("id", "messages", "reason", "detail")


def _summary(values: pl.Series) -> dict[str, float] | None:
    v = values.drop_nulls().cast(pl.Float64)
    v = v.filter(v.is_finite())
    if v.len() == 0:
        return None
    q = {f"p{p}": round(float(v.quantile(p / 100, "linear")), 4) for p in (10, 50, 90)}
    return {"n": v.len(), "mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4), **q,
            "max": round(float(v.max()), 4)}


def _score_columns(schema: pl.Schema | dict) -> list[str]:
    """Numeric score columns worth plotting (not row positions or cluster ids)."""
    return [c for c, t in schema.items() if c.startswith("score_") and (t.is_numeric() or t == pl.Boolean)
            and not c.endswith(("_row", "_rank"))]


def _example(row: dict[str, Any]) -> dict[str, Any]:
    msgs = row.get("messages") or []
    prompt = "\n".join(m["content"] for m in msgs if m["role"] != "assistant")
    answer = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), "")
    out = {"id": row.get("id"), "prompt": prompt[:SNIPPET], "response": (answer or "")[:SNIPPET]}
    for key in ("reason", "detail"):
        if row.get(key):
            out[key] = str(row[key])[:SNIPPET]
    return out


def step_section(step, kept: pl.DataFrame, rejected: pl.DataFrame, before: set[str]) -> dict[str, Any]:
    """Score distributions (with thresholds) of the columns this step added (not in `before`), over
    the rows it saw (kept and dropped), and examples of the rows it kept and dropped."""
    scored = [c for c in kept.columns if c.startswith("score_")]
    seen = kept.select(scored)
    if rejected.height:
        seen = pl.concat([seen, rejected.select([c for c in scored if c in rejected.columns])], how="diagonal_relaxed")
    cuts = step.thresholds() if isinstance(step, Filter) else {}
    scores = {}
    for col in (c for c in _score_columns(seen.schema) if c not in before):
        values = seen[col].cast(pl.Float64)
        marks = [float(t) for t in cuts.get(col, []) if t is not None]
        scores[col] = {"summary": _summary(values), "thresholds": marks,
                       "histogram": histogram_data(values.to_list(), marks)}
    return {
        "scores": scores,
        "kept_examples": [_example(r) for r in _kept_examples(kept, scores).to_dicts()],
        "dropped_examples": [_example(r) for r in _dropped_examples(rejected).to_dicts()],
    }


def _kept_examples(kept: pl.DataFrame, scores: dict[str, dict]) -> pl.DataFrame:
    """The kept rows closest to a drawn threshold (the borderline cases say most about a filter);
    without one, a fixed sample, so that each step shows its own rows rather than the first ones."""
    for col, sc in scores.items():
        if sc["thresholds"] and col in kept.columns and kept[col].null_count() < kept.height:
            gap = pl.min_horizontal([(pl.col(col).cast(pl.Float64) - t).abs() for t in sc["thresholds"]])
            return kept.filter(pl.col(col).is_not_null()).sort(gap, "id").head(EXAMPLES)
    return kept.sample(min(EXAMPLES, kept.height), seed=0) if kept.height else kept


def _dropped_examples(rejected: pl.DataFrame) -> pl.DataFrame:
    """One dropped row per reason first (so each reason is seen), then more of the commonest."""
    if not rejected.height or "reason" not in rejected.columns:
        return rejected.head(EXAMPLES)
    ranked = rejected.with_row_index("_i").with_columns(pl.int_range(pl.len()).over("reason").alias("_nth"))
    return ranked.sort("_nth", "_i").head(EXAMPLES).drop("_i", "_nth")


class StepSections:
    """Each step's section of the report, computed as the step finishes, from the rows the engine
    holds; a section covers the score columns its step added to the previous step's."""

    def __init__(self) -> None:
        self.sections: dict[str, dict] = {}
        self.before: set[str] = set()

    def add(self, name: str, step, kept: pl.DataFrame, rejected: pl.DataFrame, columns=None) -> None:
        """columns: the step's output columns, when `kept` holds only some of them."""
        self.sections[name] = step_section(step, kept, rejected, self.before)
        self.before = set(kept.columns if columns is None else columns)


def read_sections(recipe: Recipe, steps: list[dict], out: Path) -> dict[str, dict]:
    """The step sections of a finished run, from its step folders: each file read once, and only the
    columns a section shows (its scores and the examples' text)."""
    sections = StepSections()
    for step, info in zip(recipe.steps, steps[1:]):
        folder = out / "steps" / info["step"]
        if not (folder / "data.parquet").exists():
            continue
        (kept, columns), (rejected, _) = (_shown_columns(folder / name) for name in ("data.parquet", "rejects.parquet"))
        sections.add(info["step"], step, kept, rejected, columns=columns)
    return sections.sections


def _shown_columns(path: Path) -> tuple[pl.DataFrame, list[str]]:
    """The columns of a step file that a section shows (scores, the examples' text), and all its column names."""
    columns = list(pl.read_parquet_schema(path))
    shown = [c for c in columns if c in EXAMPLE_COLUMNS or c.startswith("score_")]
    return pl.read_parquet(path, columns=shown), columns


def length_counter(recipe: Recipe) -> TokenCounter:
    """The tokenizer of the report's lengths: a token mixture's (so lengths and budget share a unit),
    else the teacher's when this machine has it, else the shipped default (SmolLM2's)."""
    mix = next((s for s in recipe.steps if isinstance(s, Mix) and s.unit == "tokens"), None)
    return token_counter(mix.tokenizer if mix else teacher_tokenizer(recipe.config.teacher))


def _lengths_and_sources(final: pl.DataFrame, counter: TokenCounter) -> tuple[dict, dict]:
    """Length histograms of prompts, responses (and reasoning) and each source's rows and tokens."""
    counts = message_tokens(final, counter)
    lengths = {part: {"summary": _summary(counts[part]), "histogram": histogram_data(counts[part].to_list())}
               for part in ("prompt", "response")}
    if "reasoning" in final.columns and final["reasoning"].null_count() < final.height:
        n = pl.Series(counter.count(final["reasoning"].drop_nulls()))
        lengths["reasoning"] = {"summary": _summary(n), "histogram": histogram_data(n.to_list())}
    mix = (final.select("source", counts["text"].alias("n")).group_by("source")
           .agg(pl.len().alias("rows"), pl.col("n").sum().alias("tokens")))
    sources = {r["source"]: {"rows": r["rows"], "tokens": r["tokens"]} for r in mix.sort("source").iter_rows(named=True)}
    return lengths, sources


def _splits(out: Path, data_files: dict) -> tuple[dict[str, int], dict[str, int] | None]:
    """Rows per split, and bytes as Arrow holds them (the card's split sizes; None when some split
    has no parquet file), each data file read once."""
    rows, nbytes = {}, {}
    for name, files in data_files.items():
        if "parquet" in files:
            table = pq.read_table(out / files["parquet"])
            rows[name], nbytes[name] = table.num_rows, int(table.nbytes)
        else:
            with open(out / files["jsonl"], encoding="utf-8") as f:
                rows[name] = sum(1 for _ in f)
    return rows, (nbytes if len(nbytes) == len(rows) else None)


# A Hub dataset as fsspec, polars and datasets name it: hf://datasets/<owner>/<name>[@rev][/file]
HUB_PATH = re.compile(r"hf://datasets/([^/@]+/[^/@]+)")


def hub_dataset_id(path: str) -> str | None:
    """The Hub dataset id (owner/name) an input path reads, or None for a local file."""
    found = HUB_PATH.match(path)
    return found.group(1) if found else None


def card_features(out: Path, data_files: dict) -> list | None:
    """The data files' columns in the `dataset_info.features` form `datasets` writes and reads back
    (from the Arrow schema of the parquet files; None when some split has none)."""
    parquet = [files["parquet"] for files in data_files.values() if "parquet" in files]
    if not parquet or len(parquet) != len(data_files):
        return None
    from datasets import DatasetInfo, Features
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    card = DatasetCardData()
    features = Features.from_arrow_schema(pq.read_schema(out / parquet[0]))
    DatasetInfosDict({"default": DatasetInfo(features=features)}).to_dataset_card_data(card)
    return card.to_dict()["dataset_info"]["features"]


def build_report(recipe: Recipe, steps: list[dict], final: pl.DataFrame, rejects: pl.DataFrame, data_files: dict,
                 seconds: float, out: Path, sections: dict[str, dict], validation: dict | None = None) -> dict:
    """All the numbers of a run (what report.json holds); `sections` from StepSections or read_sections."""
    totals = {k: 0 for k in LLM_FIELDS}
    for s in steps:
        for k in LLM_FIELDS:
            totals[k] += (s.get("llm") or {}).get(k, 0)
    totals["cost"] = round(totals["cost"], 6)
    funnel = [{k: s.get(k) for k in ("step", "kind", "rows_in", "rows_out", "dropped", "seconds", "skipped", "llm", "generation",
                                     "failed_requests", "retried")}
              for s in steps]
    counter = length_counter(recipe)
    lengths, sources = _lengths_and_sources(final, counter)
    split_rows, split_bytes = _splits(out, data_files)
    return {
        "recipe": recipe.config.name,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "seed": recipe.config.seed,
        "teacher": {"backend": recipe.config.teacher.backend, "model": recipe.config.teacher.model,
                    "price": teacher_price(recipe.config.teacher, batch=recipe.config.teacher.batch_api).as_dict(), "license": recipe.config.teacher.license,
                    "wrote_rows": teacher_wrote_rows(recipe)},
        "rows": {"in": steps[0]["rows_in"] or steps[0]["rows_out"], "out": final.height, "rejected": rejects.height, "splits": split_rows},
        "steps": funnel,
        "llm": totals,
        "sources": sources,
        "length_unit": "tokens",
        "length_tokenizer": counter.name,
        "lengths": lengths,
        "filters": sections,
        "mix": next((s["mix"] for s in steps if s.get("mix")), None),
        "validation": validation,
        "data_files": data_files,
        "split_bytes": split_bytes,
        "license": recipe_licenses(recipe).as_dict(),
        "language": language_shares(final),
        "features": card_features(out, data_files),
        "source_datasets": sorted({d for inp in recipe.config.inputs if (d := hub_dataset_id(inp.path))}),
    }
