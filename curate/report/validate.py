"""Validation of a run's final data, in great-expectations' vocabulary (extra `gx`).

The suite is the built-in expectations plus the ones a recipe declares under `validate:`. Built in:
at least one row, ids unique, no empty turns, roles alternate (an optional system turn, then
user/assistant, ending with the assistant), prompt and response lengths within bounds, no response
the teacher stopped at max_tokens (meta.finish_reason "length": a cut answer teaches the model to
stop mid-sentence), and each filter's score columns within the range the filter declares.

    validate:
      fail_on_error: true          # a failed critical expectation fails the run (exit code 3)
      expectations:                # GX expectation types with their keyword arguments
        - expect_column_values_to_not_be_null: {column: source}
        - expect_column_value_lengths_to_be_between: {column: response, min_value: 10}
        - expect_column_values_to_be_in_set: {column: source, value_set: [a, b], severity: warning}

Every expectation runs on one flat table, `view(df, output)`: a row per final row with the
output format's columns (nested ones as JSON text) and convenience columns (prompt, response,
system, turns, word counts, the row facts the built-ins check, the flat score columns). With
great-expectations installed the whole suite runs in it, and the suite, its results and the table
are saved in GX's own format (`GX_FILES`) so a team can re-run them in their GX setup; without it
the built-ins run in polars and declared expectations are an error naming the extra.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curate.errors import CurateError, MissingExtra, ValidationFailed, require
from curate.formats import FORMAT_COLUMNS
from curate.io import write_json, write_parquet
from curate.output import OutputConfig
from curate.records import finish_reasons, message_text
from curate.steps import Filter

MAX_RESPONSE_WORDS = 8000
GX = "great-expectations"
POLARS_ENGINE = "polars"
SUITE_NAME = "curate-final"
# What a run saves in <out>/gx/ when great-expectations ran: the suite
# (ExpectationSuite.to_json_dict()), its results (ExpectationSuiteValidationResult.to_json_dict())
# and the table they ran on (view()), so `ExpectationSuite(**suite)` re-runs on it in any GX setup.
# No name may look like a split to `datasets.load_dataset(OUT)` ("validation_...", "test-...").
GX_FILES = ("expectation_suite.json", "expectation_suite_results.json", "validated.parquet")
# The view's own columns: the convenience columns, then the row facts the built-ins check.
VIEW_COLUMNS = ("id", "source", "prompt", "response", "system", "turns", "prompt_words", "response_words",
                "empty_turns", "roles_alternate", "response_cut")
# Keyword arguments that name a column of the table (checked against the view's columns up front).
COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")
INSTALL = "pip install 'curate-sft[gx]'"


class ValidateConfig(BaseModel):
    """`validate:` in a recipe (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    fail_on_error: bool = False
    expectations: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)


@dataclass
class Check:
    """One expectation: its GX type and keyword arguments, how the report names it, and whether
    the recipe declared it (else it is built in)."""

    type: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    declared: bool = False

    @property
    def severity(self) -> str:
        return str(self.kwargs.get("severity", "critical"))


def gx_installed() -> bool:
    try:
        return importlib.util.find_spec("great_expectations") is not None
    except ValueError:  # sys.modules holds None for it: importing it fails
        return False


def gx_files(out: Path) -> list[Path]:
    """The files a run saves in `out` for great-expectations (none without the extra): listed in
    the folder's manifest before they are written."""
    return [out / "gx" / name for name in GX_FILES] if gx_installed() else []


# The recipe's expectations, checked before anything runs ------------------------------------------
def declared_checks(checks: ValidateConfig | None) -> list[Check]:
    out = []
    for item in (checks.expectations if checks else []):
        (name, kwargs), = item.items()
        kwargs = dict(kwargs or {})
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "severity")
        out.append(Check(name, kwargs, f"{name}({shown})", declared=True))
    return out


