"""Turn a git history into an orgmem-v1 corpus with evaluation queries (real data for the engine).

    python bench/git_corpus.py REPO OUT_DIR [--strip-tickets] [--encoder SPEC] [--max-commits N]
                               [--branch REF] [--home OWNER/REPO] [--max-files N]

Events come from `fastctx.ingest_git.read_git` (one per non-merge commit). Queries (see
bench/README.md, "Real git histories"):

- chain: every ticket id (issue / PR number, Jira key) that 3 to 12 commits mention is one chain;
  the query text is the latest commit's subject with ticket ids, shas and file names removed;
  truth = the group's commits; direction back, budget 2000 tokens.
- current: revert / re-land sequences (a commit, its revert, a re-land of it, ...); the query
  text is the original commit's subject, cleaned the same way; truth current = the latest
  commit of the sequence, stale = the earlier ones.

`--strip-tickets` removes ticket ids from the event text and entities: the chains must then be
inferred from wording, files, people and time. Group membership always comes from the ids in
the original messages.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fastctx.encoder import from_spec, spec_of
from fastctx.errors import FastctxError
from fastctx.ingest_git import MAX_FILES, _embed, read_git, strip_tickets, tickets

CHAIN_MIN, CHAIN_MAX = 3, 12
BUDGET = 2000
_SHA = re.compile(r"\b[0-9a-f]{7,40}\b")
_WORDS = re.compile(r"[A-Za-z]{2,}")


def subject(text: str) -> str:
    return text.split("\n", 1)[0].strip()


def clean(text: str, files: set[str]) -> str:
    """A query from a commit subject: no ticket ids, shas or file names."""
    text = _SHA.sub("", strip_tickets(text))
    for f in sorted(files, key=len, reverse=True):
        text = text.replace(f, "")
    text = re.sub(r"\(\s*\)|\[\s*\]", "", text)
    return re.sub(r"\s{2,}", " ", text).strip(" :,;-")


def _files(ev: dict) -> set[str]:
    out = set()
    for e in ev["entities"]:
        if e.startswith("file:"):
            out.add(e[5:])
            out.add(e[5:].rsplit("/", 1)[-1])
    return {f for f in out if len(f) > 2}


def chain_queries(events: list[dict], home) -> list[tuple[dict, dict]]:
    by_ticket: dict[str, list[int]] = defaultdict(list)
    for i, ev in enumerate(events):
        for t in tickets(ev["text"], home):
            by_ticket[t].append(i)
    out, used = [], set()
    for t, rows in by_ticket.items():
        if not CHAIN_MIN <= len(rows) <= CHAIN_MAX:
            continue
        last = max(rows, key=lambda i: (events[i]["time"], i))
        if last in used:          # one query per commit: two ids on one commit ask the same question
            continue
        used.add(last)
        text = clean(subject(events[last]["text"]), set().union(*(_files(events[i]) for i in rows)))
        if len(_WORDS.findall(text)) < 3:
            continue
        q = {"type": "chain", "text": text, "filters": {}, "as_of": None, "direction": "back",
             "budget_tokens": BUDGET}
        out.append((q, {"relevant": [events[i]["id"] for i in sorted(rows)], "current": None, "stale": [],
                        "group": f"ticket:{t}"}))
    return out


def _norm_subject(text: str) -> str:
    s = strip_tickets(subject(text))
    while True:
        m = re.fullmatch(r'(?:Revert|Reapply|Re-?land)\s*:?\s*"(.*)"\s*', s, re.I)
        if not m:
            break
        s = m.group(1)
    s = re.sub(r"^(?:Re-?land|Reapply)\s*:?\s*", "", s, flags=re.I)
    # words only: a re-land that drops a subject's code quotes (``name``) is the same change
    return " ".join(re.findall(r"\w+", s.lower()))


def current_queries(events: list[dict]) -> list[tuple[dict, dict]]:
    """Revert / re-land sequences: X, revert of X, re-land of X (a revert of the revert, or a
    later commit with X's subject), its revert, ..."""
    pos = {ev["id"]: i for i, ev in enumerate(events)}
    reverted_by: dict[str, str] = {}
    for ev in events:
        for lk in ev["links"]:
            if lk["type"] == "reverts":
                reverted_by.setdefault(lk["to"], ev["id"])
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, ev in enumerate(events):
        by_subject[_norm_subject(ev["text"])].append(i)
    in_seq: set[str] = set()
    out = []
    for i, ev in enumerate(events):
        if ev["id"] in in_seq or ev["id"] not in reverted_by or ev["kind"] != "commit":
            continue
        seq, cur = [ev["id"]], ev["id"]
        while cur in reverted_by:
            rev = reverted_by[cur]
            seq.append(rev)
            nxt = reverted_by.get(rev)      # a revert of the revert re-lands the change
            if nxt is None:
                key = _norm_subject(ev["text"])
                later = [j for j in by_subject.get(key, ()) if j > pos[rev] and events[j]["id"] not in seq
                         and events[j]["kind"] in ("commit", "reapply")] if key else []
                nxt = events[later[0]]["id"] if later else None
            if nxt is None or nxt in seq:
                break
            seq.append(nxt)
            cur = nxt
        in_seq.update(seq)
        text = clean(subject(ev["text"]), _files(ev))
        text = re.sub(r'^(?:Revert|Reapply|Re-?land)\s*"?|"$', "", text).strip()
        if len(_WORDS.findall(text)) < 2:
            continue
        q = {"type": "current", "text": text, "filters": {}, "as_of": None, "direction": "back",
             "budget_tokens": BUDGET}
        out.append((q, {"relevant": seq, "current": seq[-1], "stale": seq[:-1]}))
    return out


def write_orgmem(out: Path, events: list[dict], vecs: np.ndarray, pairs: list[tuple[dict, dict]],
                 qvecs: np.ndarray, *, sources: list[str], params: dict) -> dict:
    """Write an orgmem-v1 folder: events and their vectors, queries (ids q00000...) with their
    vectors and truth, and meta.json; returns the meta."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "events.jsonl", "w") as f:
        for ev in events:
            f.write(json.dumps(ev, ensure_ascii=False) + "\n")
    np.save(out / "vectors.npy", np.asarray(vecs, np.float32))
    with open(out / "queries.jsonl", "w") as fq, open(out / "truth.jsonl", "w") as ft:
        for j, (q, t) in enumerate(pairs):
            qid = f"q{j:05d}"
            fq.write(json.dumps({"qid": qid, **q}, ensure_ascii=False) + "\n")
            ft.write(json.dumps({"qid": qid, **t}) + "\n")
    np.save(out / "query_vectors.npy", np.asarray(qvecs, np.float32))
    meta = {"format": "orgmem-v1", "name": out.name, "dim": int(np.asarray(vecs).shape[1]), "n_events": len(events),
            "n_queries": len(pairs), "sources": sources, "kinds": sorted({e["kind"] for e in events}),
            "params": params}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def write_corpus(repo, out: Path, *, strip: bool = False, encoder: str = "hashing", max_commits=None,
                 branch=None, home=None, max_files: int = MAX_FILES, log=print) -> dict:
    t0 = time.perf_counter()
    events = read_git(repo, branch, max_commits=max_commits, home=home, max_files=max_files)
    log(f"read {len(events)} commits in {time.perf_counter() - t0:.1f}s")
    pairs = chain_queries(events, home) + current_queries(events)
    if strip:
        for ev in events:
            ev["text"] = strip_tickets(ev["text"])
            ev["entities"] = [e for e in ev["entities"] if not e.startswith("ticket:")]
    enc = from_spec(encoder)
    t1 = time.perf_counter()
    vecs = np.concatenate([_embed(enc, events[lo:lo + 2048]) for lo in range(0, len(events), 2048)])
    qvecs = enc.encode([q["text"] for q, _ in pairs]).astype(np.float32)
    log(f"encoded {len(events)} events and {len(pairs)} queries with {encoder} in {time.perf_counter() - t1:.1f}s")
    meta = write_orgmem(out, events, vecs, pairs, qvecs, sources=["git"], params={
        "encoder": getattr(enc, "name", encoder), "encoder_spec": spec_of(enc), "repo": str(repo),
        "strip_tickets": strip, "max_commits": max_commits, "home": home, "max_files": max_files,
        "chain_group_size": [CHAIN_MIN, CHAIN_MAX], "budget_tokens": BUDGET})
    n_chain = sum(q["type"] == "chain" for q, _ in pairs)
    log(f"wrote {out}: {len(events)} events, {n_chain} chain and {len(pairs) - n_chain} current queries")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("out", type=Path)
    ap.add_argument("--strip-tickets", action="store_true", help="remove ticket ids from text and entities")
    ap.add_argument("--encoder", default="hashing", help="hashing (default) or sentence-transformers:PATH")
    ap.add_argument("--max-commits", type=int, default=None, help="only the most recent N commits")
    ap.add_argument("--branch", default=None)
    ap.add_argument("--home", default=None, help="owner/repo of the history's own tracker (issue URLs)")
    ap.add_argument("--max-files", type=int, default=MAX_FILES,
                    help=f"a commit touching more files names none of them (default {MAX_FILES})")
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        write_corpus(a.repo, a.out, strip=a.strip_tickets, encoder=a.encoder, max_commits=a.max_commits,
                     branch=a.branch, home=a.home, max_files=a.max_files, log=log)
    except FastctxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
