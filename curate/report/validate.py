"""Validation of a run's final data with great-expectations (extra `gx`).

The suite is built from the recipe: at least one row, ids unique, no empty turns, roles alternate
(an optional system turn, then user/assistant, ending with the assistant), prompt and response
lengths within bounds, no response the teacher stopped at max_tokens (meta.finish_reason "length":
a cut answer teaches the model to stop mid-sentence), and each filter's score columns within the
range the filter declares. The row-level facts are computed with polars and handed to
great-expectations as columns, so the same checks run without it; the report says which engine
produced the results.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from typing import Any

import polars as pl

from curate.errors import require
from curate.records import finish_reasons, message_text
from curate.steps import Filter

MAX_RESPONSE_WORDS = 8000
GX = "great-expectations"
POLARS_ENGINE = "polars"


def _facts(df: pl.DataFrame) -> pl.DataFrame:
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    contents = pl.col("messages").list.eval(pl.element().struct.field("content").fill_null("").str.strip_chars())
    facts = df.select(
        "id",
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


def expectations(steps: list, df: pl.DataFrame) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, column, kwargs) triples: the suite for this recipe's final data."""
    max_words = max([getattr(s, "max_response_words", 0) for s in steps] + [MAX_RESPONSE_WORDS])
    suite = [
        ("row_count", "", {"min_value": 1}),
        ("unique", "id", {}),
        ("between", "empty_turns", {"min_value": 0, "max_value": 0}),
        ("in_set", "roles_alternate", {"value_set": [True]}),
        ("between", "prompt_words", {"min_value": 1}),
        ("between", "response_words", {"min_value": 1, "max_value": max_words}),
        ("in_set", "response_cut", {"value_set": [False]}),
    ]
    for step in steps:
        if isinstance(step, Filter):
            for col, (lo, hi) in step.score_ranges().items():
                if col in df.columns:
                    suite.append(("between", col, {k: v for k, v in (("min_value", lo), ("max_value", hi)) if v is not None}))
    return suite


def _describe(kind: str, column: str, kw: dict) -> str:
    if kind == "row_count":
        return f"at least {kw['min_value']} row"
    if kind == "unique":
        return f"{column} values are unique"
    if kind == "in_set" and column == "roles_alternate":
        return "roles alternate (user/assistant, system first if any)"
    if kind == "in_set" and column == "response_cut":
        return "no response cut at max_tokens (meta.finish_reason = length)"
    if kind == "in_set":
        return f"{column} is always {kw['value_set'][0]}"
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if column == "empty_turns" and lo == hi == 0:
        return "no empty messages (empty_turns = 0)"
    return f"{column} between {lo if lo is not None else '-inf'} and {hi if hi is not None else 'inf'}"


def validate(df: pl.DataFrame, steps: list, engine: str | None = None) -> dict[str, Any]:
    """Run the suite; {"engine", "passed", "total", "results": [{expectation, success, details}]}.

    engine: "great-expectations" (needs the `gx` extra), "polars", or None for great-expectations
    when it is installed and polars otherwise."""
    if engine not in (None, GX, POLARS_ENGINE):
        raise ValueError(f"engine must be {GX!r}, {POLARS_ENGINE!r} or None, not {engine!r}")
    table = _facts(df)
    scores = [c for c in df.columns if c.startswith("score_") and df.schema[c].is_numeric()]
    table = table.with_columns(df.select(scores)) if scores else table
    suite = expectations(steps, table)
    label = engine
    if engine is None:
        engine = GX if importlib.util.find_spec("great_expectations") else POLARS_ENGINE
        label = engine if engine == GX else f"{POLARS_ENGINE} (great-expectations not installed: pip install 'curate-sft[gx]')"
    results = _with_gx(table, suite) if engine == GX else _with_polars(table, suite)
    return {"engine": label, "passed": sum(r["success"] for r in results), "total": len(results), "results": results}