def check_declared(checks: ValidateConfig, where: str) -> None:
    """Every declared expectation is one mapping {GX type: keyword arguments} that GX accepts; else
    an error naming the key (`validate.expectations[1].expect_...min_valu`). Imports GX (2-3 s),
    only when the recipe declares expectations."""
    if not checks.expectations:
        return
    for i, item in enumerate(checks.expectations):
        if len(item) != 1:
            raise CurateError(f"{where}: validate.expectations[{i}]: each expectation is a mapping with one key, "
                              f"the GX expectation type; got {list(item)}")
    try:
        import great_expectations  # noqa: F401
    except ImportError:
        raise MissingExtra(f"{where}: validate.expectations: recipe-declared expectations run in great-expectations, "
                           f"which is not installed. Install it with: {INSTALL}") from None
    from great_expectations.expectations.registry import get_expectation_impl, list_registered_expectation_implementations

    known = list_registered_expectation_implementations()
    for i, check in enumerate(declared_checks(checks)):
        key = f"validate.expectations[{i}].{check.type}"
        if check.type not in known:
            near = difflib.get_close_matches(check.type, known, n=1)
            hint = f"did you mean {near[0]}?" if near else "see https://greatexpectations.io/expectations"
            raise CurateError(f"{where}: {key}: not a great-expectations expectation type ({hint})")
        try:
            get_expectation_impl(check.type)(**check.kwargs)
        except Exception as exc:  # a pydantic (v1) ValidationError from GX; others say the same
            errors = exc.errors() if hasattr(exc, "errors") else [{"loc": (), "msg": str(exc)}]
            lines = [f"{key}{''.join('.' + str(p) for p in e['loc'] if p != '__root__')}: {e['msg']}" for e in errors]
            raise CurateError(f"{where}: invalid recipe:\n  " + "\n  ".join(lines)) from None


def view_columns(columns: list[str], steps: list, output: OutputConfig) -> list[str]:
    """The columns the validated table will have, as far as they are known before any step runs:
    the view's own, the output format's, the input's and each filter's score columns."""
    fmt = [c for c in FORMAT_COLUMNS[output.format] if c not in VIEW_COLUMNS]
    scores = [c for s in steps if isinstance(s, Filter) for c in s.score_columns()]
    return list(dict.fromkeys([*VIEW_COLUMNS, *fmt, "reasoning", "answer", "gold",
                               *(c for c in [*columns, *scores] if _flat_name(c))]))


def check_columns(checks: ValidateConfig, known: list[str], where: str) -> None:
    """A declared expectation naming a column the validated table will not have is an error."""
    for i, check in enumerate(declared_checks(checks)):
        for kw in COLUMN_KWARGS:
            named = check.kwargs.get(kw)
            for col in (named if isinstance(named, list) else [named] if named is not None else []):
                if col not in known:
                    raise CurateError(f"{where}: validate.expectations[{i}].{check.type}.{kw}: no column {col!r} in the "
                                      f"validated table; its columns are {', '.join(known)}")


# The table expectations run on ----------------------------------------------------------------------
def _facts(df: pl.DataFrame) -> pl.DataFrame:
    """The row facts the built-in expectations check, one row per row of `df`."""
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    contents = pl.col("messages").list.eval(pl.element().struct.field("content").fill_null("").str.strip_chars())
    facts = df.select(
        contents.list.eval((pl.element().str.len_chars() == 0).cast(pl.Int64)).list.sum().alias("empty_turns"),
        roles.alias("_roles"),
    )
    # roles alternate: after one optional system turn, user / assistant / user ..., ending with the assistant
    turns = pl.col("_roles").list.slice((pl.col("_roles").list.first() == "system").fill_null(False).cast(pl.Int64))
    expected = pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("user")).otherwise(pl.lit("assistant"))
    alternate = ((turns.list.len() > 0) & (turns.list.last() == "assistant")
                 & turns.list.eval(pl.element() == expected).list.all()).fill_null(False)

    return facts.with_columns(
        alternate.alias("roles_alternate"),
        message_text(df, "prompt").str.count_matches(r"\S+").cast(pl.Int64).alias("prompt_words"),
        message_text(df, "response").str.count_matches(r"\S+").cast(pl.Int64).alias("response_words"),
        # null finish reason (rows not made by a teacher, e.g. an existing dataset) counts as not cut
        (finish_reasons(df) == "length").fill_null(False).alias("response_cut"),
    ).drop("_roles")


