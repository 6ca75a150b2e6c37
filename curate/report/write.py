"""A run's report files: validate the final data, compute the report once, render report.json /
.md / .html and the dataset card from it (`publish_report`, called by the engines at the end of a
run), and rebuild them from a finished run folder without rerunning anything (`rebuild_report`,
`curate report`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from curate.errors import CurateError
from curate.folder import locked, require_complete
from curate.parts import DONE, Part
from curate.recipe import Recipe
from curate.report.validate import gx_files
from curate.steps import file_digest

REPORT_FILES = ("report.json", "report.md", "report.html", "README.md")


def publish_report(recipe: Recipe, out: Path, steps: list[dict], final: list[Part], rejects: list[Part],
                   data_files: dict, seconds: float, sections: dict | None = None, validation: dict | None = None,
                   workers: int = 1) -> dict:
    """Validate the final data (unless `validation` is given: the engine validates while it writes
    the data), then write report.json / .md / .html and the dataset card (REPORT_FILES). Without
    `sections` (computed while the steps ran) they are read from the step folders. `workers`:
    the report's reads of the final rows and data files done at once."""
    from curate.report.card import write_card
    from curate.report.compute import build_report, read_sections
    from curate.report.render import write_reports
    from curate.report.validate import validate_parts

    if validation is None:  # on 0 rows too: "at least 1 row" fails
        validation = validate_parts(final, recipe.steps, recipe.config.checks, recipe.config.output, save_to=out / "gx")
    sections = read_sections(recipe, steps, out) if sections is None else sections
    report = build_report(recipe, steps, final, rejects, data_files, seconds, out, sections, validation, workers)
    write_reports(report, out)
    write_card(recipe, report, out / "README.md")
    return report


def rebuild_report(out: str | Path) -> dict:
    """Regenerate the report and card of a finished run from its files, without rerunning anything."""
    from curate.recipe import build_recipe

    out = Path(out)
    needed = [out / n for n in ("recipe.yaml", "report.json", "records.parquet", "rejects.parquet")]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise CurateError(f"{out}: not a finished run folder (missing {', '.join(missing)})")
    require_complete(out, "rebuild its report")
    with locked(out, purpose="report rebuild", create=False) as folder:
        folder.claim(gx_files(out))  # a run from before they were saved, or without great-expectations then
        recipe = build_recipe(_read_state(out / "recipe.yaml", yaml.safe_load), base_dir=out,
                              origin=str(out / "recipe.yaml"))
        old = _read_state(out / "report.json", json.loads, need=("steps", "data_files", "seconds"))
        steps = [old["steps"][0]]
        for i, step in enumerate(recipe.steps, 1):
            marker = out / "steps" / f"{i:02d}-{step.kind}" / DONE
            if not marker.exists():
                raise CurateError(f"{marker}: missing; the run did not finish")
            steps.append({**_read_state(marker, json.loads, need=("step", "rows_in", "rows_out")), "skipped": False})
        final = [_file_part(out / "records.parquet")]
        rejects = [_file_part(out / "rejects.parquet")]
        return publish_report(recipe, out, steps, final, rejects, old["data_files"], old["seconds"])


def _file_part(path: Path) -> Part:
    import pyarrow.parquet as pq

    return Part(path, file_digest(path), pq.read_metadata(path).num_rows)


def _read_state(path: Path, parse, need: tuple[str, ...] = ()) -> dict:
    """A run's JSON or YAML file, or an error naming it and what is wrong with it."""
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CurateError(f"{path}: unreadable ({exc}); rerun `curate run` into this folder to rewrite it") from None
    missing = [k for k in need if not isinstance(data, dict) or k not in data]
    if not isinstance(data, dict) or missing:
        raise CurateError(f"{path}: not what a run writes (missing {', '.join(missing) or 'a mapping'}); "
                          "rerun `curate run` into this folder to rewrite it")
    return data
