"""The Ray engine (issue 12 part 3) on a real multi-node Ray cluster on 127.0.0.1: a head (no CPUs:
the driver's) and two worker nodes of 1 CPU, started and stopped here. The same recipes give the
same files on both engines; a worker node removed in the middle of a run loses and duplicates no
row; the response cache on the driver lets a rerun send only what is missing."""

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from curate.engine import run_recipe
from curate.errors import CurateError
from curate.recipe import load_recipe
from filters import MinHashDedup
from tests.conftest import ROOT, needs, shared
from tests.test_parts import alpaca_rows

STORE = 200 * 2**20  # object store bytes per node: the engine passes only small objects through it
SAME = ["records.parquet", "rejects.parquet"]  # besides data/*


def same_files(a: Path, b: Path) -> list[str]:
    """The files compared (data/* and SAME), asserting each is byte-identical in both run folders."""
    names = sorted(p.relative_to(a).as_posix() for p in (a / "data").iterdir()) + SAME
    assert names == sorted(p.relative_to(b).as_posix() for p in (b / "data").iterdir()) + SAME
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


def run(recipe: str, out: Path, *overrides: str) -> dict:
    return run_recipe(load_recipe(ROOT / recipe, list(overrides)), out, show_progress=False)


@pytest.fixture(scope="module")
def cluster():
    needs(("ray", "ray"))
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "object_store_memory": STORE})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=STORE)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.mark.slow
def test_filter_recipe_same_files_on_both_engines(cluster, tmp_path, monkeypatch):
    """curate-existing in 4 parts (so both workers take parts), local and on the cluster, into a
    folder named relative to the working directory (the tasks run in other processes)."""
    parts = "engine.part_rows=20"
    monkeypatch.chdir(tmp_path)
    local = run("recipes/curate-existing.yaml", Path("local"), parts)
    on_ray = run("recipes/curate-existing.yaml", Path("ray"), parts, "engine.name=ray",
                 f"engine.address={cluster.address}")
    compared = same_files(tmp_path / "local", tmp_path / "ray")
    # above a part's rows the data is sharded a part a shard: 54 train rows in 3 shards, 6 validation rows
    assert [n for n in compared if n.endswith(".parquet")] == [
        *(f"data/train-0000{i}-of-00003.parquet" for i in range(3)), "data/validation-00000-of-00001.parquet", *SAME]
    assert [(s["step"], s["rows_in"], s["rows_out"], s["dropped"]) for s in on_ray["steps"]] == \
        [(s["step"], s["rows_in"], s["rows_out"], s["dropped"]) for s in local["steps"]]
    marker = json.loads((tmp_path / "ray" / "steps" / "02-heuristics" / "_DONE.json").read_text())
    assert (marker["parts"], marker["parts_reused"]) == (4, 0)
    for name in ("README.md", "report.md"):  # the card and report name the same steps and counts
        assert (tmp_path / "ray" / name).exists()


def on_workers_only(name: str, fn, calls: Path):
    """`fn` (a STATE step's group-by function) failing if it is called in this process (the
    driver), and leaving a note of where it ran and on how many rows. Pickled by value (it is no
    module's attribute), so a Ray task runs it, and it calls the real function there."""
    driver = os.getpid()

    def guarded(frame, **kwargs):
        assert os.getpid() != driver, f"{name} ran on the driver, not in a Ray Data stage"
        import ray

        note = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "rows": frame.height}
        (calls / f"{name}-{os.getpid()}-{uuid.uuid4().hex}.json").write_text(json.dumps(note))
        return fn(frame, **kwargs)
    return guarded


