"""Turn multi-session conversations with evidence-annotated questions into an orgmem-v1 corpus.

    python bench/conv_corpus.py OUT_DIR CONV.json [CONV.json ...] [--encoder SPEC] [--budget 1000]
                                [--no-sessions] [--no-replies]

Input: conversation files in the widely used long-term conversational memory layout (one JSON
object per conversation: `session_K` lists of turns with `speaker`, `text` or `clean_text`,
`dia_id` "DK:T"; `session_K_date_time`; a `qa` list of `question`, `evidence` dia_ids and
`category`). The public REALTALK dataset (21 days of real messaging between pairs of people,
728 questions) has this layout.

Output, one event per turn:
- id `c<conv>:<dia_id>`, time = the turn's own timestamp when it has one, else the session's
  plus one second per turn; text `Speaker: words` (an image caption appended when present);
  tokens = ceil(chars / 4).
- entities `conv:<conv>`, `session:<conv>/<K>` (not with `--no-sessions`), `person:<speaker>`
  (person names are shared between conversations, as in real data: a scope must keep answers
  inside one).
- a `reply` link from every turn to the previous turn of its session (not with `--no-replies`).

One chain query per question: its text, `filters` and `scope` = the conversation, direction
`both`, the budget (default 1000 tokens), and the question's category; truth = its evidence
turns. `bench/bench_memory.py` scores systems per category.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from git_corpus import write_orgmem   # bench/: the same orgmem folder writer

_SESSION = re.compile(r"^session_(\d+)$")
_FORMATS = ("%d.%m.%Y, %H:%M:%S", "%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%dT%H:%M:%S")


def parse_time(text: str, where: str) -> int:
    """Unix seconds of a conversation timestamp in any of the layouts seen in such datasets."""
    s = " ".join(str(text).replace(",", ", ").split()).replace(" ,", ",")
    for fmt in _FORMATS:
        try:
            return int(datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            continue
    raise ValueError(f"{where}: unrecognised date {text!r}")


def _turn_text(turn: dict) -> str:
    words = turn.get("clean_text") or turn.get("text") or ""
    caption = turn.get("blip_caption")
    if caption:
        words = f"{words} [shares a photo: {caption}]".strip()
    return f"{turn['speaker']}: {words}"


def convert(conv: dict, c: int, where: str, *, sessions_as_entities: bool = True,
            replies: bool = True) -> tuple[list[dict], dict[str, str]]:
    """Events of one conversation, and its dia_id -> event id map. Without `sessions_as_entities`
    a turn names no `session:` entity; without `replies` it has no reply link (other importers
    of such data make either choice: the engine must not depend on them)."""
    conv = conv.get("conversation", conv)
    sessions = sorted((int(m.group(1)), k) for k in conv if (m := _SESSION.match(k)) and isinstance(conv[k], list))
    events, ids = [], {}
    for s, key in sessions:
        base = parse_time(conv[f"{key}_date_time"], f"{where} {key}_date_time")
        prev = None
        for t, turn in enumerate(conv[key]):
            eid = f"c{c}:{turn['dia_id']}"
            own = turn.get("date_time")
            when = parse_time(own, f"{where} {turn['dia_id']}") if own else base + t
            text = _turn_text(turn)
            ents = [f"conv:{c}"] + ([f"session:{c}/{s}"] if sessions_as_entities else [])
            ev = {"id": eid, "time": when, "source": "chat", "kind": "turn", "tokens": max(1, math.ceil(len(text) / 4)),
                  "entities": ents + [f"person:{turn['speaker'].strip().lower()}"],
                  "links": [{"to": prev, "type": "reply"}] if prev and replies else [], "text": text}
            events.append(ev)
            ids[turn["dia_id"]] = eid
            prev = eid
    return events, ids


def questions(qa: list, ids: dict[str, str], c: int, budget: int) -> list[tuple[dict, dict]]:
    pairs = []
    for item in qa:
        ev = [ids[d.strip()] for d in item.get("evidence") or [] if isinstance(d, str) and d.strip() in ids]
        if not ev or not item.get("question"):
            continue
        scope = {"entities_any": [f"conv:{c}"]}
        q = {"type": "chain", "text": item["question"], "filters": scope, "scope": scope, "as_of": None,
             "direction": "both", "budget_tokens": budget, "category": str(item.get("category"))}
        pairs.append((q, {"relevant": sorted(set(ev)), "current": None, "stale": []}))
    return pairs


def write_corpus(files: list[Path], out: Path, *, encoder: str = "hashing", budget: int = 1000, log=print,
                 sessions_as_entities: bool = True, replies: bool = True) -> dict:
    from fastctx.encoder import from_spec, spec_of
    events, pairs = [], []
    for c, path in enumerate(files, 1):
        conv = json.loads(Path(path).read_text())
        evs, ids = convert(conv, c, str(path), sessions_as_entities=sessions_as_entities, replies=replies)
        events += evs
        pairs += questions(conv.get("qa") or [], ids, c, budget)
    events.sort(key=lambda e: (e["time"], e["id"]))
    enc = from_spec(encoder)
    t0 = time.perf_counter()
    vecs = enc.encode([e["text"] for e in events]).astype(np.float32)
    qvecs = enc.encode([q["text"] for q, _ in pairs]).astype(np.float32)
    log(f"encoded {len(events)} turns and {len(pairs)} questions with {encoder} in {time.perf_counter() - t0:.1f}s")
    meta = write_orgmem(out, events, vecs, pairs, qvecs, sources=["chat"], params={
        "encoder_spec": spec_of(enc), "conversations": [Path(p).name for p in files],
        "budget_tokens": budget, "session_entities": sessions_as_entities, "reply_links": replies})
    log(f"wrote {out}: {len(events)} turns in {len(files)} conversations, {len(pairs)} questions")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--encoder", default="hashing", help="hashing (default) or sentence-transformers:PATH")
    ap.add_argument("--budget", type=int, default=1000, help="budget_tokens of every question")
    ap.add_argument("--no-sessions", action="store_true", help="no session:<conv>/<K> entity on the turns")
    ap.add_argument("--no-replies", action="store_true", help="no reply link from a turn to the previous one")
    a = ap.parse_args(argv)
    write_corpus(a.files, a.out, encoder=a.encoder, budget=a.budget, sessions_as_entities=not a.no_sessions,
                 replies=not a.no_replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
