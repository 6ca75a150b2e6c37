"""Resume: SIGKILL a run in the middle of its generation step, rerun it, and count at the server.

The teacher is the fault-injecting OpenAI-compatible server (a subprocess on 127.0.0.1) answering
after a fixed delay, so the kill lands while requests are in flight. The checks: no record lost or
duplicated, and the rerun sends exactly the requests whose responses had not reached the cache, so
only requests in flight at the kill are sent twice.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.servers.fault_server import fault_server

ROOT = Path(__file__).resolve().parents[1]
N, CONCURRENCY = 60, 4
pytestmark = pytest.mark.slow


def test_sigkill_mid_generation_then_rerun(tmp_path):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(N)]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
    with fault_server(delay=0.15, subprocess=True) as server:
        (tmp_path / "r.yaml").write_text(
            "name: resume\n"
            "inputs: [{path: seeds.jsonl}]\n"
            f"teacher: {{backend: openai, model: fault, base_url: '{server.base_url}', max_concurrency: {CONCURRENCY}}}\n"
            "steps: [{responses: {max_tokens: 32}}]\n"
        )
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "curate.cli", "run", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet"]
        env = {**os.environ, "OPENAI_API_KEY": "test-key-not-secret"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while server.stats(per_prompt=False)["completed"] < N // 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close(), proc.stderr.close()

        at_kill = server.stats()
        with sqlite3.connect(out / "cache" / "llm.sqlite") as db:
            arrived = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert 0 < arrived < N, "the kill must land in the middle of generation"
        assert not (out / "steps" / "01-responses" / "_DONE.json").exists()

        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        final = server.stats()

    # The rerun sent exactly the requests whose responses had not been cached before the kill.
    assert final["total"] - at_kill["total"] == N - arrived
    counts = final["by_prompt"]
    assert set(counts) == set(prompts)
    sent_twice = [p for p, c in counts.items() if c > 1]
    assert all(c <= 2 for c in counts.values())
    # Only requests in flight at the kill (at most max_concurrency) may have been sent twice.
    assert len(sent_twice) <= CONCURRENCY, sent_twice
    assert final["total"] == N + len(sent_twice)

    train = pl.read_parquet(out / "data" / "train.parquet")
    asked = [m[0]["content"] for m in train["messages"].to_list()]
    assert sorted(asked) == sorted(prompts)  # none lost, none duplicated
    assert train["id"].n_unique() == N
    print(f"\nresume: {arrived}/{N} responses cached at the kill, {N - arrived} sent by the rerun, "
          f"{len(sent_twice)} sent twice (in flight at the kill)")
