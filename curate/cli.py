"""The `curate` command: run recipes and look at their outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from curate.errors import CurateError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Make and curate SFT training data.")
err = Console(stderr=True)
out = Console()


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file, e.g. recipes/quickstart.yaml."),
    override: list[str] = typer.Option([], "--override", "-o", help="Set a recipe key: -o teacher.model=NAME "
                                       "or -o steps.minhash_dedup.threshold=0.9 (repeatable)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: runs/<recipe name>)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    engine: Optional[str] = typer.Option(None, "--engine", help="local (default) or ray: the same recipe on a Ray "
                                         "cluster (the recipe's engine.name otherwise)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the cluster to join, e.g. "
                                          "10.0.0.1:6379 (default RAY_ADDRESS, else a Ray started for the run)."),
):
    """Run a recipe. A rerun into the same --out resumes: unchanged finished steps are skipped and cached LLM responses are not sent again."""
    from curate.engine import run_recipe
    from curate.recipe import load_recipe

    if engine is not None:
        override = [*override, f"engine.name={engine}"]
    if address is not None:
        override = [*override, f"engine.address={address}"]
    rec = load_recipe(recipe, override)
    target = out_dir or Path("runs") / rec.config.name  # the recipe name is one plain folder name
    report = run_recipe(rec, target, show_progress=not quiet)
    for s in report["steps"]:
        note = (" (skipped, unchanged)" if s.get("skipped")
                else f" (ran again to retry {s['retried']} failed requests)" if s.get("retried") else "")
        dropped = ", ".join(f"{r} {n}" for r, n in (s["dropped"] or {}).items())
        out.print(f"{s['step']:<20} {s['rows_in']:>7} -> {s['rows_out']:<7} {s['seconds']:>7.1f}s{note}"
                  + (f"  dropped: {dropped}" if dropped else ""))
    llm = report["llm"]
    out.print(f"[bold]{report['rows']['out']}[/] rows written to {target}/data "
              f"({report['rows']['rejected']} rejected; {llm['prompt_tokens'] + llm['completion_tokens']} tokens, "
              f"{llm['sent']} requests sent, {llm['cache_hits']} from cache) in {report['seconds']:.1f}s")
    failures = failed_requests(report["steps"])
    if failures:
        out.print(f"[bold yellow]{failures}[/]")
    _print_failed_expectations(report)


def _print_failed_expectations(report: dict) -> None:
    """A failed expectation of the final data is worth a line on the terminal, not only in report.md."""
    v = report.get("validation")
    if v and v["passed"] < v["total"]:
        failed = "; ".join(f"{c['expectation']} ({c['details']})" for c in v["results"] if not c["success"])
        out.print(f"[bold red]validation: {v['passed']}/{v['total']} expectations met[/]; failed: {failed}")


def failed_requests(steps: list[dict]) -> str:
    """The run summary's word on failed teacher requests: how many, how many rows they cost, and
    which a rerun retries (a step's marker counts them, so a rerun runs the step again)."""
    retry = sum((s.get("failed_requests") or {}).get("retry", 0) for s in steps)
    for_good = sum((s.get("failed_requests") or {}).get("for_good", 0) for s in steps)
    if not retry + for_good:
        return ""
    rows = sum((s.get("dropped") or {}).get("teacher request failed", 0) for s in steps if s.get("failed_requests"))
    n = retry + for_good
    text = (f"{n} teacher request{'s' if n != 1 else ''} failed ({rows} rows rejected as 'teacher request failed', "
            "see rejects.parquet).")
    if retry:
        text += (f" {retry} of them (server errors, rate limits, timeouts, a wrong key) are retried if you run the "
                 "same command again: only those are sent, answered requests come from the cache.")
    if for_good:
        text += (f" {for_good} {'was' if for_good == 1 else 'were'} refused as a bad request (HTTP 400/413/422, or a "
                 "prompt the model cannot take) and not retried.")
    return text


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A data file (jsonl/json/parquet/csv), a datasets folder, or a run folder."),
    rows: int = typer.Option(3, "--rows", "-n", help="Sample rows to show."),
):
    """Row count, columns, sample rows and score summaries of a dataset or run output."""
    import polars as pl

    from curate.folder import incomplete
    from curate.io import read_table

    for folder in (path, *path.parents[:2]):  # a run folder, or a file in it or in its data/
        why = incomplete(folder) if folder.is_dir() else None
        if why:
            err.print(f"[bold red]warning: {folder} is not a finished run:[/] {why}", highlight=False)
            break
    if path.is_dir() and (path / "data" / "train.parquet").exists():
        path = path / "data" / "train.parquet"
    df = read_table(path)
    out.print(f"[bold]{path}[/]: {df.height} rows")
    out.print("columns: " + ", ".join(f"{c} ({t})" for c, t in df.schema.items()))
    scores = [c for c in df.columns if c.startswith("score_") and df.schema[c].is_numeric()]
    if scores:
        out.print(df.select(scores).describe())
    with pl.Config(fmt_str_lengths=120, tbl_rows=rows):
        out.print(df.head(rows))


@app.command()
def report(out_dir: Path = typer.Argument(..., help="A finished run folder.")):
    """Rebuild report.json, report.md, report.html and the dataset card of a finished run, without rerunning it."""
    from curate.engine import rebuild_report

    rep = rebuild_report(out_dir)
    out.print(f"rebuilt {out_dir}/report.html ({rep['rows']['out']} rows, {len(rep['steps']) - 1} steps)")
    _print_failed_expectations(rep)


@app.command()
def publish(
    out_dir: Path = typer.Argument(..., help="A finished run folder."),
    repo: str = typer.Option(..., "--repo", help="Dataset repository, owner/name."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
):
    """Push the data, dataset card, recipe and reports of a run to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`)."""
    from curate.hub import publish as push

    url = push(out_dir, repo, private=private)
    out.print(f"published {out_dir} to {url}")


def main() -> None:
    """Run the CLI. A CurateError (bad input, settings, environment) is a message and exit 2; any
    other exception is a bug: a one-line message and exit 1, with the traceback when CURATE_DEBUG=1."""
    try:
        app()
    except CurateError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if os.environ.get("CURATE_DEBUG", "") not in ("", "0"):
            raise
        err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}", highlight=False, soft_wrap=True)
        err.print("This is a bug in curate. Please report it with the command you ran; run it again with "
                  "CURATE_DEBUG=1 set to see the traceback.", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
