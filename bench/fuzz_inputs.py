"""Fuzz fastctx's inputs: corpora (events.jsonl lines, meta.json), queries (queries.jsonl and
Index.query arguments), manifests (byte and JSON edits, re-checksummed or not, then open, query
and verify) and the CLI (build / verify / query through click's CliRunner).

Every input must end in a result or a fastctx error (FastctxError; the CLI: an exit code != 0
and one error line), never another exception: each such exception counts as a traceback.

    python bench/fuzz_inputs.py --seconds 300 [--seed 1] [--work DIR]

prints "inputs tried: N, tracebacks: M" (and the first tracebacks). tests/test_fuzz_inputs.py
runs the same generators for a few seconds per target.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from fastctx.errors import FastctxError
from fastctx.format import manifest_checksum
from fastctx.index import Index, build, verify

DIM = 8
T0 = 1_700_000_000
HOSTILE = [2**70, -2**70, 2**63, -1, 0, 1.5, float("inf"), True, None, "", " ", "\ud800", "x\udfffy",
           [], {}, [[[[[]]]]], "a" * 5000, {"deep": [[[[]]]]}, ["\ud800"], [2**70], {"x": 2**70}]
FIELDS = ["id", "time", "source", "kind", "tokens", "entities", "links", "text", "acl", "attr"]


def base_events(n: int = 30) -> list[dict]:
    return [{"id": f"e{i}", "time": T0 + 60 * i, "source": "jira", "kind": ("decision", "patch")[i % 2],
             "tokens": 20 + i, "entities": [f"service:s{i % 3}", f"ticket:T-{i % 5}"],
             "links": [{"to": f"e{i - 1}", "type": "reply"}] if i else [], "text": f"event {i} about payments"}
            for i in range(n)]


def deep(n: int) -> str:
    return "[" * n + "]" * n


def mutate_bytes(rng: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if not b or op < 0.3:
            b.insert(rng.randint(0, len(b)), rng.randrange(256))
        elif op < 0.6:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.8:
            del b[rng.randrange(len(b)):][:rng.randint(1, 20)]
        else:
            b = b[:rng.randrange(len(b) + 1)]
    return bytes(b)


def hostile_value(rng: random.Random):
    r = rng.random()
    if r < 0.1:
        return json.loads(deep(rng.choice([50, 70, 500])))
    return rng.choice(HOSTILE)


def event_line(rng: random.Random, ev: dict) -> str:
    """One events.jsonl line: a field replaced, removed or added, raw deep nesting, or bytes."""
    ev = dict(ev)
    r = rng.random()
    if r < 0.15:
        return '{"id": "x", "time": 1, "source": "s", "kind": "k", "text": "t", "a": ' + deep(
            rng.choice([100, 5000, 100_000])) + "}"
    if r < 0.25:
        return '{"id": "x", "time": 1, "source": "s", "kind": "k", "text": "\\ud800\\u0041"}'
    field = rng.choice(FIELDS)
    if rng.random() < 0.2:
        ev.pop(field, None)
    else:
        ev[field] = hostile_value(rng)
    try:
        line = json.dumps(ev)
    except (ValueError, RecursionError):
        line = json.dumps(base_events(1)[0])
    if rng.random() < 0.25:
        line = mutate_bytes(rng, line.encode()).decode("utf-8", "surrogateescape")
    return line


class Fuzzer:
    def __init__(self, work: Path, seed: int = 0):
        self.work, self.rng = Path(work), random.Random(seed)
        self.tried, self.tracebacks = 0, []
        self.work.mkdir(parents=True, exist_ok=True)
        self.corpus = self._corpus(self.work / "good", base_events(), {"format": "orgmem-v1", "dim": DIM,
                                                                        "n_events": 30})
        self.index = self.work / "good-index"
        if not self.index.exists():
            build(self.corpus, self.index)[0].close()

    # -- helpers -------------------------------------------------------------------------------
    def _corpus(self, d: Path, events, meta, raw_lines=None) -> Path:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        lines = raw_lines if raw_lines is not None else [json.dumps(e) for e in events]
        (d / "events.jsonl").write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
        (d / "meta.json").write_bytes((json.dumps(meta) if not isinstance(meta, str) else meta)
                                      .encode("utf-8", "surrogateescape"))
        return d

    def _run(self, target: str, fn, detail) -> None:
        self.tried += 1
        try:
            fn()
        except FastctxError:
            pass
        except Exception:
            self.tracebacks.append((target, repr(detail)[:300], traceback.format_exc()))

    # -- targets -------------------------------------------------------------------------------
    def events(self) -> None:
        evs = base_events(8)
        lines = [json.dumps(e) for e in evs]
        lines[self.rng.randrange(len(lines))] = event_line(self.rng, self.rng.choice(evs))
        d = self._corpus(self.work / "c-events", None, {"format": "orgmem-v1"}, lines)
        self._run("events", lambda: self._build_and_query(d), lines)

    def meta(self) -> None:
        meta = {"format": "orgmem-v1", "dim": DIM, "n_events": 8, "name": "x"}
        r = self.rng.random()
        if r < 0.3:
            text = mutate_bytes(self.rng, json.dumps(meta).encode()).decode("utf-8", "surrogateescape")
        elif r < 0.4:
            text = deep(self.rng.choice([100, 100_000]))
        else:
            meta[self.rng.choice(list(meta) + ["params", "sources"])] = hostile_value(self.rng)
            text = json.dumps(meta)
        d = self._corpus(self.work / "c-meta", base_events(8), text)
        self._run("meta", lambda: self._build_and_query(d), text[:200])

    def _build_and_query(self, corpus: Path) -> None:
        idx, _ = build(corpus, self.work / "i-fuzz", overwrite=True)
        idx.query("payments", budget_tokens=50)
        idx.close()

    def queries(self) -> None:
        kw = {"budget_tokens": 100, "type": "chain", "direction": "back", "as_of": None}
        key = self.rng.choice(list(kw) + ["query", "k", "scope", "principals", "source", "time_min"])
        value = hostile_value(self.rng)
        query = "payments"
        if key == "query":
            query = value if not isinstance(value, (int, float)) else np.full(DIM, value, np.float32)
        else:
            kw[key] = value

        def go():
            with Index(self.index) as idx:
                idx.query(query, **kw)
        self._run("query", go, (key, value))

    def queries_file(self) -> None:
        from fastctx.corpus import read_queries
        q = {"qid": "q1", "type": "chain", "text": "payments", "filters": {}, "as_of": None,
             "direction": "back", "budget_tokens": 100}
        if self.rng.random() < 0.3:
            line = mutate_bytes(self.rng, json.dumps(q).encode()).decode("utf-8", "surrogateescape")
        else:
            q[self.rng.choice(list(q) + ["principals"])] = hostile_value(self.rng)
            line = json.dumps(q)
        d = self._corpus(self.work / "c-queries", base_events(2), {"format": "orgmem-v1", "dim": DIM,
                                                                    "n_events": 2, "n_queries": 1})
        (d / "queries.jsonl").write_bytes((line + "\n").encode("utf-8", "surrogateescape"))
        np.save(d / "query_vectors.npy", np.ones((1, DIM), np.float32))
        self._run("queries.jsonl", lambda: read_queries(d), line[:200])

    def manifest(self) -> None:
        d = self.work / "i-manifest"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.index, d)
        mpath = d / "shard-000" / "MANIFEST.json"
        raw = mpath.read_bytes()
        r = self.rng.random()
        if r < 0.35:
            new = mutate_bytes(self.rng, raw)
        else:
            m = json.loads(raw)
            path, obj = self._pick(m)
            key = self.rng.choice(list(obj)) if isinstance(obj, dict) and obj else 0
            if isinstance(obj, dict):
                obj[key] = hostile_value(self.rng) if self.rng.random() < 0.7 else self.rng.choice(
                    ["../x", "/etc/passwd", "..", "a/b", "seg-000001"])
            elif isinstance(obj, list) and obj:
                obj[self.rng.randrange(len(obj))] = hostile_value(self.rng)
            if self.rng.random() < 0.7:      # a consistent checksum: the deeper checks must hold
                m["checksum"] = manifest_checksum(m)
            new = json.dumps(m).encode()
        mpath.write_bytes(new)

        def go():
            problems = verify(d)                  # must report, never raise
            assert isinstance(problems, list)
            try:
                with Index(d) as idx:
                    idx.query("payments", budget_tokens=50)
            except FastctxError:
                pass
        self._run("manifest", go, new[:300])

    def _pick(self, m: dict):
        """A random dict or list inside the manifest (the root, a segment entry, its files...)."""
        obj, path = m, []
        for _ in range(self.rng.randint(0, 3)):
            kids = [(k, v) for k, v in (obj.items() if isinstance(obj, dict) else enumerate(obj))
                    if isinstance(v, (dict, list)) and v]
            if not kids:
                break
            k, obj = self.rng.choice(kids)
            path.append(k)
        return path, obj

    def cli(self) -> None:
        from click.testing import CliRunner
        from fastctx.cli import main as cli
        lines = [json.dumps(e) for e in base_events(6)]
        lines[self.rng.randrange(6)] = event_line(self.rng, base_events(1)[0])
        d = self._corpus(self.work / "c-cli", None, {"format": "orgmem-v1"}, lines)
        cmd = self.rng.choice([
            ["build", str(d), str(self.work / "i-cli"), "--overwrite"],
            ["verify", str(self.work / "i-cli")],
            ["query", str(self.index), self.rng.choice(["payments", "\ud800", "x" * 3000]),
             "--budget", str(self.rng.choice([0, -5, 2**70, 10]))],
            ["verify", str(d)]])
        self.tried += 1
        res = CliRunner().invoke(cli, cmd)
        if (res.exception is not None and not isinstance(res.exception, SystemExit)) or \
                "Traceback" in res.output:
            self.tracebacks.append(("cli", repr(cmd)[:300], "".join(traceback.format_exception(
                type(res.exception), res.exception, res.exception.__traceback__, limit=6))
                if res.exception else res.output[-2000:]))

    TARGETS = ("events", "meta", "queries", "queries_file", "manifest", "cli")

    def run(self, seconds: float, targets=TARGETS) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for t in targets:
                getattr(self, t)()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="fastctx-fuzz-"))
    f = Fuzzer(work, a.seed)
    f.run(a.seconds)
    print(f"inputs tried: {f.tried}, tracebacks: {len(f.tracebacks)}")
    for target, detail, tb in f.tracebacks[:5]:
        print(f"--- {target}: {detail[:300]}\n{tb[-3000:]}")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if f.tracebacks else 0)


if __name__ == "__main__":
    main()
