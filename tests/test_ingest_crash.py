"""Crash safety with real processes: a writer (tests/_crash_writer.py) is killed with SIGKILL at
random moments and at named crash points (inside add, flush, compaction, between the manifest
write and its rename), many times over one index. After every kill a fresh reader must see every
acknowledged operation exactly once, the operation in flight all or nothing, and `verify` must
find nothing wrong. Long loops are marked slow (`make test-fast` skips them)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastctx.index import Index, verify

HERE = Path(__file__).parent
CRASH_POINTS = ["add:before-write", "add:after-write", "flush:segment-written", "flush:before-commit",
                "commit:before-rename", "commit:after-rename", "compact:segment-written", "compact:before-commit"]


def live_state(path: Path) -> dict:
    idx = Index(path)
    sh = idx.shards[0]
    seen: dict = {}
    for seg in sh.segments:
        dead = sh.deleted_mask[seg.row_base:seg.row_base + seg.n]
        for r in range(seg.n):
            if not dead[r]:
                eid = seg.ids[r]
                assert eid not in seen, f"{eid} is live twice"
                seen[eid] = seg.payload(r)["text"]
    assert idx.n == len(seen)
    return seen


def apply(model: dict, op: dict) -> dict:
    m = dict(model)
    if op["op"] == "add":
        m.update(op["set"])
    elif op["op"] == "del":
        for i in op["ids"]:
            m.pop(i, None)
    return m


def run_child(path: Path, seed: int, *, kill_after: float | None, crash_at: str | None, n_ops: int = 400):
    env = dict(os.environ)
    env.pop("FASTCTX_CRASH_AT", None)
    if crash_at:
        env["FASTCTX_CRASH_AT"] = crash_at
    proc = subprocess.Popen([sys.executable, str(HERE / "_crash_writer.py"), str(path), str(seed), str(n_ops)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=HERE.parent)
    if kill_after is not None:
        # wait for the writer to be open, then let it run a random while before the kill
        line = proc.stdout.readline()
        assert line.strip() == b"OPEN", (line, proc.stderr.read())
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        out = b"OPEN\n" + proc.stdout.read()
    else:
        out = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait()
    return proc.returncode, out.decode(), err.decode()


def check_after(path: Path, model: dict, out: str) -> dict:
    """Fold the child's acknowledged ops into the model; the op in flight may or may not have
    happened, but only entirely. Returns the new model (the state actually found)."""
    pending = None
    for line in out.split("\n")[:-1]:            # a last line without newline was cut by the kill
        if line.startswith("B "):
            pending = json.loads(line[2:])
        elif line == "A":
            model = apply(model, pending)
            pending = None
    found = live_state(path)
    if found != model:
        assert pending is not None, "state differs from the acknowledged operations"
        assert found == apply(model, pending), "the operation in flight was applied partially"
        model = found
    problems = verify(path)
    assert problems == [], problems
    return model


def _loop(tmp_path, iterations: int, seed: int):
    from fastctx.index import Index as _I
    path = tmp_path / "index"
    _I.create(path, 8).close()
    rng = np.random.default_rng(seed)
    model: dict = {}
    kinds = {"random": 0, "point": 0}
    for it in range(iterations):
        if it % 3 == 2:
            point = CRASH_POINTS[(it // 3) % len(CRASH_POINTS)]
            rc, out, err = run_child(path, seed * 1000 + it, kill_after=None,
                                     crash_at=f"{point}:{int(rng.integers(1, 3))}")
            kinds["point"] += 1
        else:
            rc, out, err = run_child(path, seed * 1000 + it, kill_after=float(rng.uniform(0.05, 1.2)), crash_at=None)
            kinds["random"] += 1
        assert rc in (-signal.SIGKILL, 0), err
        model = check_after(path, model, out)
    # a clean run to the end on the same index, then everything flushed and compacted
    rc, out, err = run_child(path, 7, kill_after=None, crash_at=None, n_ops=30)
    assert rc == 0, err
    model = check_after(path, model, out)
    w = Index(path, writable=True)
    w.flush()
    w.compact(force=True)
    w.close()
    assert live_state(path) == model and verify(path) == []
    return kinds


def test_sigkill_loop_quick(tmp_path):
    _loop(tmp_path, iterations=16, seed=1)


@pytest.mark.slow
def test_sigkill_loop_long(tmp_path):
    """60 kills by default (about a minute); FASTCTX_CRASH_ITERATIONS=500 for a soak run."""
    _loop(tmp_path, iterations=int(os.environ.get("FASTCTX_CRASH_ITERATIONS", "60")), seed=2)