@pytest.mark.slow
def test_global_steps_group_by_in_ray_data_stages_and_mix_gives_the_same_files(cluster, tmp_path, monkeypatch):
    """Exact dedup, MinHash and a token mixture of two sources (real Alpaca rows with planted
    copies and near copies) in 12 parts: the same files on both engines, and on Ray every
    group-by of the three steps (exact dedup's groups of equal hashes, MinHash's buckets band by
    band, mix's per-source totals and its sampling) ran in Ray Data tasks on the worker nodes,
    over every row's state, never in the driver; the hash keys in partitions of at most 500 rows."""
    import curate.engines.ray
    import curate.mix
    import filters.dedup

    for name, n in (("a", 700), ("b", 500)):
        path = shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl") if name == "a" else \
            shared("nuggets_alpaca_gpt4", "alpaca_gpt4_bad_scored.jsonl")
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(path, n, len(name))))
    (tmp_path / "r.yaml").write_text(
        "name: mix-on-ray\nseed: 5\ninputs: [{path: a.jsonl, source: a}, {path: b.jsonl, source: b}]\n"
        "steps:\n  - exact_dedup: {}\n  - minhash_dedup: {threshold: 0.7}\n"
        "  - mix: {weights: {a: 0.6, b: 0.4}, unit: tokens}\n"
        "output: {validation: 0.1, files: [parquet, jsonl]}\nengine: {part_rows: 100}\n")
    local = run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "local", show_progress=False)
    calls = tmp_path / "calls"
    calls.mkdir()
    functions = {"first_of_groups": filters.dedup, "band_edges": filters.dedup, "totals": curate.mix,
                 "left_out": curate.mix}
    for name, module in functions.items():
        monkeypatch.setattr(module, name, on_workers_only(name, getattr(module, name), calls))
    monkeypatch.setattr(curate.engines.ray, "ROWS_PER_PARTITION", 500)
    on_ray = run_recipe(load_recipe(tmp_path / "r.yaml", ["engine.name=ray", f"engine.address={cluster.address}"]),
                        tmp_path / "ray", show_progress=False)
    same_files(tmp_path / "local", tmp_path / "ray")
    assert on_ray["mix"] == local["mix"]
    steps = {s["kind"]: s for s in on_ray["steps"]}
    assert steps["mix"]["rows_out"] < steps["mix"]["rows_in"]
    assert steps["mix"]["dropped"] == {"over mixture quota": steps["mix"]["rows_in"] - steps["mix"]["rows_out"]}
    assert steps["exact_dedup"]["dropped"] and steps["minhash_dedup"]["dropped"]
    notes = [json.loads(p.read_text()) | {"fn": p.name.split("-")[0]} for p in calls.iterdir()]
    workers = {node.node_id for node in cluster.worker_nodes}
    assert {n["node"] for n in notes} <= workers and os.getpid() not in {n["pid"] for n in notes}
    rows = {name: sum(n["rows"] for n in notes if n["fn"] == name) for name in functions}
    tasks = {name: sum(n["fn"] == name for n in notes) for name in functions}
    bands = MinHashDedup(threshold=0.7).lsh()[0]
    assert rows == {"first_of_groups": steps["exact_dedup"]["rows_in"], "band_edges": bands * steps["minhash_dedup"]["rows_in"],
                    "totals": steps["mix"]["rows_in"], "left_out": steps["mix"]["rows_in"]}
    assert steps["exact_dedup"]["rows_in"] == 1200 and 1000 < steps["minhash_dedup"]["rows_in"] <= 1200
    assert tasks == {"first_of_groups": 3, "band_edges": 3 * bands, "totals": 1, "left_out": 1}  # sources: one task


@pytest.mark.slow
def test_quickstart_same_files_and_rerun_sends_only_the_missing(cluster, tmp_path, monkeypatch):
    """The embedded model in two actors, one on each worker; the cache on the driver."""
    monkeypatch.setenv("CURATE_THREADS", "1")
    small = ["steps.responses.max_tokens=96"]
    ray = ["engine.name=ray", f"engine.address={cluster.address}"]
    local = run("recipes/quickstart.yaml", tmp_path / "local", "inputs.0.limit=5", *small)
    on_ray = run("recipes/quickstart.yaml", tmp_path / "ray", "inputs.0.limit=5", *small, *ray)
    same_files(tmp_path / "local", tmp_path / "ray")
    assert on_ray["llm"]["sent"] == local["llm"]["sent"] == 5
    assert on_ray["rows"] == local["rows"]
    # two more seeds: the five answered requests come from the driver's cache, two are sent
    more = run("recipes/quickstart.yaml", tmp_path / "ray", "inputs.0.limit=7", *small, *ray)
    assert (more["llm"]["sent"], more["llm"]["cache_hits"]) == (2, 5)