def _flat_name(column: str) -> bool:
    return column not in ("messages", "meta") and not column.endswith("_fingerprint")


def _flat(df: pl.DataFrame) -> list[str]:
    """Columns of `df` with one plain value per row (text, number, boolean), not fingerprints."""
    return [c for c, t in df.schema.items() if _flat_name(c) and (t == pl.String or t.is_numeric() or t == pl.Boolean)]


def view(df: pl.DataFrame, output: OutputConfig | None = None) -> pl.DataFrame:
    """The table every expectation runs on, one row per row of `df`: id, source; `prompt` (every
    turn but the answers, as the heuristics see it), `response` (the last answer), `system`,
    `turns`, `prompt_words`, `response_words`; the row facts the built-ins check (`empty_turns`,
    `roles_alternate`, `response_cut`); the output format's columns (alpaca's instruction, input,
    output; nested ones such as messages or conversations as JSON text; a name the view already has,
    prompt in prompt_completion, keeps the view's meaning); then the other flat columns of `df`
    (reasoning, answer, gold, input columns, scores), fingerprints left out."""
    from curate.formats import convert

    output = output or OutputConfig()
    role, content = pl.element().struct.field("role"), pl.element().struct.field("content")
    base = pl.concat([
        df.select(pl.col("id"), pl.col("source") if "source" in df.columns else pl.lit(None, pl.String).alias("source")),
        message_text(df, "prompt").to_frame(), message_text(df, "response").to_frame(),
        df.select(pl.col("messages").list.eval(content.filter(role == "system")).list.join("\n").fill_null("").alias("system"),
                  pl.col("messages").list.len().cast(pl.Int64).alias("turns")),
        _facts(df),
    ], how="horizontal").select(VIEW_COLUMNS)
    formatted = convert(df, output.format, reasoning=output.reasoning, wrapper=output.reasoning_wrapper, keep=())
    fmt = {}
    for col in FORMAT_COLUMNS[output.format]:
        if col in VIEW_COLUMNS:
            continue
        if col not in formatted.columns:  # no rows: convert makes no columns
            fmt[col] = pl.Series(col, [None] * df.height, dtype=pl.String)
        elif formatted.schema[col] == pl.String:
            fmt[col] = formatted[col]
        else:  # a list of turns: JSON text, encoded by polars (json.dumps per row took 10x as long)
            fmt[col] = formatted.select(pl.format("[{}]", pl.col(col).list.eval(pl.element().struct.json_encode())
                                                  .list.join(",")).alias(col)).to_series()
    table = base.with_columns(list(fmt.values()))
    rest = [c for c in _flat(df) if c not in table.columns]
    return table.with_columns(df.select(rest)) if rest else table


# The suite ------------------------------------------------------------------------------------------
def builtin_checks(steps: list, columns: list[str]) -> list[Check]:
    """The built-in expectations for this recipe's final data (score ranges of the score columns in
    `columns`)."""
    max_words = max([getattr(s, "max_response_words", 0) for s in steps] + [MAX_RESPONSE_WORDS])
    checks = [
        Check("expect_table_row_count_to_be_between", {"min_value": 1}, "at least 1 row"),
        Check("expect_column_values_to_be_unique", {"column": "id"}, "id values are unique"),
        Check("expect_column_values_to_be_between", {"column": "empty_turns", "min_value": 0, "max_value": 0},
              "no empty messages (empty_turns = 0)"),
        Check("expect_column_values_to_be_in_set", {"column": "roles_alternate", "value_set": [True]},
              "roles alternate (user/assistant, system first if any)"),
        _between("prompt_words", 1, None),
        _between("response_words", 1, max_words),
        Check("expect_column_values_to_be_in_set", {"column": "response_cut", "value_set": [False]},
              "no response cut at max_tokens (meta.finish_reason = length)"),
    ]
    for step in steps:
        if isinstance(step, Filter):
            checks += [_between(col, lo, hi) for col, (lo, hi) in step.score_ranges().items() if col in columns]
    return checks


