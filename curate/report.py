"""The run report (report.json) and the dataset card (README.md in the output folder)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import yaml

from curate.io import write_text
from curate.records import message_text
from curate.recipe import Recipe

LLM_FIELDS = ("requests", "sent", "cache_hits", "failures", "prompt_tokens", "completion_tokens", "cost")


def build_report(recipe: Recipe, steps: list[dict], final: pl.DataFrame, rejects: pl.DataFrame,
                 data_files: dict, seconds: float) -> dict:
    """All the numbers of a run: rows in/out per step and why rows were dropped, tokens, time."""
    totals = {k: 0 for k in LLM_FIELDS}
    for s in steps:
        for k in LLM_FIELDS:
            totals[k] += (s.get("llm") or {}).get(k, 0)
    totals["cost"] = round(totals["cost"], 6)
    funnel = [
        {k: s.get(k) for k in ("step", "kind", "rows_in", "rows_out", "dropped", "seconds", "skipped", "llm")}
        for s in steps
    ]
    resp_words = message_text(final, "response").str.count_matches(r"\S+") if final.height else pl.Series([], dtype=pl.UInt32)
    return {
        "recipe": recipe.config.name,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "seed": recipe.config.seed,
        "teacher": {"backend": recipe.config.teacher.backend, "model": recipe.config.teacher.model},
        "rows": {"in": steps[0]["rows_out"], "out": final.height, "rejected": rejects.height},
        "steps": funnel,
        "llm": totals,
        "sources": dict(final.group_by("source").len().sort("source").iter_rows()) if final.height else {},
        "response_words": {
            "mean": round(float(resp_words.mean() or 0), 1),
            "median": float(resp_words.median() or 0),
            "max": int(resp_words.max() or 0),
        },
        "data_files": data_files,
    }


def write_card(recipe: Recipe, report: dict, path: Path) -> None:
    """A short dataset card: what this is, how it was made, and how to rerun it."""
    cfg = recipe.config
    # `configs` pins each split to one file, so `datasets.load_dataset(OUT)` reads parquet (or jsonl) only.
    splits = [{"split": name, "path": files.get("parquet") or files["jsonl"]} for name, files in report["data_files"].items()]
    header = {"license": cfg.license or "other", "task_categories": ["text-generation"],
              "configs": [{"config_name": "default", "data_files": splits}]}
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {cfg.name}", "", cfg.description or "SFT data made with curate.", "",
        f"- Rows: {report['rows']['out']} kept of {report['rows']['in']} in ({report['rows']['rejected']} rejected, "
        "see rejects.parquet)",
        f"- Teacher: {report['teacher']['backend']} {report['teacher']['model'] or ''}".rstrip(),
        f"- Seed: {cfg.seed}",
        f"- Tokens: {report['llm']['prompt_tokens']} prompt, {report['llm']['completion_tokens']} completion"
        + (f"; cost ${report['llm']['cost']:.4f}" if report["llm"]["cost"] else ""),
        "", "## Steps", "", "| step | in | out | dropped |", "|---|---|---|---|",
    ]
    for s in report["steps"]:
        dropped = ", ".join(f"{r}: {n}" for r, n in (s["dropped"] or {}).items()) or "-"
        lines.append(f"| {s['step']} | {s['rows_in']} | {s['rows_out']} | {dropped} |")
    lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(recipe.raw, sort_keys=False).rstrip(), "```", ""]
    write_text("\n".join(lines), path)
