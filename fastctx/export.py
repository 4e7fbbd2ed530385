"""Write an index's live events back out as an orgmem-v1 corpus folder (`fastctx export`).

The folder holds `events.jsonl` (each event's stored record, in row order: shard by shard,
segment by segment, time order inside a segment), `vectors.npy` (the stored unit vectors, same
order) and `meta.json`; `fastctx build` turns it into an equivalent index. Deleted and replaced
versions are left out; derived data (derived entities, `similar` links) is not exported because
a build computes it again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Union

import numpy as np

from .corpus import DERIVED_LINK_TYPES, FORMAT
from .errors import IndexExistsError

_COLUMN_FIELDS = ("id", "time", "source", "kind", "tokens")


def export_corpus(index, out_dir: Union[str, Path], *, overwrite: bool = False) -> dict:
    """Write `index`'s live events to `out_dir` (created; refused when not empty unless
    `overwrite`). Returns the written meta.json content."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise IndexExistsError(f"{out}: exists and is not empty (use overwrite=True / --overwrite)")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    vectors, n, sources, kinds = [], 0, set(), set()
    with open(out / "events.jsonl", "w", encoding="utf-8") as f:
        for sh in index.shards:
            deleted = sh.deleted_mask
            for seg in sh.segments:
                live = np.flatnonzero(deleted[seg.row_base:seg.row_base + seg.n] == 0) \
                    if seg is not sh.memtable else np.arange(seg.n)
                for local in live.tolist():
                    rec = _record(sh, seg, local)
                    sources.add(rec["source"])
                    kinds.add(rec["kind"])
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                vectors.append(np.asarray(seg.vectors[live], np.float32))
                n += len(live)
    vec = np.concatenate(vectors) if vectors else np.zeros((0, index.dim), np.float32)
    np.save(out / "vectors.npy", np.ascontiguousarray(vec, np.float32))
    spec = index.marker.get("encoder") if isinstance(index.marker.get("encoder"), dict) else None
    meta = {"format": FORMAT, "name": f"export of {index.path.name}", "dim": int(index.dim), "n_events": n,
            "n_queries": 0, "sources": sorted(sources), "kinds": sorted(kinds),
            "params": {"encoder": spec.get("name") if spec else None, "encoder_spec": spec}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _record(sh, seg, local: int) -> dict:
    """One row as an orgmem event: the stored payload plus the columns."""
    p = seg.payload(local)
    rec = dict(p.get("attrs") or {})      # extra fields of the original record (e.g. acl)
    rec.update(id=seg.ids[local], time=int(seg.times[local]), source=sh.sources[int(seg.source[local])],
               kind=sh.kinds[int(seg.kind[local])], tokens=int(seg.tokens[local]),
               entities=list(p.get("entities") or []),
               links=[{"to": to, "type": ty} for to, ty in (p.get("links") or []) if ty not in DERIVED_LINK_TYPES])
    if p.get("text") is not None:
        rec["text"] = p["text"]
    return rec