def _between(column: str, lo, hi) -> Check:
    kwargs = {"column": column, **{k: v for k, v in (("min_value", lo), ("max_value", hi)) if v is not None}}
    return Check("expect_column_values_to_be_between", kwargs,
                 f"{column} between {lo if lo is not None else '-inf'} and {hi if hi is not None else 'inf'}")


def validate(df: pl.DataFrame, steps: list, checks: ValidateConfig | None = None, output: OutputConfig | None = None,
             save_to: Path | None = None, engine: str | None = None) -> dict[str, Any]:
    """Run the suite on `df` (the final rows, or a sample of them); returns
    {"engine", "passed", "total", "fail_on_error", "fails_run", "files",
     "results": [{expectation, type, success, severity, declared, details}]}.

    checks: the recipe's `validate:`; output: its `output:` (the format's columns in the table);
    save_to: the folder for GX_FILES (written when great-expectations ran); engine:
    "great-expectations" (the `gx` extra), "polars" (built-ins only), or None for
    great-expectations when it is installed. `fails_run`: fail_on_error is set and a critical
    expectation failed (see `raise_if_failed`)."""
    if engine not in (None, GX, POLARS_ENGINE):
        raise ValueError(f"engine must be {GX!r}, {POLARS_ENGINE!r} or None, not {engine!r}")
    declared = declared_checks(checks)
    label = engine
    if engine is None:
        engine = GX if gx_installed() else POLARS_ENGINE
        label = engine if engine == GX else f"{POLARS_ENGINE} (great-expectations not installed: {INSTALL})"
    if engine == POLARS_ENGINE and declared:
        raise MissingExtra(f"validate.expectations: recipe-declared expectations run in great-expectations; install "
                           f"it with: {INSTALL}")
    files: list[str] = []
    if engine == GX:
        table = view(df, output)
        suite = builtin_checks(steps, table.columns) + declared
        results, gx_suite, gx_result = _with_gx(table, suite)
        if save_to is not None:
            write_json(gx_suite, save_to / GX_FILES[0])
            write_json(gx_result, save_to / GX_FILES[1])
            write_parquet(table, save_to / GX_FILES[2])
            files = [f"{save_to.name}/{name}" for name in GX_FILES]  # relative: report.json names no machine path
    else:
        table = _facts(df).with_columns(df.select("id", *(c for c in _flat(df) if c.startswith("score_"))))
        suite = builtin_checks(steps, table.columns)
        results = _with_polars(table, suite)
    fail_on_error = bool(checks and checks.fail_on_error)
    critical = sum(not r["success"] and r["severity"] == "critical" for r in results)
    return {"engine": label, "passed": sum(r["success"] for r in results), "total": len(results),
            "fail_on_error": fail_on_error, "fails_run": fail_on_error and critical > 0, "files": files,
            "results": results}


