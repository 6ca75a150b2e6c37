"""The run report: report.json (every number), report.md, a self-contained report.html, and the
dataset card (README.md in the output folder).

Everything is computed from files a finished run leaves behind (the step folders, records.parquet,
rejects.parquet, recipe.yaml), so `curate report OUT` rebuilds the report without rerunning.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from html import escape
from pathlib import Path
from collections.abc import Callable
from typing import Any

import polars as pl
import yaml

from curate.errors import MissingExtra
from curate.io import write_json, write_text
from curate.plots import bars, histogram, histogram_data
from curate.records import message_text
from curate.recipe import Recipe
from curate.steps import Filter

LLM_FIELDS = ("requests", "sent", "cache_hits", "failures", "prompt_tokens", "completion_tokens", "cost")
EXAMPLES = 3  # kept and dropped examples shown per filter
SNIPPET = 400


def _words(series: pl.Series) -> pl.Series:
    return series.fill_null("").str.count_matches(r"\S+").cast(pl.Int64)


def _length_counter() -> tuple[Callable[[pl.Series], pl.Series], str]:
    """Token counts with the embedded model's tokenizer (what `mix` budgets in) when the `embedded`
    extra is installed, otherwise words; the report names the unit it used."""
    try:
        from curate.llm.embedded import load_tokenizer
        from curate.mix import count_tokens

        load_tokenizer()
    except MissingExtra:
        return _words, "words"
    return (lambda texts: pl.Series(count_tokens(texts.fill_null("").to_list()), dtype=pl.Int64)), "tokens"


def _summary(values: pl.Series) -> dict[str, float] | None:
    v = values.drop_nulls().cast(pl.Float64)
    v = v.filter(v.is_finite())
    if v.len() == 0:
        return None
    q = {f"p{p}": round(float(v.quantile(p / 100, "linear")), 4) for p in (10, 50, 90)}
    return {"n": v.len(), "mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4), **q,
            "max": round(float(v.max()), 4)}


def _score_columns(df: pl.DataFrame) -> list[str]:
    """Numeric score columns worth plotting (not row positions or cluster ids)."""
    return [c for c, t in df.schema.items() if c.startswith("score_") and (t.is_numeric() or t == pl.Boolean)
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
    """Score distributions (with thresholds) of the columns this step added (not in `before`), and
    examples of the rows it kept and dropped, from its own folder."""
    seen = pl.concat([kept, rejected.select([c for c in kept.columns if c in rejected.columns])],
                     how="diagonal_relaxed") if rejected.height else kept
    cuts = step.thresholds() if isinstance(step, Filter) else {}
    scores = {}
    for col in (c for c in _score_columns(seen) if c not in before):
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


def build_report(recipe: Recipe, steps: list[dict], final: pl.DataFrame, rejects: pl.DataFrame,
                 data_files: dict, seconds: float, out: Path, validation: dict | None = None) -> dict:
    """All the numbers of a run (what report.json holds)."""
    totals = {k: 0 for k in LLM_FIELDS}
    for s in steps:
        for k in LLM_FIELDS:
            totals[k] += (s.get("llm") or {}).get(k, 0)
    totals["cost"] = round(totals["cost"], 6)
    funnel = [{k: s.get(k) for k in ("step", "kind", "rows_in", "rows_out", "dropped", "seconds", "skipped", "llm", "generation",
                                     "failed_requests", "retried")}
              for s in steps]
    count, unit = _length_counter()
    lengths = {}
    for part in ("prompt", "response"):
        n = count(message_text(final, part)) if final.height else pl.Series([], dtype=pl.Int64)
        lengths[part] = {"summary": _summary(n), "histogram": histogram_data(n.to_list())}
    if "reasoning" in final.columns and final["reasoning"].null_count() < final.height:
        n = count(final["reasoning"].drop_nulls())
        lengths["reasoning"] = {"summary": _summary(n), "histogram": histogram_data(n.to_list())}
    sources = {}
    if final.height:
        per_row = count(message_text(final, "text"))
        mix = final.select("source", per_row.alias("n")).group_by("source").agg(pl.len().alias("rows"), pl.col("n").sum().alias(unit))
        sources = {r["source"]: {"rows": r["rows"], unit: r[unit]} for r in mix.sort("source").iter_rows(named=True)}
    sections = {}
    before: set[str] = set()
    for step, info in zip(recipe.steps, steps[1:]):
        folder = out / "steps" / info["step"]
        if (folder / "data.parquet").exists():
            kept = pl.read_parquet(folder / "data.parquet")
            sections[info["step"]] = step_section(step, kept, pl.read_parquet(folder / "rejects.parquet"), before)
            before = set(kept.columns)
    return {
        "recipe": recipe.config.name,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "seed": recipe.config.seed,
        "teacher": {"backend": recipe.config.teacher.backend, "model": recipe.config.teacher.model},
        "rows": {"in": steps[0]["rows_in"] or steps[0]["rows_out"], "out": final.height, "rejected": rejects.height,
                 "splits": {name: _rows_in(out / files.get("parquet", files.get("jsonl", ""))) for name, files in data_files.items()}},
        "steps": funnel,
        "llm": totals,
        "sources": sources,
        "length_unit": unit,
        "lengths": lengths,
        "filters": sections,
        "mix": next((s["mix"] for s in steps if s.get("mix")), None),
        "validation": validation,
        "data_files": data_files,
    }


def _rows_in(path: Path) -> int:
    if path.suffix == ".parquet":
        return pl.scan_parquet(path).select(pl.len()).collect().item()
    return sum(1 for _ in path.open(encoding="utf-8"))


# Markdown and HTML ----------------------------------------------------------------------------------

def render_markdown(report: dict) -> str:
    r = report
    lines = [f"# Run report: {r['recipe']}", "",
             f"{r['rows']['out']} rows kept of {r['rows']['in']} ({r['rows']['rejected']} rejected) in {r['seconds']:.1f}s; "
             f"splits: " + ", ".join(f"{k} {v}" for k, v in r["rows"]["splits"].items()), "",
             "| step | in | out | dropped | seconds |", "|---|---|---|---|---|"]
    for s in r["steps"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in (s["dropped"] or {}).items()) or "-"
        lines.append(f"| {s['step']} | {s['rows_in']} | {s['rows_out']} | {dropped} | {s['seconds']} |")
    llm = r["llm"]
    lines += ["", f"Teacher: {r['teacher']['backend']} {r['teacher']['model'] or ''}; {llm['requests']} requests "
              f"({llm['sent']} sent, {llm['cache_hits']} cached, {llm['failures']} failed), {llm['prompt_tokens']} prompt + "
              f"{llm['completion_tokens']} completion tokens, cost ${llm['cost']:.4f}", ""]
    if r.get("validation"):
        v = r["validation"]
        lines.append(f"Validation ({v['engine']}): {v['passed']}/{v['total']} expectations met")
        lines += [f"- {'PASS' if c['success'] else 'FAIL'} {c['expectation']}" for c in v["results"]]
    return "\n".join(lines) + "\n"


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
.grid{display:flex;flex-wrap:wrap;gap:12px}.plot .t{font-size:13px;font-weight:600}.plot .s{font-size:11px}
.ex{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;max-width:520px}
.pass{color:#2a7a2a}.fail{color:#b00020;font-weight:600}.muted{color:#777}"""


