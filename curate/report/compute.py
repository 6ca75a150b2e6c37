"""The numbers of a run report, computed once into the dict that report.json holds; render.py and
card.py only format them.

Each step's section (its score distributions and examples) is computed by `StepSections` from the
step's parts, reading only the columns a section shows; `curate report OUT` rebuilds the same
numbers from a finished folder (`read_sections`). Lengths are in tokens (curate/tokens.py), each
turn of each final row tokenised once.

At scale the report reads a sample: a step that saw more than SAMPLE_ROWS rows shows the score
distributions and examples of a deterministic sample of its rows, and above TOKEN_ROWS final rows
the lengths and each source's tokens come from a sample of them (the report says so: `sampled`,
`lengths_sampled`). Counts are exact: rows per step, reason and source; the validation of the
final data checks every row. Smaller runs read every row.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from curate.concurrency import at_once
from curate.hub_inputs import hub_dataset_id
from curate.licenses import recipe_licenses, teacher_wrote_rows
from curate.pricing import teacher_price
from curate.mix import Mix
from curate.parts import DONE, Part, detached, union_schema
from curate.records import concat
from curate.recipe import Recipe
from curate.report.language import SAMPLE as LANGUAGE_ROWS, language_shares
from curate.report.plots import histogram_data
from curate.steps import Filter
from curate.tokens import TokenCounter, message_tokens, teacher_tokenizer, token_counter

SAMPLE_ROWS = 20_000  # above this many rows, score distributions and examples come from a sample
TOKEN_ROWS = 5_000  # and above this many final rows, lengths in tokens (~250,000 tokens a second here)
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


def sample_positions(total: int, want: int, salt: int = 0) -> np.ndarray | None:
    """Sorted positions of a deterministic sample of `want` of `total` rows; None for all of them."""
    if total <= want:
        return None
    return np.sort(np.random.default_rng([0x5A3, salt, total]).choice(total, want, replace=False))


def read_rows(parts: list[Part], columns: list[str] | None, positions: np.ndarray | None) -> pl.DataFrame:
    """The rows of `parts` at `positions` (all of them for None), in order, with those of `columns` each has."""
    frames, lo = [], 0
    for part in parts:
        have = part.schema()
        wanted = None if columns is None else [c for c in columns if c in have]
        if positions is None:
            frames.append(part.read(wanted))
        else:
            mine = positions[(positions >= lo) & (positions < lo + part.rows)] - lo
            if len(mine):
                frames.append(detached(part.read(wanted)[mine]))  # not the whole part's text
        lo += part.rows
    return concat(frames)


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

    def add_parts(self, name: str, step, kept: list[Part], rejected: list[Part]) -> None:
        """The section of a step from its parts: the columns a section shows (scores, the examples'
        text) of every row, or of a sample of SAMPLE_ROWS rows (in proportion, kept and dropped)."""
        columns = list(union_schema(kept)) if kept else []
        n_kept, n_rejected = sum(p.rows for p in kept), sum(p.rows for p in rejected)
        total = n_kept + n_rejected
        share = min(1.0, SAMPLE_ROWS / total) if total else 1.0
        shown = lambda have: [c for c in have if c in EXAMPLE_COLUMNS or c.startswith("score_")]  # noqa: E731
        frames = [read_rows(parts, shown(union_schema(parts)) if parts else [],
                            sample_positions(n, round(n * share), salt))
                  for salt, (parts, n) in enumerate(((kept, n_kept), (rejected, n_rejected)))]
        self.add(name, step, *frames, columns=columns)
        if share < 1:
            self.sections[name]["sampled"] = {"rows": sum(f.height for f in frames), "of": total}


def read_sections(recipe: Recipe, steps: list[dict], out: Path) -> dict[str, dict]:
    """The step sections of a finished run, from its step folders, reading only the columns a
    section shows (its scores and the examples' text)."""
    sections = StepSections()
    for step, info in zip(recipe.steps, steps[1:]):
        folder = out / "steps" / info["step"]
        marker = folder / DONE
        if not marker.exists():
            continue
        done = json.loads(marker.read_text(encoding="utf-8"))
        made = lambda rel: Part(folder / rel, done["files"][rel], done["rows"][rel])  # noqa: E731
        if "outputs" in done:  # a FRAME step: its marker lists its parts
            kept, rejected = [made(r) for r in done["outputs"]["kept"]], [made(r) for r in done["outputs"]["rejects"]]
        else:
            kept, rejected = step_parts(folder, done)
        sections.add_parts(info["step"], step, kept, rejected)
    return sections.sections


def step_parts(folder: Path, done: dict) -> tuple[list[Part], list[Part]]:
    """A row-local or STATE step's parts, in order, from its units' markers."""
    units = sorted(folder.glob("parts/[0-9][0-9][0-9][0-9][0-9].json"))[: done.get("parts", 0)]
    infos = [json.loads(u.read_text(encoding="utf-8")) for u in units]
    slots = max((len(i["outputs"]["kept"]) for i in infos), default=0)
    made = lambda info, rel: Part(folder / rel, info["files"][rel], info["rows"][rel])  # noqa: E731
    kept = [made(i, i["outputs"]["kept"][s]) for s in range(slots) for i in infos]
    rejected = [made(i, rel) for i in infos for rel in i["outputs"]["rejects"]]
    return kept, rejected


def length_counter(recipe: Recipe) -> TokenCounter:
    """The tokenizer of the report's lengths: a token mixture's (so lengths and budget share a unit),
    else the teacher's when this machine has it, else the shipped default (SmolLM2's)."""
    mix = next((s for s in recipe.steps if isinstance(s, Mix) and s.unit == "tokens"), None)
    return token_counter(mix.tokenizer if mix else teacher_tokenizer(recipe.config.teacher))


def _lengths_and_sources(parts: list[Part], counter: TokenCounter) -> tuple[dict, dict, dict | None]:
    """Length histograms of prompts, responses (and reasoning) and each source's rows and tokens;
    above TOKEN_ROWS final rows, lengths and tokens from a sample (tokens per source scaled up to
    its rows, which are counted exactly), and what was sampled."""
    total = sum(p.rows for p in parts)
    positions = sample_positions(total, TOKEN_ROWS, salt=7)
    final = read_rows(parts, ["messages", "reasoning", "source"], positions)
    lengths, sources = _lengths_and_sources_of(final, counter)
    if positions is None:
        return lengths, sources, None
    rows = dict(read_rows(parts, ["source"], None).group_by("source").len().iter_rows())
    sources = {s: {"rows": rows[s], "tokens": round(v["tokens"] * rows[s] / v["rows"])} for s, v in sources.items()}
    sources.update({s: {"rows": n, "tokens": None} for s, n in sorted(rows.items()) if s not in sources})
    return lengths, dict(sorted(sources.items())), {"rows": final.height, "of": total}


def _lengths_and_sources_of(final: pl.DataFrame, counter: TokenCounter) -> tuple[dict, dict]:
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


def _language(parts: list[Part]) -> dict:
    """`language_shares` of the final rows: all of them read up to SAMPLE_ROWS (it samples them as
    it would a frame), beyond that only the rows of a deterministic sample of LANGUAGE_ROWS."""
    total = sum(p.rows for p in parts)
    positions = None if total <= SAMPLE_ROWS else sample_positions(total, LANGUAGE_ROWS, salt=11)
    return language_shares(read_rows(parts, ["messages"], positions))


def _splits(out: Path, data_files: dict) -> tuple[dict[str, int], dict[str, int] | None]:
    """Rows per split, and bytes as Arrow holds them (the card's split sizes; None when some split
    has no parquet file), each data file (or shard) read once."""
    rows, nbytes = {}, {}
    for name, files in data_files.items():
        if "parquet" in files:
            rows[name] = nbytes[name] = 0
            for path in data_paths(files["parquet"]):
                table = pq.read_table(out / path)
                rows[name] += table.num_rows
                nbytes[name] += int(table.nbytes)
        else:
            rows[name] = 0
            for path in data_paths(files["jsonl"]):
                with open(out / path, encoding="utf-8") as f:
                    rows[name] += sum(1 for _ in f)
    return rows, (nbytes if len(nbytes) == len(rows) else None)


def data_paths(entry: str | list[str]) -> list[str]:
    """The files of one split and type in `data_files`: one path, or a list of shards."""
    return [entry] if isinstance(entry, str) else list(entry)


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
    features = Features.from_arrow_schema(pq.read_schema(out / data_paths(parquet[0])[0]))
    DatasetInfosDict({"default": DatasetInfo(features=features)}).to_dataset_card_data(card)
    return card.to_dict()["dataset_info"]["features"]


def build_report(recipe: Recipe, steps: list[dict], final: list[Part], rejects: list[Part], data_files: dict,
                 seconds: float, out: Path, sections: dict[str, dict], validation: dict | None = None,
                 workers: int = 1) -> dict:
    """All the numbers of a run (what report.json holds), from the parts of the final rows and of
    the rejects; `sections` from StepSections or read_sections. Its reads of the final rows and of
    the data files are independent: `workers` of them run at once."""
    totals = {k: 0 for k in LLM_FIELDS}
    for s in steps:
        for k in LLM_FIELDS:
            totals[k] += (s.get("llm") or {}).get(k, 0)
    totals["cost"] = round(totals["cost"], 6)
    funnel = [{k: s.get(k) for k in ("step", "kind", "rows_in", "rows_out", "dropped", "seconds", "skipped", "llm", "generation",
                                     "failed_requests", "retried")}
              for s in steps]
    counter = length_counter(recipe)
    read = at_once({"lengths": lambda: _lengths_and_sources(final, counter), "splits": lambda: _splits(out, data_files),
                    "language": lambda: _language(final), "features": lambda: card_features(out, data_files)}, workers)
    lengths, sources, sampled = read["lengths"]
    split_rows, split_bytes = read["splits"]
    return {
        "recipe": recipe.config.name,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "seed": recipe.config.seed,
        "teacher": {"backend": recipe.config.teacher.backend, "model": recipe.config.teacher.model,
                    "price": teacher_price(recipe.config.teacher, batch=recipe.config.teacher.batch_api).as_dict(),
                    "license": recipe.config.teacher.license, "wrote_rows": teacher_wrote_rows(recipe)},
        "rows": {"in": steps[0]["rows_in"] or steps[0]["rows_out"], "out": sum(p.rows for p in final),
                 "rejected": sum(p.rows for p in rejects), "splits": split_rows},
        "steps": funnel,
        "llm": totals,
        "sources": sources,
        "length_unit": "tokens",
        "length_tokenizer": counter.name,
        "lengths": lengths,
        **({"lengths_sampled": sampled} if sampled else {}),
        "filters": sections,
        "mix": next((s["mix"] for s in steps if s.get("mix")), None),
        "validation": validation,
        "data_files": data_files,
        "split_bytes": split_bytes,
        "license": recipe_licenses(recipe).as_dict(),
        "language": read["language"],
        "features": read["features"],
        "source_datasets": sorted({d for inp in recipe.config.inputs
                                   if (d := hub_dataset_id(inp.path, recipe.resolve(inp.path)))}),
    }