def validate_parts(parts: list, steps: list, checks: ValidateConfig | None = None, output: OutputConfig | None = None,
                   save_to: Path | None = None, engine: str | None = None) -> dict[str, Any]:
    """`validate` on the final rows, given as parts (curate.parts.Part). Up to SAMPLE_ROWS rows they
    are validated together, as `validate` does. Beyond, the built-in expectations check every row
    in polars, a part at a time (each part's facts dropped once counted; ids kept as 64-bit hashes,
    the repeated ones read back to count exact repeats), and the recipe's declared expectations run
    in great-expectations on a deterministic sample of SAMPLE_ROWS rows (the gx/ files then hold
    that sample's table): GX's pandas table of every row would hold the whole data in memory."""
    from curate.report.compute import SAMPLE_ROWS, read_rows, sample_positions

    total = sum(p.rows for p in parts)
    if total <= SAMPLE_ROWS:
        return validate(read_rows(parts, None, None), steps, checks, output, save_to, engine)
    suite: list[Check] | None = None
    failing: dict[int, tuple[int, list]] = {}  # check -> (rows failing, first values)
    hashes = []
    for part in parts:
        df = part.read()
        table = _facts(df).with_columns(df.select("id", *(c for c in _flat(df) if c.startswith("score_"))))
        suite = suite if suite is not None else builtin_checks(steps, table.columns)
        hashes.append(table["id"].hash(seed=0))
        for k, check in enumerate(suite):
            column = check.kwargs.get("column")
            if check.type not in ("expect_column_values_to_be_in_set", "expect_column_values_to_be_between") \
                    or column not in table.columns:
                continue
            bad = _failing_rows(table[column], check)
            n, values = failing.get(k, (0, []))
            failing[k] = (n + int(bad.sum()), values + table[column].filter(bad).head(20 - len(values)).to_list())
    results = []
    for k, check in enumerate(suite or []):
        if check.type == "expect_table_row_count_to_be_between":
            results.append(_result(check, total >= check.kwargs["min_value"], f"{total} rows"))
        elif check.type == "expect_column_values_to_be_unique":
            n, values = _repeated_ids(parts, pl.concat(hashes))
            results.append(_result(check, n == 0, _failing(n, values)))
        else:
            n, values = failing.get(k, (0, []))
            results.append(_result(check, n == 0, _failing(n, values)))
    label = f"{POLARS_ENGINE} (built-in expectations on every row, a part at a time)"
    files: list[str] = []
    if declared_checks(checks):
        sample = read_rows(parts, None, sample_positions(total, SAMPLE_ROWS, salt=13))
        on_sample = validate(sample, steps, checks, output, save_to, engine)
        results += [r for r in on_sample["results"] if r["declared"]]
        label += f"; declared expectations: {on_sample['engine']} on a sample of {sample.height} rows"
        files = on_sample["files"]
    fail_on_error = bool(checks and checks.fail_on_error)
    critical = sum(not r["success"] and r["severity"] == "critical" for r in results)
    return {"engine": label, "passed": sum(r["success"] for r in results), "total": len(results),
            "fail_on_error": fail_on_error, "fails_run": fail_on_error and critical > 0, "files": files,
            "results": results}


def _repeated_ids(parts: list, hashes: pl.Series) -> tuple[int, list]:
    """(rows whose id another row has, some of those ids), from the ids' hashes: the ids whose hash
    repeats are read back, so a hash collision is not counted."""
    repeated = hashes.is_duplicated()
    if not repeated.any():
        return 0, []
    wanted = hashes.filter(repeated).unique()
    ids = pl.concat([col.filter(col.hash(seed=0).is_in(wanted)) for col in (p.read(["id"])["id"] for p in parts)])
    dup = ids.is_duplicated()
    return int(dup.sum()), ids.filter(dup).head(20).to_list()


def _failing_rows(col: pl.Series, check: Check) -> pl.Series:
    """Which values of `col` fail an in_set or between expectation (as GX counts them: nulls pass)."""
    kw = check.kwargs
    if check.type == "expect_column_values_to_be_in_set":
        return ~col.is_in(kw["value_set"])
    bad = pl.Series([False] * len(col), dtype=pl.Boolean)
    if kw.get("min_value") is not None:
        bad = bad | (col < kw["min_value"]).fill_null(False)
    if kw.get("max_value") is not None:
        bad = bad | (col > kw["max_value"]).fill_null(False)
    return bad