@pytest.mark.slow
def test_a_steps_error_in_a_task_reads_as_it_does_locally(cluster, tmp_path):
    """A bad eval set, read by decontamination in a task on a worker: the same error as locally."""
    bad = tmp_path / "evals.jsonl"
    bad.write_text('{"question": "fine"}\nnot json\n')
    evals = f"steps.decontaminate.eval_sets=[{bad}]"
    with pytest.raises(CurateError) as local:
        run("recipes/curate-existing.yaml", tmp_path / "local", evals)
    with pytest.raises(CurateError) as on_ray:
        run("recipes/curate-existing.yaml", tmp_path / "ray", evals, "engine.name=ray", f"engine.address={cluster.address}")
    assert str(on_ray.value) == str(local.value) == f"{bad}:2: malformed JSON (Expecting value at column 1)"


@pytest.mark.slow
def test_server_teacher_from_two_actors_a_window_each(cluster, tmp_path):
    """An OpenAI-compatible server (the fault server, 0.2 s an answer) behind two actors with a
    window of 3 each: up to 6 requests in flight, the same files as the local engine's window of 3."""
    from tests.servers.fault_server import fault_server

    with fault_server(delay=0.2) as server:
        teacher = ["teacher.backend=openai", f"teacher.base_url={server.base_url}", "teacher.model=echo",
                   "teacher.max_concurrency=3"]
        local = run("recipes/quickstart.yaml", tmp_path / "local", *teacher)
        assert server.stats(per_prompt=False)["max_in_flight"] <= 3
        server.reset()
        on_ray = run("recipes/quickstart.yaml", tmp_path / "ray", *teacher, "engine.name=ray",
                     f"engine.address={cluster.address}", "engine.actors=2")
        seen = server.stats(per_prompt=False)
    same_files(tmp_path / "local", tmp_path / "ray")
    assert on_ray["llm"]["sent"] == local["llm"]["sent"] == seen["completed"] == 31  # 32 seeds, two alike
    assert 3 < seen["max_in_flight"] <= 6


def cli(out: Path, address: str, recipe: str, settings: list[str]) -> list[str]:
    return [sys.executable, "-m", "curate.cli", "run", str(ROOT / recipe), "--out", str(out), "--quiet",
            "--engine", "ray", "--address", address, *(x for s in settings for x in ("-o", s))]


