"""Output folders people can trust (issue 10): never lose, never mix, never hang.

Each test runs one reproduction from the issue on real files, real recipes and, where a teacher is
needed, the fault-injecting OpenAI-compatible server on 127.0.0.1 (tests/servers/fault_server.py):
- `--out` never deletes or overwrites a file no run wrote; recipe names stay inside runs/;
- a rerun retries the teacher requests that failed, and only those;
- one run at a time per folder (a lock naming its holder); a shared response cache stays whole;
- a killed or failed run leaves a folder marked incomplete, which `report` and `publish` refuse;
- damaged state files (cache, cache rows, markers, step files) are named and recovered from;
- output files readable by others, no temporary files left behind, the card's Markdown escaped;
- credentials in a URL never reach a written file;
and the soak (tests/test_soak.py).
"""

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from curate.cli import app
from curate.engine import run_recipe
from curate.report.write import rebuild_report
from curate.errors import CurateError
from curate.folder import LOCK, MANIFEST, holder, incomplete, locked
from curate.hub import publish
from curate.recipe import build_recipe, load_recipe, redact_command, redact_url
from curate.steps import Step
from tests.conftest import CLI_ENV, cli_cmd, filter_recipe, write_jsonl
from tests.servers.fault_server import fault_server

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"Question number {i}?", "completion": f"This is the answer to question {i}."} for i in range(12)]
ROWS += [ROWS[0], {"prompt": "Empty one?", "completion": ""}]  # an exact duplicate, an empty response
FILTERS = filter_recipe("reliable", source="handmade", output="{validation: 3}")


@pytest.fixture
def folder(tmp_path):
    """A user's folder: their data file and a filter-only recipe beside it."""
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    (tmp_path / "r.yaml").write_text(FILTERS)
    return tmp_path


def run(folder, out, overrides=(), recipe="r.yaml"):
    return run_recipe(load_recipe(folder / recipe, list(overrides)), out, show_progress=False)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file below `root` (but those below `skip`) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not (skip and skip in p.parents)}


# 1. --out deletes files it did not write ---------------------------------------------------------
def test_out_holding_the_users_files_is_refused_and_nothing_is_touched(tmp_path):
    """`--out .` in a folder whose data/ holds the user's input: the run used to delete that input."""
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "mine.jsonl", ROWS)
    (tmp_path / "r.yaml").write_text(FILTERS.replace("path: data.jsonl", "path: data/mine.jsonl"))
    before = snapshot(tmp_path)
    with pytest.raises(CurateError, match=r"holds files that are not a curate run's \(data/, r\.yaml\)"):
        run(tmp_path, tmp_path)
    assert snapshot(tmp_path) == before  # not even a lock file was left


def test_a_rerun_removes_only_files_a_run_wrote(folder):
    out = folder / "out"
    run(folder, out)
    assert (out / "data" / "validation.parquet").exists()
    (out / "data" / "notes.txt").write_text("mine")  # the user's file, in a run folder
    run(folder, out, ["output.validation=0"])
    assert sorted(p.name for p in (out / "data").iterdir()) == ["notes.txt", "train.jsonl", "train.parquet"]
    assert (out / "data" / "notes.txt").read_text() == "mine"
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert "data/validation.parquet" not in manifest and "data/notes.txt" not in manifest


def test_a_file_no_run_wrote_is_never_overwritten(folder):
    out = folder / "out"
    run(folder, out, ["output.files=[parquet]"])
    (out / "data" / "train.jsonl").write_text("the user's own file\n")
    with pytest.raises(CurateError, match=r"data/train\.jsonl already exist\(s\) but no curate run wrote them"):
        run(folder, out)  # this run would write data/train.jsonl
    assert (out / "data" / "train.jsonl").read_text() == "the user's own file\n"
    assert incomplete(out) is None  # refused before it changed anything


