"""The Ray engine: `curate run RECIPE --engine ray [--address ADDR]` (or `engine: ray` in a recipe).

The same recipe, parts, markers, outputs and report as the local engine (curate.engine, whose run
this one extends); only where the work happens changes. The driver (the `curate run` process)
holds the output folder, reads and checks the inputs, writes the input parts, and writes every
step's summary, the final files and the report. Then, step by step:

- row-local steps (BATCHES): each input part not already finished is one row of a Ray Dataset,
  and `map_batches` runs the step on it on any node (curate.engine.run_work), which reads the part
  and writes the output part, its rejects and its marker. Ray retries the task of a node that is
  lost; a run that fails anyway is finished by a rerun, which redoes only the parts without a marker.
- global steps through compact state (STATE: exact and MinHash dedup, mix): each part's state
  (hashes, MinHash band keys, sources and sizes) by `map_batches`; then the step's `resolve` on
  the driver, whose group-bys over every row's state are Ray Data stages (`RayStates`): exact
  dedup's groups of equal hashes, MinHash's buckets band by band (a task a band), mix's per-source
  totals and then its sampling, each a task per key column (or per slice of its hash keys) that
  reads its column of the state parts and runs the step's function on a worker. The driver gets
  their results (the duplicates' groups, the candidate pairs, the rows left out) and does what is
  left over those: reading back the candidates' texts to verify the pairs, connected components
  over the verified pairs, the fingerprint over the content hashes read part by part. Then each
  part's `apply` by `map_batches` with the answer shipped once through the object store. The
  functions and the answer are the local engine's, so the same rows come out.
- steps that need every row (FRAME): gathered on the driver, as locally.
- steps that call the teacher: the step's Python on the driver (requests and parsing are light),
  the model in a pool of Ray actors (`TeacherPool`): one model per actor for the embedded model and
  vLLM (GPUs by `engine.actor_gpus`), a window of `teacher.max_concurrency` requests per actor for
  an OpenAI-compatible server. The response cache stays the driver's: it looks every request up
  before anything is sent, sends the misses to the actors and stores each response as it comes
  back. One writer on one machine: SQLite's WAL mode shares a file only between processes of one
  host (it needs shared memory, so not over NFS), and actors may be on other machines. A rerun
  sends only what the cache lacks, as locally. The actors are released before a step that runs
  tasks, so their CPUs go to the tasks.

Workers read and write the run folder and the files a recipe names at the driver's paths, from
the driver's working directory: on a real cluster these live on a filesystem every node mounts at
the same path (NFS, a shared volume in KubeRay), and every node has the same curate installed.
Ray is imported only here; without it the engine says how to install it.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import traceback
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

import curate
from curate.engine import LocalRun, PlannedStep, Teacher, Work, run_work
from curate.errors import CurateError
from curate.llm.base import Backend, Request, Response
from curate.llm.client import LLM
from curate.llm.teacher import TeacherConfig, build_backend, build_llm
from curate.parts import Part, Unit
from curate.recipe import EngineConfig
from curate.states import GroupFn, PolarsStates, Resolved, States
from curate.steps import Context

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'curate-sft[ray]'"
# Environment variables of ours that shape what a worker computes or where it caches (never secrets).
PASSED_ENV = ("CURATE_THREADS", "CURATE_CACHE_DIR", "CURATE_FASTTEXT_CACHE", "CURATE_DEBUG")


def require_ray():
    """The `ray` module (with Ray Data), or a CurateError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise CurateError(f"the ray engine needs Ray with Ray Data ({exc}): {INSTALL_HINT}") from None
    return ray


