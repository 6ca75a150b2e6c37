"""The `curate` command: run recipes and look at their outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape



POLARS_DEFAULT_MALLOC_CONF = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # polars/__init__.py, polars 1.x


def return_freed_memory() -> None:
    """Have the allocators give freed memory back to the system. A run goes through its data a
    part at a time; with the allocators' defaults what one part freed stays mapped, and the peak
    RSS grows with the number of parts (200,000 rows in parts of 100,000: 1.24 GB with the
    defaults, 0.81 GB with polars' and glibc's settings; 1M rows: 1.66 GB, 1.37 GB with pyarrow on
    the system allocator too; bench/README.md). polars' jemalloc reads _RJEM_MALLOC_CONF when
    polars is loaded, pyarrow its pool's name when it first allocates, so this runs before
    anything imports either; glibc's malloc (Python, numpy, pyarrow's system pool) takes its arena
    cap through mallopt at any time. A value set by the user wins. polars' threads share one
    jemalloc arena, so the pages a part freed serve the next part, and a background thread returns
    pages unused for 1 s (without it, pages wait for the next allocation): at 1M rows the run spent
    34 s of system time (faulting fresh pages in) with pages returned after 200 ms from 8 arenas,
    17 s with this, and peaked at 1,297 MiB (bench/README.md). Returning pages at once cost 9.1 s
    of system time at 200,000 rows against 5.2 s after 200 ms."""
    import ctypes
    import ctypes.util

    # polars writes its own default into the variable when imported: a parent process that imported
    # polars (a notebook, a bench) passes that on, and it is no choice of the user's
    if os.environ.get("_RJEM_MALLOC_CONF") in (None, POLARS_DEFAULT_MALLOC_CONF):
        os.environ["_RJEM_MALLOC_CONF"] = "narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # pyarrow's own jemalloc kept what it freed
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
        except (OSError, AttributeError):  # another C library (musl has no mallopt): its defaults
            pass


return_freed_memory()

from curate.errors import EXIT_VALIDATION_FAILED, CurateError, ValidationFailed  # noqa: E402

# add_completion: typer's --install-completion / --show-completion for bash, zsh, fish, PowerShell
app = typer.Typer(add_completion=True, no_args_is_help=True)
err = Console(stderr=True)
out = Console()
PIPED_WIDTH = 80  # what `curate inspect` fits its lines to when stdout is not a terminal


def package_version() -> str:
    """The installed curate-sft version (the package metadata), or the source tree's when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("curate-sft")
    except PackageNotFoundError:
        from curate import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"curate {package_version()}")
        raise typer.Exit()


@app.callback()
def options(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                         help="Print the installed version and exit.")):
    """Make and curate SFT training data."""


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
    _validation_outcome(report)


def _validation_outcome(report: dict) -> None:
    """A failed expectation of the final data is worth a line on the terminal, not only in report.md;
    with validate.fail_on_error the command fails instead (ValidationFailed names them; exit code 3)."""
    from curate.report.validate import raise_if_failed

    raise_if_failed(report)
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
    """Row count, columns, score summaries and sample rows of a dataset or run output, as plain text
    (fitted to the terminal, or to 80 columns when piped)."""
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
    width = out.width if out.is_terminal else PIPED_WIDTH
    for line in describe_table(df, str(path), rows) + _validation_note(path):
        typer.echo(fit(line, width))


def fit(line: str, width: int) -> str:
    """One line of at most `width` characters (a cut line ends with '...')."""
    return line if len(line) <= width else line[: width - 3] + "..."