def remove_a_worker_during(cluster, cmd: list[str], when) -> bool:
    """Run `cmd` and remove a worker node once `when()` holds; if the run then fails, run it again
    (with the node back). Whether the first run finished on its own."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while proc.poll() is None and not when() and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the node could be removed"
    cluster.remove_node(next(iter(cluster.worker_nodes)))
    try:
        proc.communicate(timeout=600)
        if proc.returncode != 0:  # the run may fail with the node; the rerun must then finish it
            again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert again.returncode == 0, again.stderr
        return proc.returncode == 0
    finally:
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()


@pytest.mark.slow
def test_worker_node_removed_mid_run_loses_no_row(cluster, tmp_path):
    """A worker node removed while MinHash's state tasks run on both: Ray retries its tasks on the
    other node (or, if the run fails, a rerun redoes the parts without a marker); the files are
    those of the local engine, byte for byte, so no row is lost or duplicated."""
    data = tmp_path / "rows.jsonl"
    rows = alpaca_rows(shared("quality_cherry_alpaca_ifd", "cherry_alpaca_5_percent.jsonl"), 3000, 7)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = [f"inputs.0.path={data}", "inputs.0.source=alpaca", "engine.part_rows=150"]  # 20 parts
    run("recipes/curate-existing.yaml", tmp_path / "local", *settings)
    out = tmp_path / "ray"
    states = out / "steps" / "03-minhash_dedup" / "state"
    remove_a_worker_during(cluster, cli(out, cluster.address, "recipes/curate-existing.yaml", settings),
                           lambda: states.is_dir() and any(states.glob("*.json")))
    same_files(tmp_path / "local", out)
    report = json.loads((out / "report.json").read_text())
    assert report["rows"]["out"] + report["rows"]["rejected"] == len(rows)


@pytest.mark.slow
def test_worker_node_with_a_teacher_actor_removed_mid_generation(cluster, tmp_path, monkeypatch):
    """A worker node removed, with the teacher actor on it, once the first answers are cached: the
    other actor answers the rest, and the files are the local engine's."""
    monkeypatch.setenv("CURATE_THREADS", "1")
    settings = ["inputs.0.limit=6", "steps.responses.max_tokens=96"]
    run("recipes/quickstart.yaml", tmp_path / "local", *settings)
    out = tmp_path / "ray"
    cache = out / "cache" / "llm.sqlite"

    def answered() -> int:
        try:
            with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as db:
                return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        except sqlite3.Error:  # not there yet
            return 0

    finished = remove_a_worker_during(cluster, cli(out, cluster.address, "recipes/quickstart.yaml", settings),
                                      lambda: cache.exists() and answered() >= 1)
    assert finished  # the lost actor's requests went to the other one
    same_files(tmp_path / "local", out)


def test_ray_engine_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    """Without Ray installed: the install hint, and nothing written."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    with pytest.raises(CurateError, match=r"pip install 'curate-sft\[ray\]'"):
        run("recipes/curate-existing.yaml", tmp_path / "out", "engine.name=ray")
    assert not (tmp_path / "out").exists()


def test_an_address_where_no_ray_listens_is_an_error_at_once(tmp_path):
    """Not minutes of Ray retrying the connection, and nothing written."""
    needs(("ray", "ray"))
    from tests.servers.processes import free_port

    address = f"127.0.0.1:{free_port()}"
    started = time.time()
    with pytest.raises(CurateError, match=f"cannot join the Ray cluster at {address}: nothing answers there"):
        run("recipes/curate-existing.yaml", tmp_path / "out", "engine.name=ray", f"engine.address={address}")
    assert time.time() - started < 30
    assert not (tmp_path / "out").exists()


def test_ray_settings_on_the_local_engine_are_an_error():
    with pytest.raises(CurateError, match="engine.address applies to the ray engine only"):
        load_recipe(ROOT / "recipes" / "curate-existing.yaml", ["engine.address=127.0.0.1:9100"])
    assert load_recipe(ROOT / "recipes" / "curate-existing.yaml", ["engine=ray"]).config.engine.name == "ray"
    with pytest.raises(CurateError, match="engine.workers applies to the local engine only"):
        load_recipe(ROOT / "recipes" / "curate-existing.yaml", ["engine.name=ray", "engine.workers=2"])
    assert load_recipe(ROOT / "recipes" / "curate-existing.yaml", ["engine.workers=3"]).config.engine.local_workers() == 3


def test_engine_shorthand_takes_the_command_line_settings(tmp_path):
    """`engine: ray` in a recipe, then --engine local or another part size from the command line."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "curate-existing.yaml").read_text().replace(
        "data/existing_pairs.jsonl", str(ROOT / "recipes" / "data" / "existing_pairs.jsonl")) + "engine: ray\n")
    assert load_recipe(recipe).config.engine.name == "ray"
    assert load_recipe(recipe, ["engine.name=local"]).config.engine.name == "local"
    assert load_recipe(recipe, ["engine.part_rows=10"]).config.engine.model_dump(include={"name", "part_rows"}) == \
        {"name": "ray", "part_rows": 10}
