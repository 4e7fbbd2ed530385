"""Corpus files read in blocks by Ray tasks (the `--ray` build's reader of folders and JSONL).

The driver cuts ``events.jsonl`` into byte ranges on line boundaries and counts the lines before
each (a byte scan, no parsing), so every task parses its block with the ordinary validator
(fastctx/corpus.py) under the block's real line numbers: a bad line names its line in the file.
The driver then joins the blocks' columns in file order and applies the rules that span
blocks: ids unique across the file (the duplicate names the line of the first use) and blank
lines only at the end. A folder goes through `corpus.read_events` with this parse in place of
its own, so meta.json, the line count and ``vectors.npy`` are checked by the same code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .corpus import (CorpusError, EventBatch, _jsonl_objects, _parse_events, blank_inside, check_unique_ids,
                     read_events)

SCAN_BYTES = 1 << 24


def block_spans(path: Path, blocks: int) -> list[tuple[int, int, int]]:
    """(start byte, end byte, number of its first line) of up to `blocks` ranges of the file, each
    cut just after a newline; the line numbers come from counting newlines (no parsing)."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for b in range(1, max(1, blocks)):
            f.seek(size * b // blocks)
            f.readline()                     # on to the end of the line the cut falls in
            if cuts[-1] < f.tell() < size:
                cuts.append(f.tell())
        if size > cuts[-1]:
            cuts.append(size)
        spans, line = [], 1
        for lo, hi in zip(cuts, cuts[1:]):
            spans.append((lo, hi, line))
            f.seek(lo)
            left = hi - lo
            while left > 0:
                chunk = f.read(min(SCAN_BYTES, left))
                line += chunk.count(b"\n")
                left -= len(chunk)
    return spans or [(0, 0, 1)]


def parse_block(path: str, span: tuple[int, int, int]) -> tuple:
    """One block: ("ok", columns, lines, first trailing blank line or None) or ("error", the
    CorpusError's message, file, line, field)."""
    counter = [0, None]

    def where(k: int):
        return path, span[2] + k
    try:
        cols = _parse_events(_jsonl_objects(Path(path), counter, span=span), where, expect=None)
    except CorpusError as e:
        return ("error", e.message, e.file, e.line, e.field)
    return ("ok", cols, counter[0], counter[1])


def join_blocks(parts: list, spans: list, fname: str) -> dict:
    """The blocks' columns as one file's (link sources and entity pointers shifted), after the
    rules that span blocks; the first error in file order is raised."""
    blank = None
    for part, span in zip(parts, spans):
        if part[0] == "error":
            raise CorpusError(part[1], file=part[2], line=part[3], field=part[4])
        if blank is not None and part[2]:
            raise blank_inside(fname, blank, span[2])
        if part[3] is not None:
            blank = part[3]
    cols = [p[1] for p in parts]
    n_at = np.cumsum([0] + [len(c["ids"]) for c in cols])
    e_at = np.cumsum([0] + [len(c["entity_names"]) for c in cols])
    out: dict = {k: [] for k in ("ids", "sources", "kinds", "entity_names", "link_to", "texts", "attrs")}
    for c in cols:
        for k in out:
            out[k].extend(c[k])
    out["times"] = np.concatenate([c["times"] for c in cols]).astype(np.int64)
    out["tokens"] = np.concatenate([c["tokens"] for c in cols]).astype(np.int32)
    out["link_src"] = np.concatenate([c["link_src"] + n_at[i] for i, c in enumerate(cols)]).astype(np.int64)
    out["link_type"] = np.concatenate([c["link_type"] for c in cols]).astype(np.int8)
    out["entity_ptr"] = np.concatenate([[0]] + [c["entity_ptr"][1:] + e_at[i] for i, c in enumerate(cols)]
                                       ).astype(np.int64)
    line_of = np.concatenate([span[2] + np.arange(len(c["ids"])) for c, span in zip(cols, spans)])
    check_unique_ids(out["ids"], lambda j: (fname, int(line_of[j])))
    return out


def read_jsonl_blocks(epath: Path, blocks: int) -> dict:
    """The event columns of one JSONL file, its blocks parsed by Ray tasks."""
    import ray
    spans = block_spans(epath, blocks)
    task = ray.remote(num_cpus=1)(parse_block)
    parts = ray.get([task.remote(str(epath), s) for s in spans])
    return join_blocks(parts, spans, str(epath))


def read_folder_blocks(corpus_dir: Path, blocks: int) -> EventBatch:
    """An orgmem folder with vectors, read as `corpus.read_events` reads it, with its events.jsonl
    parsed in `blocks` Ray tasks."""
    return read_events(corpus_dir, parse=lambda epath: read_jsonl_blocks(epath, blocks))
