"""The batch route: requests through a provider's batch API instead of one HTTP request each.

With `teacher.batch` set (backend openai), `LLM.generate` hands the requests the cache lacks to
`BatchRoute.run`, so every generator and judge gets it without a change:

1. Each request becomes a line of a JSONL input file, `{"custom_id", "method": "POST", "url":
   "/v1/chat/completions" or "/v1/completions", "body"}`, the body built as the online route builds
   it (`OpenAIBackend.payload`; stop sequences past the API's 4 are cut from the answers here). A
   batch has one endpoint, so chat and raw-completion requests go in separate files, and each file
   keeps to `max_requests` lines and `max_bytes` bytes (OpenAI: 50,000 and 200 MB): a large step
   is several batches.
2. Each file is uploaded (the `openai` SDK: files.create), its requests recorded in the response
   cache as in flight (request key -> file, custom_id), the batch created (batches.create,
   completion window 24h) and its id recorded.
3. The batches are polled every `poll_seconds` (batches.retrieve) with a progress bar of their
   request_counts until each has ended: completed, failed (the file did not validate), expired
   (24 hours passed) or cancelled.
4. The output and error files are read line by line (files.content) and mapped back by
   custom_id; each answer goes into the cache as it is read (in transactions of 500), so a kill
   after the download loses nothing.

A run killed while a batch is in flight (or interrupted with Ctrl-C, which leaves the batch
running) finds its requests in the cache on the rerun and waits for that batch: no new batch
for them, nothing answered twice. Even a kill between creating a batch and recording its id is
covered: the rerun looks the batch up by its input file (batches.list), and creates it from the
uploaded file only if there is none.

What does not come back as an answer is a failed request (Response.error), so its row goes to
rejects with the reason ("teacher request failed", the detail naming the batch and what
happened) and the step's marker counts it: requests of a batch that expired, was cancelled or
failed validation, and error-file lines with a server error, are sent again, in a new batch, by
the next run; error lines with HTTP 400/413/422 are bad requests and are not (as online). A
batch that cannot be reached (the server is down) fails its requests for this run but stays
recorded, so the rerun re-attaches to it.

Two transports: `OpenAIBatches` (the files and batches endpoints, through the `openai` SDK) and
`FolderBatches` (`batch.folder`: input files written to a folder, answered by whoever runs them,
e.g. vLLM's `run_batch`, which reads and writes the same JSONL; README.md says how).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from curate.errors import CurateError, require
from curate.io import atomic_path
from curate.llm.base import Request, Response
from curate.llm.cache import ResponseCache
from curate.llm.openai_backend import BAD_REQUEST_STATUS, MAX_STOP, OpenAIBackend, cut_at_stops

if TYPE_CHECKING:
    from curate.llm.teacher import TeacherConfig

log = logging.getLogger(__name__)

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})  # a batch in these states changes no more
COMPLETION_WINDOW = "24h"  # the only window the OpenAI Batch API offers
_SETTLE_EVERY = 500  # answers stored per cache transaction while a result file is read
_POLL_FAILURES = 5  # consecutive failed polls of a batch before this run gives up waiting for it


class BatchGone(Exception):
    """The batch or one of its files no longer exists where it was made: its requests are sent again."""


@dataclass
class BatchState:
    """A batch as its transport reports it."""

    id: str
    status: str  # OpenAI's: validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: str = ""  # why the batch failed as a whole (validation errors)
    files: tuple[str, ...] = ()  # the output and error files, to read once it has ended
    waiting_for: str = ""  # what it waits on, when that is worth saying (a folder batch: its output file)

    @property
    def ended(self) -> bool:
        return self.status in ENDED


class OpenAIBatches:
    """The OpenAI Batch API (files and batches endpoints) through the `openai` SDK, which also
    retries failed calls (`max_retries`, with backoff)."""

    endpoints = (CHAT, COMPLETIONS)

    def __init__(self, client, where: str, secret: str | None = None, transfer_timeout: float = 600.0):
        self.client = client
        self.where = where  # the base URL, in messages
        self.__secret = secret  # the API key, kept out of every message (servers echo a rejected key)
        self.transfer_timeout = transfer_timeout  # seconds for an upload or download (up to 200 MB)
        self._openai = require("openai", "batch")

    def redact(self, text: str) -> str:
        return text.replace(self.__secret, "***") if self.__secret else text

    def close(self) -> None:
        self.client.close()

    def upload(self, data: bytes, name: str) -> str:
        try:
            return self.client.files.create(file=(f"{name}.jsonl", data, "application/jsonl"), purpose="batch",
                                            timeout=self.transfer_timeout).id
        except self._openai.APIStatusError as exc:
            raise SubmitRefused(_api_error(exc)) from None

    def create(self, file_id: str, endpoint: str, label: str) -> str:
        try:
            batch = self.client.batches.create(input_file_id=file_id, endpoint=endpoint,
                                               completion_window=COMPLETION_WINDOW,
                                               metadata={"made_by": "curate", "step": label[:512]})
        except self._openai.APIStatusError as exc:
            if exc.status_code < 500 and exc.status_code not in (408, 409, 429):
                raise SubmitRefused(_api_error(exc)) from None
            raise
        return batch.id

    def find(self, file_id: str, since: float) -> str | None:
        """The batch made from `file_id`, uploaded at `since` (the list is newest first, so the
        search stops at batches made well before the upload)."""
        for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == file_id:
                return batch.id
            if batch.created_at < since - 3600:
                return None
        return None

    def state(self, batch_id: str) -> BatchState:
        try:
            b = self.client.batches.retrieve(batch_id)
        except self._openai.NotFoundError:
            raise BatchGone(f"batch {batch_id} not found at {self.where}") from None
        counts = b.request_counts
        errors = "; ".join(_batch_error(e) for e in (b.errors.data or [])[:5]) if b.errors else ""
        return BatchState(b.id, b.status, counts.total if counts else 0, counts.completed if counts else 0,
                          counts.failed if counts else 0, errors, tuple(f for f in (b.output_file_id, b.error_file_id) if f))

    def results(self, state: BatchState) -> Iterator[dict]:
        for file_id in state.files:
            try:
                with self.client.files.with_streaming_response.content(file_id, timeout=self.transfer_timeout) as resp:
                    for line in resp.iter_lines():
                        if line.strip():
                            yield json.loads(line)
            except self._openai.NotFoundError:
                raise BatchGone(f"file {file_id} of batch {state.id} not found at {self.where}") from None


class FolderBatches:
    """Batch input files written to a folder and answered by another program, which writes each
    answer file beside its input: `NAME.input.jsonl` -> `NAME.output.jsonl`, one line per request
    (vLLM's run_batch writes answers and errors alike into that one file). A batch is in progress
    until its output file holds a line for every request; curate only writes input files, each
    named by its content, and never replaces or deletes a file."""

    # vLLM's run_batch (0.32) stops at the first line that is not a chat request, answering none.
    endpoints = (CHAT,)

    def __init__(self, folder: Path, model: str):
        self.folder = Path(folder)
        self.where = str(self.folder)
        self.model = model
        self._ids: dict[str, set[str]] = {}  # batch -> custom_ids in its input file

    def redact(self, text: str) -> str:
        return text

    def close(self) -> None:
        pass

    def input_file(self, name: str) -> Path:
        return self.folder / f"{name}.input.jsonl"

    def output_file(self, name: str) -> Path:
        return self.folder / f"{name}.output.jsonl"

    def upload(self, data: bytes, name: str) -> str:
        name = f"{name}-{hashlib.sha256(data).hexdigest()[:12]}"
        path = self.input_file(name)
        if path.exists():
            if path.read_bytes() != data:
                raise CurateError(f"{path} exists with other content; curate does not overwrite it (move it away)")
            return name
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
        log.warning("batch input %s written (%d requests): answer it with e.g.\n  python -m vllm.entrypoints.openai."
                    "run_batch -i %s -o %s --model MODEL --served-model-name %s\nthen rerun (or let this run wait)",
                    path, data.count(b"\n"), path, self.output_file(name), self.model)
        return name

    def create(self, file_id: str, endpoint: str, label: str) -> str:
        return file_id  # the input file is the batch

    def find(self, file_id: str, since: float) -> str | None:
        return file_id

    def _custom_ids(self, name: str) -> set[str]:
        if name not in self._ids:
            path = self.input_file(name)
            if not path.exists():
                raise BatchGone(f"{path} is gone")
            with open(path, encoding="utf-8") as f:
                self._ids[name] = {json.loads(line)["custom_id"] for line in f if line.strip()}
        return self._ids[name]

    def state(self, batch_id: str) -> BatchState:
        ids = self._custom_ids(batch_id)
        out = self.output_file(batch_id)
        done = failed = 0
        seen: set[str] = set()
        for line in self._lines(out):
            if line.get("custom_id") in ids and line["custom_id"] not in seen:
                seen.add(line["custom_id"])
                failed += not _answered(line)
        done = len(seen) - failed
        status = "completed" if len(seen) == len(ids) else "in_progress"
        return BatchState(batch_id, status, len(ids), done, failed, files=(str(out),),
                          waiting_for="" if status == "completed" else f"waiting for {out}")

    def results(self, state: BatchState) -> Iterator[dict]:
        yield from self._lines(Path(state.files[0]))

    @staticmethod
    def _lines(path: Path) -> Iterator[dict]:
        """The complete lines of an output file (it may be being written: a cut last line ends it)."""
        if not path.exists():
            return
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    return


class SubmitRefused(Exception):
    """The provider refused an input file or a batch (a 4xx): sending the same again will not help."""


@dataclass
class BatchRoute:
    """Sends requests as batches, waits for them, and maps the answers back (module docstring)."""

    backend: OpenAIBackend  # builds each request's body and reads each answer, as online
    transport: OpenAIBatches | FolderBatches
    cache: ResponseCache  # where the requests in flight are kept, and the answers
    poll_seconds: float = 30.0
    max_requests: int = 50_000
    max_bytes: int = 200_000_000
    show_progress: bool = True
    _states: dict[str, BatchState] = field(default_factory=dict, init=False, repr=False)

    def close(self) -> None:
        self.transport.close()

    def run(self, todo: dict[str, Request], label: str, done: int = 0, total: int | None = None) -> dict[str, Response]:
        """A Response for every request of `todo` (keyed by cache key): answered, or failed with why."""
        results: dict[str, Response] = {}
        watch = self._reattach(todo, results, label)
        waiting = set().union(*watch.values())
        watch.update(self.submit({k: r for k, r in todo.items() if k not in results and k not in waiting}, label,
                                 results))
        if watch:
            self._wait(watch, todo, results, label, done, total if total is not None else done + len(todo))
        return results

    # -- sending ---------------------------------------------------------------------------------

    def submit(self, todo: dict[str, Request], label: str, results: dict[str, Response]) -> dict[str, set[str]]:
        """Send `todo` as new batches without waiting for them: batch id -> request keys. Requests
        that could not be sent get their failed Response in `results`."""
        watch: dict[str, set[str]] = {}
        for endpoint, lines in self.input_files(todo, results):
            self._submit(endpoint, lines, label, watch, results)
        return watch

    def input_files(self, todo: dict[str, Request], results: dict[str, Response]):
        """(endpoint, [(key, custom_id, line bytes)]) per input file: one endpoint a file, at most
        max_requests lines and max_bytes bytes each. A request that cannot be built, or alone is
        larger than a file may be, fails here (for good: sending it again changes nothing)."""
        chunks: dict[str, list] = {CHAT: [], COMPLETIONS: []}  # the file being filled, per endpoint
        sizes = {CHAT: 0, COMPLETIONS: 0}
        for key, request in todo.items():
            endpoint = CHAT if request.messages is not None else COMPLETIONS
            if endpoint not in self.transport.endpoints:
                results[key] = Response(error=f"a raw-completion request cannot go in a batch file for "
                                              f"{self.transport.where}: vLLM's run_batch takes chat requests only",
                                        permanent=True)
                continue
            try:
                _, body = self.backend.payload(request)
            except ValueError as exc:
                results[key] = Response(error=f"cannot build request: {exc}", permanent=True)
                continue
            custom_id = key[:32]  # short: providers cap custom_id lengths; unique within a batch
            line = json.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body},
                              ensure_ascii=False).encode("utf-8") + b"\n"
            if len(line) > self.max_bytes:
                results[key] = Response(error=f"request of {len(line):,} bytes is larger than a batch input file may "
                                              f"be (batch.max_bytes={self.max_bytes:,})", permanent=True)
                continue
            chunk = chunks[endpoint]
            if chunk and (len(chunk) >= self.max_requests or sizes[endpoint] + len(line) > self.max_bytes):
                yield endpoint, chunk
                chunk = chunks[endpoint] = []
                sizes[endpoint] = 0
            chunk.append((key, custom_id, line))
            sizes[endpoint] += len(line)
        for endpoint, chunk in chunks.items():
            if chunk:
                yield endpoint, chunk

    def _submit(self, endpoint: str, lines: list, label: str, watch: dict[str, set[str]],
                results: dict[str, Response]) -> None:
        """Upload one input file, record its requests as in flight, create its batch."""
        keys = [k for k, _, _ in lines]
        name = f"curate-{_plain(label)}"
        try:
            file_id = self.transport.upload(b"".join(line for _, _, line in lines), name)
        except (CurateError, KeyboardInterrupt):
            raise
        except Exception as exc:  # nothing recorded: the next run sends these requests again
            self._fail(keys, f"could not upload a batch input file to {self.transport.where}: {_why(exc)}", results)
            return
        self.cache.add_in_flight(file_id, [(k, c) for k, c, _ in lines])
        try:
            batch_id = self.transport.create(file_id, endpoint, label)
        except SubmitRefused as exc:  # the file as it is will not do: the next run builds it anew
            self.cache.forget_in_flight(keys)
            self._fail(keys, f"{self.transport.where} refused a batch of {len(keys)} requests: {exc}", results)
            return
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # it may exist all the same: the next run looks for it by its file
            self._fail(keys, f"could not create a batch from {file_id} at {self.transport.where}: {_why(exc)}; the "
                             "next run looks for it, or creates it from the uploaded file", results)
            return
        self.cache.set_batch(file_id, batch_id)
        log.info("%s: batch %s of %d requests submitted to %s", label, batch_id, len(keys), self.transport.where)
        watch[batch_id] = set(keys)

    def _reattach(self, todo: dict[str, Request], results: dict[str, Response], label: str) -> dict[str, set[str]]:
        """The batches already holding some of `todo` (sent by an earlier run that did not see
        them end), as batch id -> keys. A file uploaded whose batch id was never recorded is looked
        for among the provider's batches, and made into a batch if there is none."""
        watch: dict[str, set[str]] = {}
        orphans: dict[str, list] = {}
        for key, flight in self.cache.in_flight(list(todo)).items():
            if flight.batch_id is not None:
                watch.setdefault(flight.batch_id, set()).add(key)
            else:
                orphans.setdefault(flight.file_id, []).append(flight)
        for file_id, flights in orphans.items():
            keys = [f.key for f in flights]
            try:
                batch_id = self.transport.find(file_id, min(f.created for f in flights))
                if batch_id is None:
                    endpoint = CHAT if todo[keys[0]].messages is not None else COMPLETIONS
                    batch_id = self.transport.create(file_id, endpoint, label)
            except (SubmitRefused, BatchGone) as exc:  # e.g. the uploaded file is gone: send them anew
                self.cache.forget_in_flight(keys)
                log.warning("input file %s at %s: %s; its %d requests are sent again", file_id,
                            self.transport.where, exc, len(keys))
                continue
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                self._fail(keys, f"could not find or create the batch of input file {file_id} at "
                                 f"{self.transport.where}: {_why(exc)}; the next run tries again", results)
                continue
            self.cache.set_batch(file_id, batch_id)
            watch.setdefault(batch_id, set()).update(keys)
        if watch:
            n = sum(len(k) for k in watch.values())
            log.warning("%s: %d request(s) already in %d batch(es) sent by an earlier run (%s); waiting for them",
                        label, n, len(watch), ", ".join(sorted(watch)))
        return watch

    # -- waiting and collecting ------------------------------------------------------------------

    def _wait(self, watch: dict[str, set[str]], todo: dict[str, Request], results: dict[str, Response],
              label: str, done: int, total: int) -> None:
        """Poll every batch in `watch` until it has ended, collecting each as it ends."""
        failures: dict[str, int] = {}
        progress = _progress(disable=not self.show_progress)
        try:
            with progress:
                task = progress.add_task(label, total=total, completed=done, state="")
                while watch:
                    for batch_id in list(watch):
                        try:
                            state = self.transport.state(batch_id)
                        except BatchGone as exc:
                            keys = watch.pop(batch_id)
                            self.cache.forget_in_flight(list(keys))
                            self._fail(keys, f"{exc}; the next run sends these requests again", results)
                            continue
                        except KeyboardInterrupt:
                            raise
                        except Exception as exc:  # the provider is unreachable: keep waiting, up to a point
                            failures[batch_id] = failures.get(batch_id, 0) + 1
                            if failures[batch_id] >= _POLL_FAILURES:
                                self._fail(watch.pop(batch_id), f"lost contact with batch {batch_id} at "
                                           f"{self.transport.where} ({_why(exc)}); the next run waits for it again", results)
                            continue
                        failures.pop(batch_id, None)
                        self._states[batch_id] = state
                        if state.ended:
                            self._collect(state, watch.pop(batch_id), todo, results)
                    progress.update(task, completed=done + len(results) + sum(
                        min(s.completed + s.failed, len(watch[b])) for b, s in self._states.items() if b in watch),
                        state=_summary([self._states[b] for b in watch if b in self._states]))
                    if watch:
                        time.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            if watch:
                log.warning("interrupted; batch(es) %s go on at %s: run the same command again to collect their "
                            "answers (they are not sent again)", ", ".join(sorted(watch)), self.transport.where)
            raise

    def _collect(self, state: BatchState, keys: set[str], todo: dict[str, Request], results: dict[str, Response]) -> None:
        """Map an ended batch's output and error lines back to its requests; store each answer."""
        ids = {c: k for c, k in self.cache.in_batch(state.id).items() if k in keys}
        settled: dict[str, Response] = {}
        try:
            for line in self.transport.results(state):
                key = ids.pop(line.get("custom_id"), None)
                if key is None:
                    continue  # not asked for by this call (or a second line for one request)
                settled[key] = self._response(line, todo[key], state)
                if len(settled) >= _SETTLE_EVERY:
                    self._settle(settled, results)
        except BatchGone as exc:  # its files are gone: what was not read is sent again by the next run
            self._settle(settled, results)
            self.cache.forget_in_flight(list(ids.values()))
            self._fail(ids.values(), f"{exc}; the next run sends these requests again", results)
            return
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a download cut short: the next run reads the batch's files again
            self._settle(settled, results)
            self._fail(ids.values(), f"could not read the results of batch {state.id} from {self.transport.where}: "
                                     f"{_why(exc)}; the next run reads them again", results)
            return
        # Requests with no line: the whole batch failed, or it ended before they ran.
        why = _unanswered(state)
        settled.update({key: Response(error=why) for key in ids.values()})
        self._settle(settled, results)
        left = [r for k, r in results.items() if k in keys and not r.ok]
        if left:
            log.warning("batch %s %s: %d of its %d requests failed (first: %s); the next run sends them again",
                        state.id, state.status, len(left), len(keys), left[0].error)

    def _settle(self, settled: dict[str, Response], results: dict[str, Response]) -> None:
        self.cache.settle(settled)
        results.update(settled)
        settled.clear()

    def _response(self, line: dict, request: Request, state: BatchState) -> Response:
        """The Response one output or error line makes, as the online route would have made it."""
        chat = request.messages is not None
        if _answered(line):
            try:
                response = self.backend.parse(json.dumps(line["response"]["body"]).encode(), chat)
            except Exception as exc:  # a malformed answer: sent again next time, as online
                return Response(error=self.transport.redact(f"batch {state.id}: {_why(exc)}"))
            if request.stop and len(request.stop) > MAX_STOP:
                response = cut_at_stops(response, request.stop[MAX_STOP:])
            response.extra["batch"] = state.id
            return response
        resp = line.get("response") or {}
        status = resp.get("status_code")
        error = line.get("error") or ((resp.get("body") or {}).get("error") if isinstance(resp.get("body"), dict) else None)
        if isinstance(error, dict):
            error = ": ".join(str(error[k]) for k in ("code", "message") if error.get(k))
        where = f"batch {state.id}" + (f": HTTP {status}" if status else "")
        return Response(error=self.transport.redact(f"{where}: {str(error or 'no answer')[:300]}"),
                        permanent=status in BAD_REQUEST_STATUS)

    def _fail(self, keys, why: str, results: dict[str, Response]) -> None:
        why = self.transport.redact(why)
        for key in keys:
            results[key] = Response(error=why)


def _answered(line: dict) -> bool:
    resp = line.get("response")
    return (not line.get("error") and isinstance(resp, dict) and resp.get("status_code") == 200
            and isinstance(resp.get("body"), dict))


def _unanswered(state: BatchState) -> str:
    """Why a request of an ended batch has no line in its files."""
    if state.status == "failed":
        return f"batch {state.id} failed: {state.errors or 'no reason given'}"
    if state.status in ("expired", "cancelled"):
        return f"batch {state.id} {state.status} before this request ran"
    return f"batch {state.id} {state.status} without a result for this request"


def _summary(states: list[BatchState]) -> str:
    """The progress bar's word on the batches: how many in each state, or what they wait for."""
    if not states:
        return ""
    waits = [s.waiting_for for s in states if s.waiting_for]
    if waits:
        return waits[0] + (f" (+{len(waits) - 1} more)" if len(waits) > 1 else "")
    counts: dict[str, int] = {}
    for s in states:
        counts[s.status] = counts.get(s.status, 0) + 1
    return f"{len(states)} batch{'es' if len(states) > 1 else ''}: " + ", ".join(f"{n} {k}" for k, n in counts.items())


def _progress(disable: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[state]}"), TimeElapsedColumn(), disable=disable, transient=False)


def _plain(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:40] or "batch"


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _api_error(exc) -> str:
    """An SDK status error as one line: the status and the provider's message."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = (body.get("error") or body).get("message") if isinstance(body.get("error") or body, dict) else None
    return f"HTTP {exc.status_code}: {message or exc.message}"


def _batch_error(e) -> str:
    where = f" (line {e.line})" if getattr(e, "line", None) else ""
    return f"{e.code}: {e.message}{where}" if getattr(e, "code", None) else f"{e.message}{where}"


def build_batch_route(cfg: TeacherConfig, backend: OpenAIBackend, cache: ResponseCache | None,
                      show_progress: bool = True) -> BatchRoute:
    """The batch route of a `teacher:` block with `batch` set."""
    if cache is None:
        raise CurateError("teacher.batch needs a response cache: it is where the batches in flight are kept, so a "
                          "rerun waits for them instead of paying twice")
    settings = cfg.batch
    if settings.folder:
        transport = FolderBatches(Path(settings.folder), backend.model)
    else:
        openai = require("openai", "batch")
        key = os.environ.get(cfg.api_key_env) or None
        # Without a key the provider's 401 names the variable to set (local servers need none).
        client = openai.OpenAI(api_key=key or f"unset-{cfg.api_key_env}", base_url=backend.base_url,
                               timeout=cfg.timeout, max_retries=cfg.max_retries)
        transport = OpenAIBatches(client, backend.base_url, key, transfer_timeout=max(cfg.timeout, 600.0))
    return BatchRoute(backend, transport, cache, settings.poll_seconds, settings.max_requests, settings.max_bytes,
                      show_progress)
