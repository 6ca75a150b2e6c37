"""The sympy fallback, in a worker process that is killed when a request overruns its limit.

sympy can hang on a simplification, so it runs in a child process; a killed worker is restarted on
the next call, which makes the fallback safe from any thread and any number of calls. This file
imports nothing from the package: the child loads it by path and needs neither synth nor curate.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time


def _to_sympy(node, sp):
    op = node[0]
    if op == "n":
        return sp.Rational(node[1], node[2])
    if op == "s":
        return sp.Symbol(node[1])
    if op == "c":
        return {"pi": sp.pi, "e": sp.E, "i": sp.I, "inf": sp.oo}[node[1]]
    if op == "+":
        return sp.Add(*[_to_sympy(x, sp) for x in node[1]])
    if op == "*":
        return sp.Mul(*[_to_sympy(x, sp) for x in node[1]])
    if op == "neg":
        return -_to_sympy(node[1], sp)
    if op == "/":
        return _to_sympy(node[1], sp) / _to_sympy(node[2], sp)
    if op == "^":
        return sp.Pow(_to_sympy(node[1], sp), _to_sympy(node[2], sp))
    if op == "root":
        return sp.root(_to_sympy(node[1], sp), _to_sympy(node[2], sp))
    if op == "log":
        x = _to_sympy(node[1], sp)
        return sp.log(x) if node[2] is None else sp.log(x, _to_sympy(node[2], sp))
    if op == "f":
        fn = {"abs": sp.Abs, "floor": sp.floor, "ceil": sp.ceiling, "arcsin": sp.asin,
              "arccos": sp.acos, "arctan": sp.atan}.get(node[1]) or getattr(sp, node[1])
        return fn(_to_sympy(node[2], sp))
    if op == "!":
        return sp.factorial(_to_sympy(node[1], sp))
    if op == "binom":
        return sp.binomial(_to_sympy(node[1], sp), _to_sympy(node[2], sp))
    raise ValueError(op)


def _sympy_worker_main() -> None:
    """Loop of the worker process: one JSON request per line -> {"ok": true|false|null}."""
    try:
        import sympy as sp
    except ImportError:
        sp = None
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        ok = None
        if req.get("sleep"):  # for tests of the time limit
            time.sleep(req["sleep"])
        elif sp is not None:
            try:
                a, b = _to_sympy(req["a"], sp), _to_sympy(req["b"], sp)
                if req.get("ratio"):  # equal up to a non-zero constant factor
                    q = sp.simplify(a / b)
                    ok = True if not q.free_symbols and q.is_zero is False and q.is_finite else None
                else:
                    diff = sp.simplify(a - b)
                    ok = bool(diff == 0) or (True if diff.is_zero else None)
                    if ok is None and diff.is_number and diff.is_zero is False:
                        ok = False
            except Exception:  # noqa: BLE001 - any sympy failure means "cannot decide"
                ok = None
        sys.stdout.write(json.dumps({"ok": ok}) + "\n")
        sys.stdout.flush()


class _SympyWorker:
    """One long-lived child process; killed and restarted when a request overruns its limit.

    POSIX only (select on a pipe); elsewhere every request is undecided, i.e. no sympy fallback."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.owner = os.getpid()  # a forked child must not share its parent's pipes
        self.lock = threading.Lock()
        self.calls = 0
        self.kills = 0

    def _start(self) -> None:
        code = ("import importlib.util, sys; "
                f"spec = importlib.util.spec_from_file_location('_answers_worker', {__file__!r}); "
                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                "m._sympy_worker_main()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        if self._readline(60.0) != "ready":  # importing sympy is slow the first time
            self._kill()
            raise RuntimeError("sympy worker did not start")

    def _readline(self, timeout: float) -> str | None:
        import select

        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ask(self, request: dict, timeout: float) -> bool | None:
        with self.lock:
            self.calls += 1
            try:
                if self.owner != os.getpid():
                    self.proc, self.owner = None, os.getpid()
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                line = self._readline(timeout)
            except (OSError, RuntimeError, ValueError):
                line = None
            if line is None:  # overran (or died): kill it, the next call starts a fresh one
                self.kills += 1
                self._kill()
                return None
            return json.loads(line)["ok"]

    def close(self) -> None:
        with self.lock:
            self._kill()


WORKER = _SympyWorker()
atexit.register(WORKER.close)


def sympy_equal(na, nb, timeout: float, ratio: bool = False) -> bool | None:
    """sympy's verdict on two ASTs (equal, or with `ratio` proportional by a non-zero constant):
    True/False, or None when it cannot decide within `timeout` seconds (0: do not ask)."""
    if timeout <= 0:
        return None
    return WORKER.ask({"a": na, "b": nb, "ratio": ratio}, timeout)
