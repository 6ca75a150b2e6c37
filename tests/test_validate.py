"""Validation of the final data: each expectation of the suite is seen to fail on a row that breaks
it, in the polars checks and in great-expectations, and passes on clean rows (a check that cannot
fail would report every run as valid)."""

import polars as pl
import pytest

from curate.records import make_frame
from curate.report.validate import validate
from filters.heuristics import Heuristics

ENGINES = ["polars", pytest.param("great-expectations", marks=pytest.mark.filterwarnings("ignore"))]


def turn(role, content):
    return {"role": role, "content": content}


def row(prompt="What is rain?", response="Water that falls from clouds.", finish="stop", **extra):
    return {"messages": [turn("user", prompt), turn("assistant", response)], "meta": {"finish_reason": finish}, **extra}


CLEAN = [row(), row("Name a planet.", "Mars is the fourth planet."), row("Say hi.", "Hi there!", finish=None)]

# One broken row per expectation: the expectations it breaks (an empty turn also has no words), rows.
EMPTY = "no empty messages (empty_turns = 0)"
BROKEN = {
    "duplicate id": ({"id values are unique"}, [row(id="a"), row("Name a planet.", "Mars.", id="a")]),
    "empty response": ({EMPTY, "response_words between 1 and 8000"}, [row(), row("Name a planet.", "  ")]),
    "empty prompt": ({EMPTY, "prompt_words between 1 and inf"}, [row(), row(" ", "An answer to nothing.")]),
    "user after user": ({"roles alternate (user/assistant, system first if any)"},
                        [row(), {"messages": [turn("user", "a"), turn("user", "b"), turn("assistant", "c")]}]),
    "too long": ({"response_words between 1 and 8000"}, [row(), row("Say a lot.", "word " * 8001)]),
    "cut response": ({"no response cut at max_tokens (meta.finish_reason = length)"},
                     [row(), row("List three tips.", "1. **Prioritize Tasks", finish="length")]),
    "score out of range": ({"score_heuristics_prompt_copy between 0.0 and 1.0"}, [row(), row("Name a planet.", "Mars.")]),
}

def scored(rows, bad_score=False):
    df = Heuristics().score(make_frame(rows))
    if bad_score:  # an impossible share in the last row, as a broken scorer would write
        df = df.with_columns(pl.Series("score_heuristics_prompt_copy", [0.0] * (df.height - 1) + [1.5]))
    return df


def failed(result):
    return {c["expectation"]: c["details"] for c in result["results"] if not c["success"]}


@pytest.mark.parametrize("engine", ENGINES)
def test_clean_rows_meet_every_expectation(engine):
    result = validate(scored(CLEAN), [Heuristics()], engine=engine)
    assert result["engine"] == engine
    assert result["total"] == 9 and result["passed"] == 9, failed(result)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_expectation_is_reported_failed(engine, case):
    expected, rows = BROKEN[case]
    df = scored(rows, bad_score=case == "score out of range")
    result = validate(df, [Heuristics()], engine=engine)
    fails = failed(result)
    assert set(fails) == expected  # these, and only these
    for details in fails.values():
        assert details.startswith(("1 rows fail", "2 rows fail"))  # a duplicate id counts both rows
    assert result["passed"] == result["total"] - len(expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_no_rows_fails_the_row_count(engine):
    result = validate(scored(CLEAN).head(0), [Heuristics()], engine=engine)
    assert failed(result) == {"at least 1 row": "0 rows"}


def test_rows_without_finish_reason_are_not_cut():
    """Existing datasets and files written before meta had finish_reason: unknown is not cut."""
    df = scored(CLEAN).drop("meta").with_columns(pl.lit(None).alias("meta"))
    assert validate(df, [Heuristics()], engine="polars")["passed"] == 9


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="engine must be"):
        validate(scored(CLEAN), [], engine="pandas")
