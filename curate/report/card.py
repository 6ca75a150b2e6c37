"""The dataset card (README.md in the output folder) from the report dict and the recipe: Hub
metadata, what the data is, how it was made, and how to rerun it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from curate.io import write_text
from curate.licenses import UNRESOLVED
from curate.recipe import Recipe
from curate.report.render import price_text


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
    lic = report.get("license") or {"license": cfg.license or "other", "warnings": []}
    languages = (report.get("language") or {}).get("languages") or []
    header = {"pretty_name": pretty_name(cfg.name), **license_fields(lic)}
    if languages:
        header["language"] = languages
        header["multilinguality"] = ["multilingual" if len(languages) > 1 else "monolingual"]
    if report["teacher"].get("wrote_rows"):
        header["annotations_creators"] = ["machine-generated"]
    if report.get("source_datasets"):
        header["source_datasets"] = report["source_datasets"]
    header.update({"task_categories": ["text-generation"], "size_categories": [size], "tags": ["synthetic", "sft", "curate"]})
    sizes = report.get("split_bytes")  # None: some split has no parquet file; datasets counts the rows itself
    splits = [{"name": name, "num_bytes": sizes[name], "num_examples": rows}
              for name, rows in report["rows"]["splits"].items()] if sizes else []
    info = {"features": report["features"]} if report.get("features") else {}
    if splits:
        info.update(splits=splits, dataset_size=sum(s["num_bytes"] for s in splits))
    if info:
        header["dataset_info"] = info
    llm = report["llm"]
    price = report["teacher"].get("price")
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
        + (f"; cost ${llm['cost']:.4f} ({price_text(price)})" if llm["prompt_tokens"] + llm["completion_tokens"] else ""),
        "- Sources: " + (", ".join(f"{md_literal(s)} ({v['rows']} rows)" for s, v in report["sources"].items()) or "-"),
    ]
    if languages:
        lang = report["language"]
        lines.append("- Languages: " + ", ".join(f"{code} {share:.0%}" for code, share in lang["shares"].items() if share >= 0.005)
                     + f" of {lang['rows'] - lang['undetermined']} rows told apart ({lang['undetermined']} undetermined); "
                     f"detected by {lang['method']}")
    if report.get("validation"):
        v = report["validation"]
        lines.append(f"- Validation: {v['passed']}/{v['total']} expectations met")
    lines += license_section(lic)
    raw_inputs = recipe.raw.get("inputs") or []  # as written in the recipe: no machine-specific paths
    if raw_inputs:
        lines += ["", "## Inputs", "", "| path | source | license |", "|---|---|---|"]
        for raw, inp in zip(raw_inputs, cfg.inputs):
            lines.append(f"| {md_literal(raw.get('path', inp.path))} | {md_literal(inp.source or '-')} | {md_literal(inp.license or 'not stated')} |")
        if report["teacher"].get("wrote_rows") and not report["teacher"].get("license"):
            lines += ["", "Rows a teacher wrote also fall under the teacher's terms of use (`teacher.license` states them)."]
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


def pretty_name(name: str) -> str:
    """The recipe name as a title: `my-sft_v2` -> `My sft v2`."""
    words = re.sub(r"[-_]+", " ", name).strip()
    return words[:1].upper() + words[1:]


def license_fields(lic: dict) -> dict:
    """The card's license keys as the Hub's spec names them: `license`, and for a license the Hub
    does not list (`other` where the inputs' licenses conflict) `license_name`, `license_link` (this
    card, whose License section explains) and `license_details`."""
    fields = {"license": lic["license"]}
    if lic["license"] == "other" and lic.get("details"):
        fields.update(license_name=UNRESOLVED, license_link="README.md", license_details=lic["details"])
    return fields


def license_section(lic: dict) -> list[str]:
    """The card's License section: what it states, why, and every warning of the check."""
    if not lic.get("warnings") and not lic.get("rules"):
        return []
    lines = ["", "## License", "", f"License: {md_literal(lic['license'])}"
             + (f" (the recipe declares {md_literal(lic['declared'])})" if lic.get("declared") and lic["declared"] != lic["license"] else "")
             + "."]
    if lic.get("warnings"):
        lines += [""] + [f"> **Warning:** {md_literal(w)}" + "  " for w in lic["warnings"]]
    if lic.get("rules"):
        lines += [""] + [f"- {md_literal(k)}: {md_literal(v)}" for k, v in lic["rules"].items()]
    return lines


def md_literal(text) -> str:
    """A value from the user's data or recipe (a source name, a path) as literal Markdown text, also
    inside a table cell: markup characters escaped, HTML tags inert, one line."""
    text = " ".join(str(text).split())
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", text)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"