def describe_table(df, name: str, rows: int) -> list[str]:
    """What `curate inspect` prints, as lines of plain text (no table borders, which break when a
    line is cut): the columns, summaries of the score columns (or, without any, of the numeric
    columns that are not row numbers or ids), and sample rows with one line per field or turn."""
    import polars as pl

    from curate.records import score_value_columns

    lines = [f"{df.height} rows, {df.width} columns: {name}", "columns:"]
    pad = max((len(c) for c in df.columns), default=0)
    lines += [f"  {c:<{pad}}  {t}" for c, t in df.schema.items()]
    scores = score_value_columns(df.schema)
    numbers = [c for c, t in df.schema.items() if t.is_numeric() and not c.startswith("score_")]
    hidden = [c for c in numbers if row_number_like(df, c)]
    summarised = scores or [c for c in numbers if c not in hidden]
    if summarised:
        pad = min(max(len(c) for c in summarised), 30)
        lines += ["", f"{'scores' if scores else 'numeric columns'}:",
                  f"  {'':<{pad}} {'n':>7} {'mean':>9} {'min':>9} {'median':>9} {'max':>9}"]
        for col in summarised:
            v = df[col].cast(pl.Float64).drop_nulls()
            stats = [v.mean(), v.min(), v.median(), v.max()] if v.len() else [None] * 4
            label = col if len(col) <= pad else col[: pad - 3] + "..."
            lines.append(f"  {label:<{pad}} {v.len():>7} " + " ".join(f"{s:>9.4g}" if s is not None else f"{'-':>9}" for s in stats))
    if hidden and not scores:
        lines.append(f"not summarised (row numbers or ids): {', '.join(c or '(unnamed)' for c in hidden)}")
    lines += ["", f"sample rows ({min(rows, df.height)} of {df.height}):"]
    for i, row in enumerate(df.head(rows).to_dicts(), 1):
        lines.append(f"[{i}]")
        for col, value in row.items():
            if value is None or col.endswith("_fingerprint"):  # nulls and hashes say nothing about the row
                continue
            if col == "messages" and isinstance(value, list):
                lines += [f"  {col}[{k}] {m.get('role')}: {_one_line(m.get('content'))}" for k, m in enumerate(value)
                          if isinstance(m, dict)]
            else:
                lines.append(f"  {col}: {_one_line(value)}")
    return lines


def _one_line(value) -> str:
    return " ".join(str(value).split()) if isinstance(value, str) else str(value)


def row_number_like(df, col: str) -> bool:
    """A column that numbers the rows rather than measuring them: pandas' and Arrow's index columns
    (`index`, `__index_level_0__`, `Unnamed: 0`), ids (`id`, `*_id`, `idx`), or integers counting up
    by one in row order (0, 1, 2... or 81, 82, 83...)."""
    import re

    if re.fullmatch(r"index|level_\d+|__index_level_\d+__|Unnamed: \d+|idx|id|.*_id|row|row_?(idx|index|number)", col,
                    flags=re.IGNORECASE):
        return True
    s = df[col]
    if not s.dtype.is_integer() or s.len() < 2 or s.null_count():
        return False
    return bool((s.diff().drop_nulls() == 1).all())


def _validation_note(path: Path) -> list[str]:
    """A line when the run that wrote `path` failed an expectation (its report.json says so)."""
    import json

    for folder in (path, *path.parents[:2]):
        report = folder / "report.json"
        if folder.is_dir() and report.is_file():
            try:
                v = json.loads(report.read_text(encoding="utf-8")).get("validation") or {}
            except (OSError, ValueError, AttributeError):
                return []
            if v.get("total") and v.get("passed") != v.get("total"):
                failed = "; ".join(r["expectation"] for r in v.get("results", []) if not r.get("success"))
                return ["", f"validation: {v['passed']}/{v['total']} expectations met (failed: {failed}); see {report.parent / 'report.md'}"]
            return []
    return []


@app.command()
def report(out_dir: Path = typer.Argument(..., help="A finished run folder.")):
    """Rebuild report.json, report.md, report.html and the dataset card of a finished run, without rerunning it."""
    from curate.report.write import rebuild_report

    rep = rebuild_report(out_dir)
    out.print(f"rebuilt {out_dir}/report.html ({rep['rows']['out']} rows, {len(rep['steps']) - 1} steps)")
    _validation_outcome(rep)


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
    """Run the CLI. Final data that fails a critical expectation with `validate.fail_on_error: true`
    is a message and exit 3 (after everything is written); a CurateError (bad input, settings,
    environment) is a message and exit 2; any other exception is a bug: a one-line message and
    exit 1, with the traceback when CURATE_DEBUG=1."""
    try:
        app(prog_name="curate")  # also under `python -m curate.cli`: the name completion scripts call
    except ValidationFailed as exc:  # everything is written; the data failed a critical expectation
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_VALIDATION_FAILED)
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
