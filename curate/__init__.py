"""curate: the framework of the toolkit — records, I/O, steps, engine, LLM access, recipes, reports, CLI.

From Python, `curate.run` runs a recipe as `curate run` does and returns the kept rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import polars as pl

__version__ = "0.1.0"


def run(recipe: str | Path | dict[str, Any], overrides: Sequence[str] = (), out: str | Path | None = None,
        show_progress: bool = False) -> "pl.DataFrame":
    """Run a recipe, as `curate run RECIPE -o KEY=VALUE... --out OUT` does, and return the kept rows:
    the final records with every score column (records.parquet; the trainer-format files are in
    OUT/data/, the report in OUT/report.json).

    recipe: a YAML file, or the recipe as a dict (its relative paths then start from the working
    directory). overrides: "key.path=value" strings, as -o takes them. out: the output folder,
    runs/<recipe name> by default. A rerun into the same folder resumes, as on the command line.
    Raises CurateError on bad input (before anything is written), and ValidationFailed (with
    `.report`) when `validate.fail_on_error` is set and the final data failed a critical expectation;
    the data and the report are written then."""
    import copy

    import polars as pl

    from curate.engine import run_recipe
    from curate.recipe import apply_override, build_recipe, load_recipe
    from curate.report.validate import raise_if_failed

    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    if isinstance(recipe, dict):
        raw = copy.deepcopy(recipe)
        for item in overrides:
            apply_override(raw, item)
        loaded = build_recipe(raw, base_dir=Path.cwd(), origin="recipe")
    else:
        loaded = load_recipe(recipe, overrides)
    target = Path(out) if out is not None else Path("runs") / loaded.config.name
    report = run_recipe(loaded, target, show_progress=show_progress)
    raise_if_failed(report)
    return pl.read_parquet(target / "records.parquet")
