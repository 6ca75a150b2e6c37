"""Response cache in SQLite, keyed on the rendered request.

Each response is committed as it arrives (one small transaction, WAL journal), so a run killed at
any point keeps every response it had received, and a rerun sends only what is missing. Only
successful responses are stored: a failure is retried on the next run. Nothing secret is stored:
the key is a hash of the request, which holds no credentials.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from curate.llm.base import Response


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL)"
        )

    def get_many(self, keys: list[str]) -> dict[str, Response]:
        found: dict[str, Response] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk)
                found.update((k, Response.from_json(v)) for k, v in rows)
        return found

    def put(self, key: str, response: Response) -> None:
        if not response.ok:
            return
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
                (key, response.to_json(), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