class RayConnection:
    """This process joined to a Ray cluster for a run: `engine.address` (or RAY_ADDRESS), else a Ray
    started for the run alone. Workers get the driver's code path and curate's environment
    variables. A connection made here is closed by `close`; one already open (a notebook's
    `ray.init`) is used and left open."""

    def __init__(self, cfg: EngineConfig):
        self.ray = require_ray()
        self.owned = not self.ray.is_initialized()
        quiet_ray_data(self.ray)
        if not self.owned:
            return
        root = str(Path(curate.__file__).resolve().parents[1])
        paths = [root, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root)]
        env = {"PYTHONPATH": os.pathsep.join(paths), **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            check_reachable(address)
        # "local": a Ray of our own, never a stray cluster another program left on this machine
        extra = {} if address else {"include_dashboard": False}
        try:
            self.ray.init(address=address or "local", runtime_env={"env_vars": env}, logging_level=logging.WARNING,
                          **extra)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CurateError(f"cannot join the Ray cluster at {address}: {exc}") from None

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


def check_reachable(address: str) -> None:
    """Refuse a HOST:PORT nobody listens on: ray.init would retry it for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://, auto: Ray's own to resolve
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise CurateError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc}); start it "
                          "with `ray start --head --port=PORT`, or leave out --address to start a Ray for this run") from None


def quiet_ray_data(ray) -> None:
    """No progress bars or per-dataset INFO lines: the run prints its own summary."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


class RayRun(LocalRun):
    """The local engine's run with the units of BATCHES and STATE steps done as Ray Data tasks."""

    def __init__(self, *args, connection: RayConnection, **kwargs):
        super().__init__(*args, **kwargs)
        self.ray = connection.ray
        self.small = False  # the parts are written by workers: there are no frames to keep

    def units(self, p: PlannedStep, items: list[Unit | Work], resolved: Resolved | None = None) -> list[Unit]:
        works = [w for w in items if isinstance(w, Work)]
        if not works or p.step.needs_llm:  # the teacher's steps run here, their model in the actors
            return super().units(p, items, resolved)
        self.teacher.release()  # the CPUs the teacher's actors hold go to the tasks
        for w in works:
            self.folder.claim(w.paths())
        done = iter(map_works(self.ray, works, self.ctx, resolved))
        return [item if isinstance(item, Unit) else next(done) for item in items]

    @contextmanager
    def llm_for(self, p: PlannedStep):
        if p.step.needs_llm:
            self.teacher.get().backend.ensure()
        with super().llm_for(p):
            yield

    def states(self, states: list[Part]) -> States:
        self.teacher.release()  # the group-bys' tasks need the CPUs the teacher's actors hold
        return RayStates(self.ray, states)


def map_works(ray, works: list[Work], ctx: Context, resolved: Resolved | None) -> list[Unit]:
    """Do `works` as Ray Data tasks, one a block (so as many run at once as the cluster has CPUs);
    each writes its unit's files where the local engine would, and hands back the Unit."""
    shared = ray.put({"works": works, "ctx": replace(ctx, llm=None, show_progress=False), "resolved": resolved,
                      "cwd": os.getcwd()})
    ds = ray.data.from_items([{"n": n} for n in range(len(works))], override_num_blocks=len(works))
    rows = ds.map_batches(_do_works, batch_size=1, batch_format="numpy", fn_kwargs={"shared": shared},
                          num_cpus=1).take_all()
    done = {int(r["n"]): pickle.loads(r["unit"]) for r in rows}
    for n in range(len(works)):
        if isinstance(done[n], BaseException):
            raise done[n]  # the step's own error, as the local engine would raise it
    return [done[n] for n in range(len(works))]


def _do_works(batch: dict[str, np.ndarray], shared) -> dict[str, np.ndarray]:
    """The Ray Data function: the works numbered in `batch`, each written by `run_work`."""
    import ray

    got = ray.get(shared)
    if os.getcwd() != got["cwd"] and os.path.isdir(got["cwd"]):
        os.chdir(got["cwd"])  # a recipe's relative paths are the driver's (see the module docstring)
    units = []
    for n in batch["n"]:
        try:
            units.append(pickle.dumps(run_work(got["works"][int(n)], got["ctx"], got["resolved"])))
        except Exception as exc:  # handed back whole: Ray Data would wrap it in its own error and drop the cause
            exc.add_note(f"raised in a Ray task:\n{traceback.format_exc()}")  # for CURATE_DEBUG=1
            try:
                units.append(pickle.dumps(exc))
            except Exception:  # an error that does not pickle goes through Ray's wrapper
                raise exc from None
    return {"n": batch["n"], "unit": np.array(units, dtype=object)}


# STATE steps' group-bys ---------------------------------------------------------------------------
ROWS_PER_PARTITION = 2_000_000  # rows of a key column one group-by task takes at most (~50 MB of state)


class RayStates(States):
    """`States` whose group-bys are a Ray Data stage: one task per key column (MinHash: a band
    each), or per slice of its keys modulo a number of partitions when the column has more than
    ROWS_PER_PARTITION rows, so that every group is whole in one task. A task reads its column of
    every state part from the filesystem every node shares (the parts are small: 8 bytes a row
    a column) and runs the step's function there, as the local engine does (`PolarsStates.group`);
    only the functions' results come back to the driver. A column read in row order (`chunks`:
    a fingerprint) is read by the driver, part by part.

    Why tasks that each read what they group, not Ray Data's own group-by (`groupby().map_groups`,
    or `repartition(keys=...)` and `map_batches`): its hash shuffle runs its map and reduce tasks
    in worker pools of their own, and on 2 CPUs their processes start cold and push out the
    workers of the other stages, which start cold again after it: 200k rows through the
    filter-only recipe took x1.72 the local engine's time that way, against x1.18 with the
    group-bys on the driver (bench/README.md has the figures of this design). And `map_groups`
    calls its function once per group: a million calls for a million distinct hashes."""

    def __init__(self, ray, parts: list[Part]):
        self.ray, self.parts = ray, parts
        self.offsets = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).astype(np.int64)

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def schema(self) -> pl.Schema:
        return pl.read_parquet_schema(self.parts[0].path) if self.parts else pl.Schema()

    def chunks(self, column: str) -> Iterator[np.ndarray]:
        for part in self.parts:
            yield pl.read_parquet(part.path, columns=[column]).to_series().to_numpy()

    def groups(self, keys: list[str], fn: GroupFn, columns: list[str] = ()) -> pl.DataFrame:
        columns, schema = list(columns), self.schema
        if not self.rows:  # nothing to distribute: the function's answer for no rows, for its columns
            return fn(pl.DataFrame(schema={"row": pl.Int64, "key": schema[keys[0]], **{c: schema[c] for c in columns}}))
        # keys that are not integers (mix's values of `by`, a few distinct ones) are grouped by one task
        tasks = [{"key": key, "part": part, "partitions": n} for key in keys
                 for n in [-(-self.rows // ROWS_PER_PARTITION) if schema[key].is_integer() else 1] for part in range(n)]
        ds = self.ray.data.from_items(tasks, override_num_blocks=len(tasks))
        ds = ds.map_batches(_group_task, batch_size=1, batch_format="numpy", num_cpus=1,
                            fn_kwargs={"paths": [str(p.path) for p in self.parts], "columns": columns, "fn": fn})
        return pl.concat([pl.from_arrow(table) for table in self.ray.get(ds.to_arrow_refs())])


def _group_task(batch: dict[str, np.ndarray], paths: list[str], columns: list[str], fn: GroupFn):
    """The Ray Data function of a group-by: `fn` over the groups of one key column (partition)."""
    states = PolarsStates(pl.scan_parquet(paths))
    return pl.concat([states.group(str(key), fn, columns, int(part), int(n))
                      for key, part, n in zip(batch["key"], batch["part"], batch["partitions"])]).to_arrow()


# The teacher --------------------------------------------------------------------------------------
class TeacherActor:
    """One copy of the teacher's backend (one model, or one client of a server) in a Ray actor."""

    def __init__(self, cfg: TeacherConfig, cwd: str):
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.backend = build_backend(cfg)

    def describe(self) -> dict[str, Any]:
        b = self.backend
        return {"name": b.name, "model": b.model, "max_concurrency": b.max_concurrency,
                "supports_raw_prompt": b.supports_raw_prompt}

    async def complete(self, request: Request) -> Response:
        # the actor's one event loop keeps the backend's connections open from request to request
        return await self.backend.acomplete(request)


class TeacherPool(Backend):
    """A Backend whose requests are answered by Ray actors (`TeacherActor`): each request goes to the
    live actor with the fewest in flight, at most its backend's `max_concurrency` (1 for a model in
    process, the recipe's window for a server). An actor lost with its node is not restarted (it
    would wait for a free CPU that the survivors hold): its requests go to the others, and only when
    none is left do they fail (and a rerun sends them). The actors start at the first request and
    stop at `release` (a later step starts them again)."""

    def __init__(self, ray, cfg: TeacherConfig, engine: EngineConfig):
        self.ray, self.cfg, self.engine = ray, cfg, engine
        self.actors: list = []
        self.busy: list[int] = []
        self.lost: set[int] = set()
        self.name, self.model, self.max_concurrency, self.supports_raw_prompt = self._describe()

    def _start(self) -> dict[str, Any]:
        n = self.engine.actors or self._default_actors()
        remote = self.ray.remote(TeacherActor).options(num_cpus=self.engine.actor_cpus, num_gpus=self.engine.actor_gpus,
                                                       max_concurrency=1000)
        self.actors = [remote.remote(self.cfg, os.getcwd()) for _ in range(n)]
        self.busy, self.lost = [0] * n, set()
        try:
            return self.ray.get([a.describe.remote() for a in self.actors])[0]
        except self.ray.exceptions.RayActorError as exc:
            raise CurateError(f"the teacher could not start in a Ray actor: {exc}") from None

    def _default_actors(self) -> int:
        if self.cfg.backend == "openai":
            return 1  # a server takes the window from one actor; more actors multiply rpm/tpm budgets
        resources = self.ray.cluster_resources()
        if self.engine.actor_gpus:
            return max(1, int(resources.get("GPU", 0) // self.engine.actor_gpus))
        return max(1, int(resources.get("CPU", 1) // max(self.engine.actor_cpus, 1e-9)))

    def _describe(self) -> tuple[str, str, int, bool]:
        info = self._start()
        return info["name"], info["model"], info["max_concurrency"] * len(self.actors), info["supports_raw_prompt"]

    def ensure(self) -> None:
        """Start the actors again if `release` stopped them."""
        if not self.actors:
            self._start()

    async def acomplete(self, request: Request) -> Response:
        while True:
            live = [k for k in range(len(self.actors)) if k not in self.lost]
            if not live:
                return Response(error="every Ray actor of the teacher was lost")
            k = min(live, key=lambda a: self.busy[a])
            self.busy[k] += 1
            try:
                return await self.actors[k].complete.remote(request)
            except self.ray.exceptions.RayActorError:  # its node is gone: another actor answers
                if k not in self.lost:
                    log.warning("a teacher actor was lost (%d of %d left); its requests go to the others",
                                len(live) - 1, len(self.actors))
                self.lost.add(k)
            except self.ray.exceptions.RayError as exc:  # a failed request, sent again by a rerun
                return Response(error=f"Ray: {type(exc).__name__}: {exc}")
            finally:
                self.busy[k] -= 1

    def release(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors, self.busy, self.lost = [], [], set()

    def close(self) -> None:
        self.release()


class RayTeacher(Teacher):
    """The recipe's teacher with its model in a `TeacherPool`, the response cache on the driver."""

    def __init__(self, *args, connection: RayConnection, engine: EngineConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.ray, self.engine = connection.ray, engine

    def build(self, cache: Path) -> LLM:
        cfg = self.recipe.config.teacher
        return build_llm(cfg, cache, show_progress=self.show_progress, backend=TeacherPool(self.ray, cfg, self.engine))

    def release(self) -> None:
        if self.llm is not None:
            self.llm.backend.release()