def render_html(report: dict) -> str:
    r = report
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>curate report: {escape(r['recipe'])}</title>"
         f"<style>{CSS}</style></head><body>",
         f"<h1>{escape(r['recipe'])}</h1><p>{r['rows']['out']} rows kept of {r['rows']['in']} "
         f"({r['rows']['rejected']} rejected, see rejects.parquet) in {r['seconds']:.1f}s. Splits: "
         + ", ".join(f"{escape(k)} {v}" for k, v in r["rows"]["splits"].items()) + f". Finished {escape(r['finished'])}.</p>"]
    steps = r["steps"]
    h.append("<h2>Funnel</h2><div class='grid'>")
    h.append(bars([s["step"] for s in steps], [s["rows_out"] for s in steps], "rows after each step",
                  dropped=[s["rows_in"] - s["rows_out"] if s["rows_in"] else 0 for s in steps]))
    h.append("</div><table><tr><th>step</th><th>in</th><th>out</th><th>dropped, by reason</th><th>seconds</th></tr>")
    for s in steps:
        dropped = "<br>".join(f"{escape(k)}: {v}" for k, v in (s["dropped"] or {}).items()) or "-"
        note = " <span class='muted'>(unchanged, reused)</span>" if s.get("skipped") else ""
        h.append(f"<tr><td>{escape(s['step'])}{note}</td><td>{s['rows_in']}</td><td>{s['rows_out']}</td>"
                 f"<td>{dropped}</td><td>{s['seconds']}</td></tr>")
    h.append("</table>")
    h.append("<h2>Scores</h2>")
    any_scores = False
    for step, sec in r.get("filters", {}).items():
        plots = [histogram(v["histogram"], f"{step}: {col}", v["thresholds"]) for col, v in sec["scores"].items()]
        plots = [p for p in plots if p]
        if plots:
            any_scores = True
            h.append(f"<div class='grid'>{''.join(plots)}</div>")
        empty = [col for col, v in sec["scores"].items() if not v["histogram"]]
        if empty:
            h.append(f"<p class='muted'>{escape(step)}: no values in {escape(', '.join(empty))}</p>")
    if not any_scores:
        h.append("<p class='muted'>No numeric scores in this run.</p>")
    unit = r.get("length_unit", "words")
    h.append(f"<h2>Lengths ({unit})</h2><div class='grid'>")
    h += [histogram(v["histogram"], f"{part} length") for part, v in r["lengths"].items()]
    h.append("</div><h2>Sources</h2><div class='grid'>")
    src = r["sources"]
    h.append(bars(list(src), [v["rows"] for v in src.values()], "rows per source"))
    h.append(bars(list(src), [v[unit] for v in src.values()], f"{unit} per source"))
    h.append("</div>")
    if r.get("mix"):
        m = r["mix"]
        h.append(f"<h3>Mixture: requested vs realized ({escape(m['unit'])})</h3><table><tr><th>source</th><th>requested</th>"
                 "<th>share</th><th>realized</th><th>share</th><th>available</th><th>shortfall</th></tr>")
        for s, v in m["sources"].items():
            h.append(f"<tr><td>{escape(s)}</td><td>{v['requested']}</td><td>{v['requested_share']:.3f}</td><td>{v['realized']}</td>"
                     f"<td>{v['realized_share']:.3f}</td><td>{v['available']}</td><td>{v['shortfall']}</td></tr>")
        h.append("</table>")
    llm = r["llm"]
    h.append("<h2>Teacher usage</h2><table><tr><th>step</th><th>requests</th><th>sent</th><th>cached</th><th>failed</th>"
             "<th>prompt tokens</th><th>completion tokens</th><th>cost (USD)</th></tr>")
    for s in steps:
        if s.get("llm"):
            u = s["llm"]
            h.append(f"<tr><td>{escape(s['step'])}</td><td>{u['requests']}</td><td>{u['sent']}</td><td>{u['cache_hits']}</td>"
                     f"<td>{u['failures']}</td><td>{u['prompt_tokens']}</td><td>{u['completion_tokens']}</td><td>{u['cost']:.4f}</td></tr>")
    h.append(f"<tr><th>total</th><th>{llm['requests']}</th><th>{llm['sent']}</th><th>{llm['cache_hits']}</th><th>{llm['failures']}</th>"
             f"<th>{llm['prompt_tokens']}</th><th>{llm['completion_tokens']}</th><th>{llm['cost']:.4f}</th></tr></table>")
    h.append(f"<p class='muted'>Teacher: {escape(str(r['teacher']['backend']))} {escape(str(r['teacher']['model'] or ''))}</p>")
    h.append("<h2>Examples</h2>")
    for step, sec in r.get("filters", {}).items():
        if not (sec["kept_examples"] or sec["dropped_examples"]):
            continue
        h.append(f"<h3>{escape(step)}</h3><table><tr><th>kept</th><th>dropped</th></tr>")
        for i in range(max(len(sec["kept_examples"]), len(sec["dropped_examples"]))):
            cells = []
            for group in ("kept_examples", "dropped_examples"):
                ex = sec[group][i] if i < len(sec[group]) else None
                if ex is None:
                    cells.append("<td></td>")
                    continue
                why = f"<b>{escape(ex.get('reason', ''))}</b> {escape(ex.get('detail', '') or '')}\n" if ex.get("reason") else ""
                cells.append(f"<td class='ex'>{why}<b>Q:</b> {escape(ex['prompt'])}\n<b>A:</b> {escape(ex['response'])}</td>")
            h.append("<tr>" + "".join(cells) + "</tr>")
        h.append("</table>")
    v = r.get("validation")
    h.append("<h2>Validation of the final data</h2>")
    if v:
        h.append(f"<p>{v['passed']} of {v['total']} expectations met ({escape(v['engine'])}).</p><table>"
                 "<tr><th>result</th><th>expectation</th><th>details</th></tr>")
        for c in v["results"]:
            cls, word = ("pass", "PASS") if c["success"] else ("fail", "FAIL")
            h.append(f"<tr><td class='{cls}'>{word}</td><td>{escape(c['expectation'])}</td><td>{escape(c.get('details') or '')}</td></tr>")
        h.append("</table>")
    else:
        h.append("<p class='muted'>Not run.</p>")
    h.append("</body></html>")
    return "\n".join(h)