def raise_if_failed(report: dict) -> None:
    """ValidationFailed (exit code 3) if the run's validation failed with `validate.fail_on_error`;
    called after everything is written, so the report says what failed."""
    v = report.get("validation") or {}
    if v.get("fails_run"):
        failed = [r for r in v["results"] if not r["success"] and r.get("severity", "critical") == "critical"]
        raise ValidationFailed(
            f"validation failed ({len(failed)} of {v['total']} expectations, validate.fail_on_error is true): "
            + "; ".join(f"{r['expectation']}: {r['details']}" for r in failed)
            + ". The data is written; see report.md", report)


def _result(check: Check, success: bool, details: str) -> dict[str, Any]:
    return {"expectation": check.description, "type": check.type, "success": success, "severity": check.severity,
            "declared": check.declared, "details": "" if success else details}


def _failing(n: int, values: list) -> str:
    """"N rows fail, e.g. [up to 3 of the values]"; nulls are left out of the example (pandas
    gives them to GX as NaN), long texts cut."""
    shown = [v[:60] + "..." if isinstance(v, str) and len(v) > 63 else v for v in values
             if v is not None and v == v][:3]  # v != v: NaN
    return f"{n} rows fail" + (f", e.g. {shown}" if shown else " (null)" if values else "")


def _with_gx(table: pl.DataFrame, suite: list[Check]) -> tuple[list[dict[str, Any]], dict, dict]:
    """(results, the suite as GX's JSON, the validation result as GX's JSON)."""
    gx = require("great_expectations", "gx", "great-expectations")
    from great_expectations.expectations.registry import get_expectation_impl

    with contextlib.redirect_stderr(io.StringIO()):  # GX draws progress bars on stderr
        ctx = gx.get_context(mode="ephemeral")
        batch = (ctx.data_sources.add_pandas("curate").add_dataframe_asset("final")
                 .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": table.to_pandas()}))
        gsuite = gx.ExpectationSuite(name=SUITE_NAME)
        expectations = [get_expectation_impl(check.type)(**check.kwargs) for check in suite]
        for expectation in expectations:
            gsuite.add_expectation(expectation)  # an equal one already in the suite is not added twice
        res = batch.validate(gsuite)
    # GX orders results its own way (aggregates first): find each check's result by its configuration
    by_config = {_config_key(r.expectation_config): r for r in res.results}
    out = []
    for check, expectation in zip(suite, expectations):
        r = by_config[_config_key(expectation.configuration)]
        result = r.result or {}
        if r.exception_info and r.exception_info.get("raised_exception"):
            details = f"error in great-expectations: {r.exception_info.get('exception_message')}"
        elif check.type == "expect_table_row_count_to_be_between":
            details = f"{result.get('observed_value')} rows"
        elif "unexpected_count" in result:
            details = _failing(result["unexpected_count"], result.get("partial_unexpected_list") or [])
        else:
            observed = result.get("observed_value")
            details = f"observed {observed.item() if hasattr(observed, 'item') else observed!r}"  # numpy scalars
        out.append(_result(check, bool(r.success), details))
    return out, gsuite.to_json_dict(), res.to_json_dict()


def _config_key(config) -> tuple:
    """An expectation configuration as a key: its type and arguments (less the batch GX adds)."""
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return config.type, repr(sorted(kwargs.items())), str(config.severity)


def _with_polars(table: pl.DataFrame, suite: list[Check]) -> list[dict[str, Any]]:
    """The built-in expectations, the four GX types they use, in polars."""
    out = []
    for check in suite:
        kw = check.kwargs
        if check.type == "expect_table_row_count_to_be_between":
            ok = table.height >= kw["min_value"]
            out.append(_result(check, ok, f"{table.height} rows"))
            continue
        col = table[kw["column"]]
        if check.type == "expect_column_values_to_be_unique":
            bad = col.is_duplicated()
        elif check.type in ("expect_column_values_to_be_in_set", "expect_column_values_to_be_between"):
            bad = _failing_rows(col, check)
        else:
            raise ValueError(f"the polars engine runs the built-in expectations only, not {check.type}")
        n = int(bad.sum())
        out.append(_result(check, n == 0, _failing(n, col.filter(bad).head(20).to_list())))
    return out
