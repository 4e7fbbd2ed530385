"""Child process of the crash tests: a writer doing random adds / updates / deletes / flushes /
compactions on INDEX until it is killed. Before each operation it prints `B <json>`, and after
the operation has returned (is durable) `A`, each line flushed at once."""
from __future__ import annotations

import json
import sys
import zlib

import numpy as np

from fastctx.compaction import CompactionPolicy
from fastctx.index import Index
from fastctx.params import BuildParams

DIM = 8
POOL = 1500
T0 = 1_704_067_200


def vector(eid: str, ver: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{eid}/{ver}".encode()))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def record(j: int, ver: int) -> dict:
    eid = f"c{j}"
    return {"id": eid, "time": T0 + j * 60 + (ver % 3), "source": "jira", "kind": ("decision", "patch")[j % 2],
            "tokens": 10 + ver, "entities": [f"team:t{j % 40}", f"decision:d{j % 9}"],
            "links": [{"to": f"c{j - 1}", "type": "reply"}] if j else [],
            "text": f"{eid} v{ver}"}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    path, seed, n_ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    idx = Index(path, writable=True, build_params=BuildParams(hnsw_min_rows=256, hnsw_ef_construction=32),
                compaction=CompactionPolicy(small_rows=5000, max_rows=100_000, min_run=2))
    say("OPEN")
    for _ in range(n_ops):
        r = rng.random()
        if r < 0.6:
            size = int(rng.choice([1, 5, 50, 200]))
            js = rng.choice(POOL, size, replace=False)
            ver = int(rng.integers(0, 4))
            recs = [record(int(j), ver) for j in js]
            say("B " + json.dumps({"op": "add", "set": {x["id"]: x["text"] for x in recs}}))
            idx.upsert(recs, np.stack([vector(x["id"], ver) for x in recs]))
        elif r < 0.75:
            ids = [f"c{int(j)}" for j in rng.choice(POOL, int(rng.integers(1, 30)), replace=False)]
            say("B " + json.dumps({"op": "del", "ids": ids}))
            idx.delete(ids)
        elif r < 0.9:
            say("B " + json.dumps({"op": "flush"}))
            idx.flush()
        else:
            say("B " + json.dumps({"op": "compact"}))
            idx.compact(force=bool(rng.random() < 0.3))
        say("A")
    idx.close()
    say("DONE")


if __name__ == "__main__":
    main()