def write_reports(report: dict, out: Path) -> None:
    write_json(report, out / "report.json")
    write_text(render_markdown(report), out / "report.md")
    write_text(render_html(report), out / "report.html")


def write_card(recipe: Recipe, report: dict, path: Path) -> None:
    """The dataset card: what this is, how it was made, and how to rerun it."""
    cfg = recipe.config
    # No `configs` block: datasets infers the splits from data/{train,validation}.* by itself, while a
    # local folder whose card has `configs` is cached by folder name in datasets 5.2, so loading
    # another run's folder of the same name returned the first one's rows (seen in tests/test_hub.py).
    # `dataset_info.splits` names the splits and their sizes instead; datasets checks num_examples
    # against the files when it loads them, so a card that no longer matches its data is an error.
    n = report["rows"]["out"]
    size = next(label for limit, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                                          (float("inf"), "n>1M")) if n < limit)
    header = {"license": cfg.license or "other", "task_categories": ["text-generation"], "size_categories": [size],
              "tags": ["synthetic", "sft", "curate"]}
    splits = _split_infos(path.parent, report["data_files"])
    if splits:
        header["dataset_info"] = {"splits": splits, "dataset_size": sum(s["num_bytes"] for s in splits)}
    llm = report["llm"]
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {cfg.name}", "", cfg.description or "SFT data made with curate.", "",
        f"- Rows: {n} kept of {report['rows']['in']} in ({report['rows']['rejected']} rejected, see rejects.parquet); "
        + ", ".join(f"{k}: {v}" for k, v in report["rows"]["splits"].items()),
        f"- Format: {cfg.output.format}",
        ("- Teacher: " + f"{report['teacher']['backend']} {report['teacher']['model'] or ''}".rstrip()
         if any(step.needs_llm for step in recipe.steps) else "- Teacher: none (no step calls a model)"),
        f"- Seed: {cfg.seed}",
        f"- Tokens: {llm['prompt_tokens']} prompt, {llm['completion_tokens']} completion"
        + (f"; cost ${llm['cost']:.4f}" if llm["cost"] else ""),
        f"- Sources: " + (", ".join(f"{md_literal(s)} ({v['rows']} rows)" for s, v in report["sources"].items()) or "-"),
    ]
    if report.get("validation"):
        v = report["validation"]
        lines.append(f"- Validation: {v['passed']}/{v['total']} expectations met")
    raw_inputs = recipe.raw.get("inputs") or []  # as written in the recipe: no machine-specific paths
    if raw_inputs:
        lines += ["", "## Inputs", "", "| path | source | license |", "|---|---|---|"]
        for raw, inp in zip(raw_inputs, cfg.inputs):
            lines.append(f"| {md_literal(raw.get('path', inp.path))} | {md_literal(inp.source or '-')} | {md_literal(inp.license or 'not stated')} |")
        if any(step.needs_llm for step in recipe.steps):
            lines += ["", "Rows a teacher wrote also fall under the teacher's terms of use."]
    lines += ["", "## Steps", "", "| step | in | out | dropped |", "|---|---|---|---|"]
    for s in report["steps"]:
        dropped = ", ".join(f"{r}: {c}" for r, c in (s["dropped"] or {}).items()) or "-"
        lines.append(f"| {s['step']} | {s['rows_in']} | {s['rows_out']} | {dropped} |")
    scored = [(step, col, sc) for step, sec in report["filters"].items() for col, sc in sec.get("scores", {}).items()]
    if scored:
        lines += ["", "## Scores and thresholds", "", "| step | score | thresholds | values | p10 | median | p90 |",
                  "|---|---|---|---|---|---|---|"]
        for step, col, sc in scored:
            q = sc["summary"] or {}  # None: no row had a value (e.g. no row overlapped an eval set)
            cuts = ", ".join(f"{t:g}" for t in sc.get("thresholds") or []) or "-"
            lines.append(f"| {step} | {col} | {cuts} | {q.get('n', 0)} | {_fmt(q.get('p10'))} | {_fmt(q.get('p50'))} "
                         f"| {_fmt(q.get('p90'))} |")
    lines += ["", "## Recipe", "", "Rerun with `curate run recipe.yaml` (the same seed and cache give the same data).", "",
              "```yaml", yaml.safe_dump(recipe.raw, sort_keys=False).rstrip(), "```", ""]
    write_text("\n".join(lines), path)


def md_literal(text) -> str:
    """A value from the user's data or recipe (a source name, a path) as literal Markdown text, also
    inside a table cell: markup characters escaped, HTML tags inert, one line."""
    text = " ".join(str(text).split())
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", text)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _split_infos(out: Path, data_files: dict) -> list[dict]:
    """The card's split sizes: rows, and bytes as Arrow holds them (what the Hub shows as size)."""
    import pyarrow.parquet as pq

    infos = []
    for name, files in data_files.items():
        if "parquet" not in files:
            return []  # jsonl-only output: let datasets count the rows itself
        table = pq.read_table(out / files["parquet"])
        infos.append({"name": name, "num_bytes": int(table.nbytes), "num_examples": table.num_rows})
    return infos


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))