def test_a_run_folder_from_before_manifests_is_adopted(folder):
    out = folder / "out"
    run(folder, out, ["output.validation=0"])
    (out / MANIFEST).unlink()  # as a run of the previous version left it
    (out / ".curate.lock").unlink()
    (out / "data" / "validation.jsonl").write_text("{}\n")  # a split an old run wrote
    (out / "mine.txt").write_text("mine")
    report = run(folder, out)
    assert report["rows"]["splits"] == {"train": 9, "validation": 3}
    files = json.loads((out / MANIFEST).read_text())["files"]
    assert "data/validation.jsonl" in files and "steps/01-heuristics/_DONE.json" in files and "mine.txt" not in files
    assert (out / "mine.txt").read_text() == "mine"


def test_an_empty_existing_folder_is_fine(folder):
    (folder / "empty").mkdir()
    assert run(folder, folder / "empty")["rows"]["out"] == 12


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", ".", "..", "a/b", "", ".hidden", "a\\b"])
def test_a_recipe_name_stays_inside_runs(tmp_path, name):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": name, "steps": [{"exact_dedup": {}}]}))
    with pytest.raises(CurateError, match=r"name: .*not a plain folder name"):
        load_recipe(tmp_path / "r.yaml")


# 2. a rerun retries failed teacher requests --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rerun_retries_the_failed_requests_and_only_those(tmp_path, monkeypatch):
    """30% of requests fail with HTTP 500 and max_retries is 0; after the server recovers, a rerun
    used to say "skipped, unchanged", send nothing and keep the losses."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    prompts = [f"Tell me fact {i}." + (" FAULT:500:times=1" if i % 10 < 3 else "") for i in range(100)]
    prompts.append("A request the server calls bad. FAULT:400:times=always")
    write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": p} for p in prompts])
    cli = CliRunner()
    with fault_server() as server:
        (tmp_path / "r.yaml").write_text(
            "name: retry\ninputs: [{path: seeds.jsonl}]\n"
            f"teacher: {{backend: openai, model: fault, base_url: '{server.base_url}', max_retries: 0, max_concurrency: 8}}\n"
            "steps: [{responses: {max_tokens: 32}}, {exact_dedup: {}}]\n")
        argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--quiet"]

        first = cli.invoke(app, argv)
        assert first.exit_code == 0, first.output
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["rows"]["out"] == 70 and server.stats()["total"] == 101
        said = " ".join(first.output.split())
        assert "31 teacher requests failed (31 rows rejected as 'teacher request failed'" in said
        assert "30 of them (server errors, rate limits, timeouts, a wrong key) are retried if you run the same command again" in said
        assert "1 was refused as a bad request" in said
        marker = json.loads((tmp_path / "out" / "steps" / "01-responses" / "_DONE.json").read_text())
        assert marker["failed_requests"] == {"retry": 30, "for_good": 1}

        second = cli.invoke(app, argv)
        assert second.exit_code == 0, second.output
        stats = server.stats()
        # sent again: the 30 failed requests and the bad one (not cached either); nothing answered
        assert stats["total"] == 101 + 31
        assert {p for p, n in stats["by_prompt"].items() if n == 2} == {p for p in prompts if "FAULT" in p}
        said = " ".join(second.output.split())
        assert "ran again to retry 30 failed requests" in said and "retried if" not in said
        assert json.loads((tmp_path / "out" / "report.json").read_text())["rows"]["out"] == 100

        third = cli.invoke(app, argv)  # only a failure a rerun cannot fix is left: the step is skipped
        assert third.exit_code == 0, third.output
        assert "skipped, unchanged" in third.output and server.stats()["total"] == 132
        said = " ".join(third.output.split())
        assert "1 teacher request failed (1 rows" in said and "1 was refused as a bad request" in said and "retried if" not in said


# 3. one run at a time ----------------------------------------------------------------------------
def test_a_held_folder_is_refused_naming_its_holder(folder):
    out = folder / "out"
    with locked(out, purpose="run"):
        with pytest.raises(CurateError, match=rf"{out} is in use: another curate run holds it: pid {os.getpid()} on "):
            run(folder, out)
    assert run(folder, out)["rows"]["out"] == 12  # released: the next run goes ahead


def test_a_lock_taken_but_not_yet_signed_is_waited_for(tmp_path):
    """The second of two racing runs can read the lock file in the instant between the first one's
    flock and its write: the holder is still named (seen in a race of two CLI runs)."""
    (tmp_path / LOCK).write_text("")
    signer = threading.Timer(0.2, lambda: (tmp_path / LOCK).write_text(json.dumps(
        {"pid": 4242, "host": "h", "started": "now", "doing": "run", "command": "curate run r.yaml"})))
    signer.start()
    try:
        assert holder(tmp_path).startswith("another curate run holds it: pid 4242 on h")
    finally:
        signer.cancel()
    (tmp_path / LOCK).write_text("")
    assert holder(tmp_path, wait=0.05) == "another curate run holds it"  # never signed: said plainly


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_runs_into_one_folder_one_wins_the_other_refuses(tmp_path):
    """Two `curate run` into one --out at once used to mix their rows (29,413 rows in both train
    and validation) or crash; identical runs paid twice for the requests."""
    n = 60
    prompts = [f"Race question {i}?" for i in range(n)]
    write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": p} for p in prompts])
    with fault_server(delay=0.2, subprocess=True) as server:
        (tmp_path / "r.yaml").write_text(
            "name: race\ninputs: [{path: seeds.jsonl}]\n"
            f"teacher: {{backend: openai, model: fault, base_url: '{server.base_url}', max_concurrency: 2}}\n"
            "steps: [{responses: {max_tokens: 16}}]\noutput: {validation: 0.5}\n")
        for race in range(2):
            out = tmp_path / f"out{race}"
            server.reset()
            procs = [subprocess.Popen(cli_cmd(tmp_path / "r.yaml", out), cwd=ROOT, env=CLI_ENV, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
            results = [(p.wait(300), *p.communicate()) for p in procs]
            codes = sorted(code for code, _, _ in results)
            assert codes == [0, 2], results
            winner, loser = sorted(results, key=lambda r: r[0])
            assert f"{out} is in use: another curate run holds it: pid " in " ".join(loser[2].split())
            assert "Traceback" not in loser[2]
            train, val = (pl.read_parquet(out / "data" / f"{s}.parquet") for s in ("train", "validation"))
            assert train.height + val.height == n and set(train["id"]).isdisjoint(val["id"])
            assert server.stats()["total"] == n  # paid once
            assert incomplete(out) is None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_concurrent_runs_can_share_one_response_cache(tmp_path):
    """Two runs into two folders with one `cache:` file, at the same time: both finish with the
    same rows, and the cache holds each response once."""
    n = 40
    write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Shared question {i}?"} for i in range(n)])
    with fault_server(delay=0.05, subprocess=True) as server:
        (tmp_path / "r.yaml").write_text(
            f"name: shared\ninputs: [{{path: seeds.jsonl}}]\ncache: {tmp_path / 'shared.sqlite'}\n"
            f"teacher: {{backend: openai, model: fault, base_url: '{server.base_url}', max_concurrency: 4}}\n"
            "steps: [{responses: {max_tokens: 16}}]\n")
        procs = [subprocess.Popen(cli_cmd(tmp_path / "r.yaml", tmp_path / f"out{i}"), cwd=ROOT, env=CLI_ENV,
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
        results = [(p.wait(300), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    a, b = (pl.read_parquet(tmp_path / f"out{i}" / "data" / "train.parquet") for i in range(2))
    assert a.height == n and a.equals(b)
    with closing(sqlite3.connect(tmp_path / "shared.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == n


# 4. a killed or failed run leaves a mixed folder ----------------------------------------------------
class Crash(Step):
    """Stands in for a run that dies in the middle of a step (SIGKILL, out of memory): the soak
    below kills real processes; this is the fast, deterministic version."""

    kind: ClassVar[str] = "crash"

    def run(self, df, ctx):
        raise RuntimeError("the machine went away")


def test_a_run_that_died_after_changing_settings_marks_the_folder_incomplete(folder, capsys):
    out = folder / "out"
    run(folder, out)
    assert incomplete(out) is None
    changed = load_recipe(folder / "r.yaml", ["steps.heuristics.min_response_words=7"])
    changed.steps.append(Crash())
    with pytest.raises(RuntimeError):
        run_recipe(changed, out, show_progress=False)
    # new recipe.yaml and step 1 beside the old card and splits: the folder says it is not one run
    assert "min_response_words: 7" in (out / "recipe.yaml").read_text()
    assert "did not finish" in incomplete(out)
    with pytest.raises(CurateError, match="cannot rebuild its report: the run of 'reliable' started .* did not finish"):
        rebuild_report(out)
    with pytest.raises(CurateError, match="cannot publish it: .* did not finish"):
        publish(out, "me/x", api=object())  # refused before the Hub is reached
    result = CliRunner().invoke(app, ["inspect", str(out)])
    assert "is not a finished run" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["inspect", str(out / "data" / "train.parquet")])
    assert "is not a finished run" in " ".join(result.output.split())
    run(folder, out, ["steps.heuristics.min_response_words=7"])  # the rerun finishes: trusted again
    assert incomplete(out) is None and rebuild_report(out)["rows"]["out"] == 12


# 6. damaged state files ------------------------------------------------------------------------------
def test_an_unreadable_marker_reruns_its_step(folder, caplog):
    """A step's marker or a part's: the step (or the part) runs again. It writes the same part,
    so the next step, whose input is unchanged, is reused."""
    out = folder / "out"
    first = run(folder, out)
    for marker in (out / "steps" / "01-heuristics" / "_DONE.json", out / "steps" / "01-heuristics" / "parts" / "00000.json"):
        for garbage in (b"\x00\xff garbage", b"[1, 2]", b'{"hash": 7}'):
            written = (out / "steps" / "01-heuristics" / "parts" / "00000.parquet").stat().st_mtime_ns
            marker.write_bytes(garbage)
            again = run(folder, out)
            assert [s["skipped"] for s in again["steps"][1:]] == [False, True]
            assert f"{marker}: unreadable" in caplog.text
            assert again["rows"] == first["rows"]
            assert (out / "steps" / "01-heuristics" / "parts" / "00000.parquet").stat().st_mtime_ns > written


def test_report_names_an_unreadable_state_file(folder):
    out = folder / "out"
    run(folder, out)
    (out / "report.json").write_text('{"steps": [')
    with pytest.raises(CurateError, match=rf"{out / 'report.json'}: unreadable"):
        rebuild_report(out)
    (out / "report.json").write_text("[]")
    with pytest.raises(CurateError, match=rf"{out / 'report.json'}: not what a run writes"):
        rebuild_report(out)


@pytest.mark.parametrize("damage", ["missing", "garbage", "replaced"])
def test_a_missing_damaged_or_replaced_step_file_reruns_its_step(folder, caplog, damage):
    out = folder / "out"
    first = run(folder, out)
    data = out / "steps" / "01-heuristics" / "parts" / "00000.parquet"
    if damage == "missing":
        data.unlink()
    elif damage == "garbage":
        data.write_bytes(b"PAR1 not really")
    else:  # a valid parquet file, but not the step's output (another run's, an edited one)
        pl.read_parquet(data).head(2).write_parquet(data)
    again = run(folder, out)
    assert [s["skipped"] for s in again["steps"][1:]] == [False, True]  # the same part again: the next step's input
    assert str(data) in caplog.text and "running the step again" in caplog.text
    assert again["rows"] == first["rows"] and pl.read_parquet(data).height == 13


def teacher_recipe(tmp_path, server, n=20, name="cached"):
    write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Cached question {i}?"} for i in range(n)])
    (tmp_path / "r.yaml").write_text(
        f"name: {name}\ninputs: [{{path: seeds.jsonl}}]\n"
        f"teacher: {{backend: openai, model: fault, base_url: '{server.base_url}', max_concurrency: 4}}\n"
        "steps: [{responses: {max_tokens: 16}}, {exact_dedup: {}}]\n")
    return tmp_path / "r.yaml"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_damaged_cache_is_kept_aside_and_what_reads_is_recovered(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    with fault_server() as server:
        recipe = teacher_recipe(tmp_path, server, n=400)
        out = tmp_path / "out"
        first = run_recipe(load_recipe(recipe), out, show_progress=False)
        cache = out / "cache" / "llm.sqlite"
        # every step finished: a garbage cache is not even opened (it used to be fatal)
        cache.write_bytes(b"this is not a database" * 100)
        again = run_recipe(load_recipe(recipe), out, show_progress=False)
        assert [s["skipped"] for s in again["steps"][1:]] == [True, True] and server.stats()["total"] == 400

        # the step must run: the garbage file is kept aside, a new cache starts, every request is sent
        (out / "steps" / "01-responses" / "_DONE.json").unlink()
        again = run_recipe(load_recipe(recipe), out, show_progress=False)
        assert server.stats()["total"] == 800 and again["rows"] == first["rows"]
        damaged = sorted(out.glob("cache/llm.sqlite.damaged-*"))
        assert [p.read_bytes() for p in damaged if not p.name.endswith(("-wal", "-shm"))] == [b"this is not a database" * 100]
        assert "the response cache is damaged" in caplog.text and "with the 0 responses still readable" in caplog.text

        # half-written: cut at half its size; the rows that still read are recovered, the rest resent
        for p in damaged:
            p.unlink()
        size = cache.stat().st_size
        with open(cache, "r+b") as f:
            f.truncate(size // 2)
        (out / "steps" / "01-responses" / "_DONE.json").unlink()
        caplog.clear()
        again = run_recipe(load_recipe(recipe), out, show_progress=False)
        recovered = int(caplog.text.split("with the ")[1].split(" responses")[0])
        assert 0 < recovered < 400
        print(f"\ncache cut at half its size: {recovered} of 400 responses recovered")
        assert server.stats()["total"] == 800 + 400 - recovered and again["rows"] == first["rows"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_bad_cache_row_is_a_miss_and_an_empty_cache_is_named(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    with fault_server() as server:
        recipe = teacher_recipe(tmp_path, server)
        out = tmp_path / "out"
        first = run_recipe(load_recipe(recipe), out, show_progress=False)
        cache = out / "cache" / "llm.sqlite"
        with closing(sqlite3.connect(cache, isolation_level=None)) as db:
            key = db.execute("SELECT key FROM responses ORDER BY key LIMIT 1").fetchone()[0]
            db.execute("UPDATE responses SET response = '{\"text\": [truncated' WHERE key = ?", (key,))
            db.execute("UPDATE responses SET response = '{\"no_such_field\": 1}' WHERE key = (SELECT MAX(key) FROM responses)")
        (out / "steps" / "01-responses" / "_DONE.json").unlink()
        again = run_recipe(load_recipe(recipe), out, show_progress=False)
        assert server.stats()["total"] == 20 + 2 and again["rows"] == first["rows"]
        assert f"2 cached response(s) unreadable, sent again (first: key {key[:16]}" in caplog.text
        with closing(sqlite3.connect(cache)) as db:  # the fresh answers replaced the bad rows
            assert json.loads(db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()[0])["text"]

        cache.write_bytes(b"")
        for suffix in ("-wal", "-shm"):
            Path(f"{cache}{suffix}").unlink(missing_ok=True)
        (out / "steps" / "01-responses" / "_DONE.json").unlink()
        again = run_recipe(load_recipe(recipe), out, show_progress=False)
        assert f"{cache}: the response cache file is empty (0 bytes)" in caplog.text
        assert server.stats()["total"] == 22 + 20 and again["rows"] == first["rows"]


# 9. modes, leftovers, the card's Markdown -----------------------------------------------------------
def test_outputs_are_readable_by_others_under_umask_022(folder):
    old = os.umask(0o022)
    try:
        run(folder, folder / "out")
    finally:
        os.umask(old)
    modes = {p.relative_to(folder / "out").as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in (folder / "out").rglob("*") if p.is_file()}
    assert {"data/train.parquet", "README.md", "report.html", "steps/01-heuristics/parts/00000.parquet"} <= set(modes)
    assert {m for m in modes.values()} == {0o644}, modes


def test_temporary_files_of_a_killed_run_are_cleared_and_no_others(folder):
    out = folder / "out"
    run(folder, out)
    left = [out / ".records.parquet.k1ll3d_x.tmp", out / "steps" / "02-exact_dedup" / "parts" / ".00000.parquet.abcd1234.tmp",
            out / "data" / ".train.jsonl.zzzzzzzz.tmp"]
    for p in left:
        p.write_bytes(b"half a file")
    mine = out / ".notes.txt.abcdefgh.tmp"  # looks alike, but no run writes notes.txt
    mine.write_text("mine")
    run(folder, out)
    assert not any(p.exists() for p in left) and mine.read_text() == "mine"


def test_a_source_name_is_escaped_in_the_card(folder):
    (folder / "r.yaml").write_text(FILTERS.replace("source: handmade", "source: 'a|b <script>x</script> *bold*'"))
    run(folder, folder / "out")
    card = (folder / "out" / "README.md").read_text()
    assert r"a\|b \<script\>x\</script\> \*bold\*" in card
    assert "<script>" not in card.split("```yaml")[0]  # only the recipe's YAML block shows it as written


# 10. credentials in URLs --------------------------------------------------------------------------
def test_credentials_in_a_url_reach_no_written_file(folder, monkeypatch):
    secret = "s3cr3t-pa55"
    url = f"http://alice:{secret}@127.0.0.1:9/v1?api_key={secret}&region=eu"
    # as typed in a shell: the command line is written down too (the folder's lock names its holder)
    monkeypatch.setattr(sys, "argv", ["curate", "run", "r.yaml", "-o", f"teacher.base_url={url}",
                                      "-o", f"teacher.api_key={secret}"])
    run(folder, folder / "out", [f"teacher.base_url={url}"])
    assert "teacher.base_url=http://***@127.0.0.1:9/v1" in json.loads((folder / "out" / ".curate.lock").read_text())["command"]
    for path in (folder / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    written = yaml.safe_load((folder / "out" / "recipe.yaml").read_text())["teacher"]["base_url"]
    assert written == "http://***@127.0.0.1:9/v1?api_key=%2A%2A%2A&region=eu"
    assert load_recipe(folder / "r.yaml", [f"teacher.base_url={url}"]).config.teacher.base_url == url  # still used
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    # a URL typed as an argument of its own keeps everything but its secrets
    assert redact_command(["curate", f"http://a:{secret}@h/v1?api_key={secret}&region=eu", "--out", "a=b"]) == (
        "curate http://***@h/v1?api_key=%2A%2A%2A&region=eu --out a=b")


def test_redaction_leaves_other_values_alone():
    raw = {"name": "x", "teacher": {"base_url": "https://tok@host/v1"}, "inputs": [{"path": "a://b@c/d.jsonl"}],
           "description": "mail me at a@b.c"}
    assert build_recipe(raw).raw == {"name": "x", "teacher": {"base_url": "https://***@host/v1"},
                                     "inputs": [{"path": "a://***@c/d.jsonl"}], "description": "mail me at a@b.c"}
