"""A recipe run against a misbehaving OpenAI-compatible server completes: every request that
fails for good becomes a reject with its reason, the rest are written, and nothing hangs."""

import json
import time

import polars as pl
import pytest

from curate.engine import run_recipe
from curate.recipe import load_recipe
from tests.servers.fault_server import fault_server

PROMPTS = {
    "Say hello politely to the reader.": None,  # answered
    "Rate limited once, then fine. FAULT:429:after=1": None,  # answered after the cooldown
    "Flaky twice, then fine. FAULT:500:times=2": None,  # answered after two retries
    "Always broken. FAULT:500:times=always": "HTTP 500",
    "Not JSON. FAULT:NONJSON:times=always": "JSON",
    "Cut short. FAULT:TRUNC:times=always": "JSON",
    "Too slow. FAULT:SLOW:secs=30:times=always": "timeout",
    "Bad request. FAULT:400:times=always": "HTTP 400",
}


@pytest.mark.timeout(120)
def test_failures_become_rejects_and_the_run_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS))
    with fault_server() as server:
        (tmp_path / "r.yaml").write_text(
            "name: faults\ninputs: [{path: seeds.jsonl}]\n"
            f"teacher: {{backend: openai, model: fault, base_url: '{server.base_url}', timeout: 1.0,"
            " max_retries: 2, max_concurrency: 8}\n"
            "steps: [{responses: {max_tokens: 32}}]\n"
        )
        started = time.time()
        report = run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
        elapsed = time.time() - started

    train = pl.read_parquet(tmp_path / "out" / "data" / "train.parquet")
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    answered = {m[0]["content"] for m in train["messages"].to_list()}
    assert answered == {p for p, err in PROMPTS.items() if err is None}
    assert rejects.height == 5 and set(rejects["reason"]) == {"teacher request failed"}
    for row in rejects.iter_rows(named=True):
        prompt = row["messages"][0]["content"]
        assert PROMPTS[prompt].lower() in row["detail"].lower(), (prompt, row["detail"])
    assert report["llm"]["failures"] == 5
    # bounded: 1 s timeout x 3 attempts plus backoff for the slow one; the rest in parallel
    assert elapsed < 60
    # the key reaches no file: data, rejects, report, card, step folders, cache (and its WAL)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"sk-test-secret-value" not in path.read_bytes(), path