def validate_parts(parts: list, steps: list, engine: str | None = None) -> dict[str, Any]:
    """`validate` on the final rows, given as parts (curate.parts.Part). Up to SAMPLE_ROWS rows they
    are validated together (great-expectations when installed); beyond, with polars, a part at a
    time: every row is checked, each part's facts dropped once counted (ids are kept as hashes)."""
    from curate.report.compute import SAMPLE_ROWS, read_rows

    total = sum(p.rows for p in parts)
    if total <= SAMPLE_ROWS:
        return validate(read_rows(parts, None, None), steps, engine)
    suite = None
    failing: dict[int, list] = {}  # expectation -> [rows failing, first values]
    ids = []
    for part in parts:
        df = part.read()
        table = _facts(df)
        scores = [c for c in df.columns if c.startswith("score_") and df.schema[c].is_numeric()]
        table = table.with_columns(df.select(scores)) if scores else table
        suite = suite or expectations(steps, table)
        ids.append(table["id"].hash(seed=0))
        for k, (kind, column, kw) in enumerate(suite):
            if kind in ("row_count", "unique") or column not in table.columns:
                continue
            bad = _failing(table[column], kind, kw)
            got = failing.setdefault(k, [0, []])
            got[0] += int(bad.sum())
            got[1] += table[column].filter(bad).head(3 - len(got[1])).to_list()
    hashes = pl.concat(ids)
    repeated = hashes.is_duplicated()
    firsts = []
    if repeated.any():  # the ids of the first repeated rows, read back
        wanted = set(hashes.filter(repeated).unique().to_list())
        for part in parts:
            col = part.read(["id"])["id"]
            firsts += col.filter(col.hash(seed=0).is_in(list(wanted))).head(3 - len(firsts)).to_list()
            if len(firsts) == 3:
                break
    results = []
    for k, (kind, column, kw) in enumerate(suite):
        if kind == "row_count":
            n, examples = (0 if total >= kw["min_value"] else total), []
            results.append({"expectation": _describe(kind, column, kw), "success": n == 0,
                            "details": "" if n == 0 else f"{total} rows"})
            continue
        n, examples = (int(repeated.sum()), firsts) if kind == "unique" else failing.get(k, [0, []])
        results.append({"expectation": _describe(kind, column, kw), "success": n == 0,
                        "details": f"{n} rows fail, e.g. {examples[:3]}" if n else ""})
    return {"engine": f"{POLARS_ENGINE} (every row, a part at a time)", "passed": sum(r["success"] for r in results),
            "total": len(results), "results": results}


def _failing(col: pl.Series, kind: str, kw: dict) -> pl.Series:
    """Which values of `col` fail an in_set or between expectation."""
    if kind == "in_set":
        return ~col.is_in(kw["value_set"])
    bad = pl.Series([False] * len(col), dtype=pl.Boolean)
    if kw.get("min_value") is not None:
        bad = bad | (col < kw["min_value"]).fill_null(False)
    if kw.get("max_value") is not None:
        bad = bad | (col > kw["max_value"]).fill_null(False)
    return bad


def _with_gx(table: pl.DataFrame, suite) -> list[dict[str, Any]]:
    gx = require("great_expectations", "gx", "great-expectations")
    import great_expectations.expectations as gxe

    classes = {"unique": gxe.ExpectColumnValuesToBeUnique, "between": gxe.ExpectColumnValuesToBeBetween,
               "in_set": gxe.ExpectColumnValuesToBeInSet, "row_count": gxe.ExpectTableRowCountToBeBetween}
    with contextlib.redirect_stderr(io.StringIO()):  # GX draws progress bars on stderr
        ctx = gx.get_context(mode="ephemeral")
        batch = (ctx.data_sources.add_pandas("curate").add_dataframe_asset("final")
                 .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": table.to_pandas()}))
        gsuite = gx.ExpectationSuite(name="curate-final")
        for kind, column, kw in suite:
            gsuite.add_expectation(classes[kind](**kw) if kind == "row_count" else classes[kind](column=column, **kw))
        res = batch.validate(gsuite)
    out = []
    for (kind, column, kw), r in zip(suite, res.results):
        if kind == "row_count":
            out.append({"expectation": _describe(kind, column, kw), "success": bool(r.success),
                        "details": "" if r.success else f"{r.result.get('observed_value')} rows"})
            continue
        bad = r.result.get("unexpected_count") or 0
        sample = r.result.get("partial_unexpected_list") or []
        out.append({"expectation": _describe(kind, column, kw), "success": bool(r.success),
                    "details": f"{bad} rows fail, e.g. {sample[:3]}" if not r.success else ""})
    return out


def _with_polars(table: pl.DataFrame, suite) -> list[dict[str, Any]]:
    out = []
    for kind, column, kw in suite:
        if kind == "row_count":
            ok = table.height >= kw["min_value"]
            out.append({"expectation": _describe(kind, column, kw), "success": ok,
                        "details": "" if ok else f"{table.height} rows"})
            continue
        col = table[column]
        bad = col.is_duplicated() if kind == "unique" else _failing(col, kind, kw)
        n = int(bad.sum())
        out.append({"expectation": _describe(kind, column, kw), "success": n == 0,
                    "details": f"{n} rows fail, e.g. {col.filter(bad).head(3).to_list()}" if n else ""})
    return out
