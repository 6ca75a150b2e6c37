"""Response cache in SQLite, keyed on the rendered request.

Each response is committed as it arrives (one small transaction, WAL journal), so a run killed at
any point keeps every response it had received, and a rerun sends only what is missing. Only
successful responses are stored: a failure is retried on the next run. Nothing secret is stored:
the key is a hash of the request, which holds no credentials.

Several runs may share one cache file at once (a recipe's `cache:`): SQLite serialises the writes
and each waits up to a minute for another's transaction.

The cache also keeps the requests sent through a provider's batch API that have no answer yet
(curate.llm.batch): request key -> the batch's input file, the batch, and the request's custom_id
in it. A run killed while a batch is in flight finds its requests there on the rerun and waits for
that batch instead of paying for them again; an answer leaves the table in the transaction that
stores it.

A damaged cache never stops a run and never silently costs one: the file is checked when opened;
one that is not a database or fails SQLite's quick check is kept beside the new one as
`<name>.damaged-<time>`, the responses still readable in it are copied into the new cache, and a
warning says how many were recovered. A row that cannot be read is a cache miss (its request is
sent again and the answer replaces the row); an empty (0-byte) cache file is named in a warning,
since every request will be sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple

from curate.errors import CurateError
from curate.llm.base import Response

log = logging.getLogger(__name__)
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL)"
# Requests in a provider's batch, not answered yet: batch_id is NULL between uploading the input
# file and hearing the batch's id back (a run killed there finds its batch by input file).
_BATCH_SCHEMA = ("CREATE TABLE IF NOT EXISTS batch_requests (key TEXT PRIMARY KEY, custom_id TEXT NOT NULL, "
                 "file_id TEXT NOT NULL, batch_id TEXT, created REAL)")
_BUSY_SECONDS = 60.0  # how long a write waits for another run's transaction on a shared cache


class InFlight(NamedTuple):
    """A request sent in a provider's batch and not answered yet."""

    key: str
    custom_id: str
    file_id: str
    batch_id: str | None  # None: the input file was uploaded, the batch's id never came back
    created: float  # when the input file was uploaded (time.time())


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._write_failed = False
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path.exists() and self.path.stat().st_size == 0 and not _sidecar(self.path, "-wal").exists():
            log.warning("%s: the response cache file is empty (0 bytes): it holds no responses, so every request "
                        "will be sent", self.path)
        db = None
        try:
            db = _connect(self.path)
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
            db.execute(_SCHEMA)
            db.execute(_BATCH_SCHEMA)
            db.execute("SELECT key, response FROM responses LIMIT 0")  # a table of that name but another shape
            db.execute("SELECT key, custom_id, file_id, batch_id, created FROM batch_requests LIMIT 0")
            return db
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            if _is_busy(exc):
                raise CurateError(f"{self.path}: the response cache is locked by another program ({exc}); "
                                  "close it (an open sqlite3 shell?) or point `cache:` elsewhere") from None
            return self._replace_damaged(exc)

    def _replace_damaged(self, exc: Exception) -> sqlite3.Connection:
        """Keep the damaged file aside, start a new cache with every response still readable in it."""
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        damaged = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):  # SQLite pairs a database with <name>-wal by name
            if _sidecar(self.path, suffix).exists():
                os.replace(_sidecar(self.path, suffix), _sidecar(damaged, suffix))
        rows = _salvage(damaged)
        in_flight = _readable_batch_rows(damaged)
        db = _connect(self.path)
        db.execute(_SCHEMA)
        db.execute(_BATCH_SCHEMA)
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)", rows)
        db.executemany("INSERT OR REPLACE INTO batch_requests (key, custom_id, file_id, batch_id, created) "
                       "VALUES (?, ?, ?, ?, ?)", in_flight)
        db.execute("COMMIT")
        log.warning("%s: the response cache is damaged (%s); kept it as %s and started a new cache with the %d "
                    "responses still readable in it%s; requests whose responses were lost will be sent again",
                    self.path, exc, damaged.name, len(rows),
                    f" and the {len(in_flight)} requests in flight in batches" if in_flight else "")
        return db

    def get_many(self, keys: list[str]) -> dict[str, Response]:
        found: dict[str, Response] = {}
        bad: list[str] = []
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                try:
                    rows = self._db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk).fetchall()
                except sqlite3.DatabaseError as exc:
                    if _is_busy(exc):
                        raise
                    rows = self._rows_one_by_one(chunk, bad)
                for k, v in rows:
                    try:
                        found[k] = Response.from_json(v)
                    except (TypeError, ValueError) as exc:  # a row that is not a stored Response: a miss
                        bad.append(f"{k[:16]}… ({type(exc).__name__}: {exc})")
        if bad:
            log.warning("%s: %d cached response(s) unreadable, sent again (first: key %s)", self.path, len(bad), bad[0])
        return found

    def _rows_one_by_one(self, keys: list[str], bad: list[str]) -> list[tuple[str, str]]:
        """Look keys up one at a time, so a damaged page costs only the rows on it."""
        rows = []
        for k in keys:
            try:
                rows += self._db.execute("SELECT key, response FROM responses WHERE key = ?", (k,)).fetchall()
            except sqlite3.DatabaseError as exc:
                bad.append(f"{k[:16]}… ({exc})")
        return rows

    def put(self, key: str, response: Response) -> None:
        if not response.ok:
            return
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
                    (key, response.to_json(), time.time()),
                )
            except sqlite3.DatabaseError as exc:  # the run goes on with the answer; a rerun sends it again
                if not self._write_failed:
                    log.warning("%s: cannot store responses (%s); this run goes on, but a rerun will send the "
                                "unstored requests again", self.path, exc)
                self._write_failed = True

    # Requests in flight in a provider's batch (curate.llm.batch) ---------------------------------

    def in_flight(self, keys: list[str]) -> dict[str, InFlight]:
        """The requests among `keys` that were sent in a batch and have no answer yet."""
        found: dict[str, InFlight] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute("SELECT key, custom_id, file_id, batch_id, created FROM batch_requests "
                                            f"WHERE key IN ({marks})", chunk):
                    found[row[0]] = InFlight(*row)
        return found

    def in_batch(self, batch_id: str) -> dict[str, str]:
        """custom_id -> request key of the unanswered requests of one batch."""
        with self._lock:
            return dict(self._db.execute("SELECT custom_id, key FROM batch_requests WHERE batch_id = ?", (batch_id,)))

    def add_in_flight(self, file_id: str, ids: list[tuple[str, str]]) -> None:
        """Record (request key, custom_id) pairs as sent in the input file `file_id`, in one transaction
        (before the batch is created, so a kill right after creating it loses no batch)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO batch_requests (key, custom_id, file_id, batch_id, created) "
                                 "VALUES (?, ?, ?, NULL, ?)", [(k, c, file_id, now) for k, c in ids])
            self._db.execute("COMMIT")

    def set_batch(self, file_id: str, batch_id: str) -> None:
        """The batch made from input file `file_id` is `batch_id`."""
        with self._lock:
            self._db.execute("UPDATE batch_requests SET batch_id = ? WHERE file_id = ?", (batch_id, file_id))

    def settle(self, results: dict[str, Response]) -> None:
        """Requests whose batch has said what became of them: answers are stored and every one of them
        leaves the in-flight table, in one transaction (a failed one is sent again by the next run)."""
        items = list(results.items())
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
                                     [(k, r.to_json(), now) for k, r in items if r.ok])
                self._db.executemany("DELETE FROM batch_requests WHERE key = ?", [(k,) for k, _ in items])
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:  # as in put: the run goes on; a rerun collects the batch again
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if not self._write_failed:
                    log.warning("%s: cannot store responses (%s); this run goes on, but a rerun will collect the "
                                "unstored answers again", self.path, exc)
                self._write_failed = True

    def forget_in_flight(self, keys: list[str]) -> None:
        """Drop requests from the in-flight table without an answer (their batch is gone), so the next
        run sends them again."""
        with self._lock:
            self._db.executemany("DELETE FROM batch_requests WHERE key = ?", [(k,) for k in keys])

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode. SQLite's busy timeout does not cover switching a new file to WAL,
    which fails at once while another connection does the same (runs sharing a `cache:` file that
    start together; 3 processes opening one new cache at once: 81 of 600 opens failed before this
    wait), so that switch waits here as long as a write would."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=_BUSY_SECONDS)
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                db.close()
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _is_busy(exc: Exception) -> bool:
    """Another connection holds the database (not damage): waiting longer is the cure."""
    return "locked" in str(exc) or "busy" in str(exc)


def _salvage(path: Path) -> list[tuple[str, str, float]]:
    """The rows of a damaged cache that still read. A file cut short (killed while the disk
    filled, copied half-way) is read through a copy whose header is set to the pages present,
    since SQLite refuses a file shorter than its header says."""
    rows = _readable_rows(path)
    if rows:
        return rows
    copy = path.with_name(path.name + ".salvage")
    try:
        with open(path, "rb") as src:
            head = src.read(100)
            if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
                return []
            page = int.from_bytes(head[16:18], "big")
            page = 65536 if page == 1 else page
            pages = os.path.getsize(path) // page
            src.seek(0)
            data = bytearray(src.read(pages * page))
        data[28:32] = pages.to_bytes(4, "big")
        copy.write_bytes(data)
        return _readable_rows(copy)
    except OSError:
        return []
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            _sidecar(copy, suffix).unlink(missing_ok=True)


def _readable_rows(path: Path) -> list[tuple[str, str, float]]:
    """Scan the table from both ends (a bad page in the middle stops a forward scan, not a
    backward one), keeping each row that is a valid Response."""
    rows: dict[str, tuple[str, str, float]] = {}
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for order in ("ASC", "DESC"):
            try:
                for key, response, created in db.execute(
                        f"SELECT key, response, created FROM responses ORDER BY rowid {order}"):
                    if key in rows:
                        break  # the two scans met
                    try:
                        Response.from_json(response)
                    except (TypeError, ValueError):
                        continue
                    rows[key] = (key, response, created)
            except sqlite3.DatabaseError:
                continue
    finally:
        db.close()
    return list(rows.values())


def _readable_batch_rows(path: Path) -> list[tuple]:
    """The in-flight batch requests still readable in a damaged cache (so a rerun waits for their
    batches instead of paying for them again)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        return db.execute("SELECT key, custom_id, file_id, batch_id, created FROM batch_requests").fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        db.close()
