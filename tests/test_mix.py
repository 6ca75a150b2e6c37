"""Mixtures: requested weights or quotas met within 1% on three sources, in rows and in tokens."""

import json

import pytest

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.mix import Mix
from curate.recipe import load_recipe
from curate.records import make_frame
from curate.steps import Context


def three_sources():
    rows = []
    for source, n, words in (("a", 900, 6), ("b", 700, 25), ("c", 500, 60)):
        for i in range(n):
            text = " ".join(f"{source}{i}w{j}" for j in range(words + i % 7))
            rows.append({"messages": [{"role": "user", "content": f"{source} {i}"}, {"role": "assistant", "content": text}],
                         "source": source})
    return make_frame(rows)


def test_row_weights_within_one_percent():
    df = three_sources()
    result = Mix(weights={"a": 0.5, "b": 0.3, "c": 0.2}, total=1000).run(df, Context(seed=3))
    mix = result.stats["mix"]["sources"]
    assert result.kept.height == 1000
    for s, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(mix[s]["realized_share"] - share) <= 0.01
    assert result.kept.height + result.rejected.height == df.height
    assert set(result.rejected["reason"]) == {"over mixture quota"}


def test_weights_without_total_take_the_largest_feasible_mix():
    result = Mix(weights={"a": 1, "b": 1, "c": 1}).run(three_sources(), Context(seed=0))
    assert result.stats["mix"]["sources"]["c"]["realized"] == 500 and result.kept.height == 1500


def test_quotas_and_shortfall():
    result = Mix(quotas={"a": 100, "c": 600}).run(three_sources(), Context(seed=0))
    mix = result.stats["mix"]["sources"]
    assert mix["a"]["realized"] == 100 and mix["c"]["realized"] == 500 and mix["c"]["shortfall"] == 100
    assert set(result.rejected.filter(result.rejected["source"] == "b")["reason"]) == {"source not in the mixture"}


def test_bad_specs():
    with pytest.raises(ValueError, match="exactly one of weights or quotas"):
        Mix()
    with pytest.raises(CurateError, match=r"no rows from source\(s\) \['zzz'\]"):
        Mix(weights={"zzz": 1}).run(three_sources(), Context())


def test_token_weights_within_one_percent_in_a_recipe(tmp_path):
    df = three_sources()
    for s in ("a", "b", "c"):
        part = df.filter(df["source"] == s).select("messages")
        part.write_ndjson(tmp_path / f"{s}.jsonl")
    (tmp_path / "r.yaml").write_text(
        "name: mix\ninputs: [{path: a.jsonl, source: a}, {path: b.jsonl, source: b}, {path: c.jsonl, source: c}]\n"
        "steps:\n  - exact_dedup: {}\n  - mix: {weights: {a: 0.2, b: 0.3, c: 0.5}, unit: tokens, total: 40000}\n"
        "output: {validation: 0.1}\n")
    report = run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    mix = report["mix"]["sources"]
    for s, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert abs(mix[s]["realized_share"] - share) <= 0.01, mix
    assert abs(sum(v["realized"] for v in mix.values()) - 40000) <= 0.01 * 40000
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Mixture: requested vs realized (tokens)" in html
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rows"]["splits"]["validation"] > 0
