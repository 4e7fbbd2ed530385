"""bench/conv_corpus.py and the engine on conversations: turns become scoped events with reply
links; a question's answer stays inside its conversation even where a person talks in two, and
a fact asked of a conversation (no causal structure) is answered by its direct hits."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from conv_corpus import parse_time, write_corpus  # noqa: E402

from fastctx.corpus import read_events, read_queries  # noqa: E402
from fastctx.index import Index, build  # noqa: E402

TOPICS = ["my sister's wedding in Lisbon", "the marathon training plan", "adopting a grey cat named Pixel",
          "a pottery class on Thursdays", "moving the bakery to a bigger place", "learning to sail on the lake",
          "the broken dishwasher", "a trip to see the northern lights"]


def _conversation(a: str, b: str, topics: list[str], day: int) -> dict:
    conv = {"speaker_a": a, "speaker_b": b, "qa": []}
    for s, topic in enumerate(topics, 1):
        conv[f"session_{s}_date_time"] = f"1:{10 + s:02d} pm on {day + s} May, 2023"
        conv[f"session_{s}"] = [
            {"speaker": a, "dia_id": f"D{s}:1", "text": f"Guess what, I finally sorted out {topic}!"},
            {"speaker": b, "dia_id": f"D{s}:2", "text": "No way, tell me everything."},
            {"speaker": a, "dia_id": f"D{s}:3", "text": f"It took weeks, but {topic} is done and I feel great."},
            {"speaker": b, "dia_id": f"D{s}:4", "text": "Proud of you. Talk soon!", "blip_caption": "a thumbs up"}]
        conv["qa"].append({"question": f"What did {a} sort out about {topic}?", "evidence": [f"D{s}:1", f"D{s}:3"],
                           "category": 1})
    conv["qa"].append({"question": "Which evidence is missing?", "evidence": ["D99:1"], "category": 2})
    return conv


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv")
    files = []
    # Ana talks in both conversations: her name alone must not carry an answer across them
    for i, (a, b, topics) in enumerate([("Ana", "Ben", TOPICS[:4]), ("Ana", "Cleo", TOPICS[4:])]):
        path = tmp / f"conv{i}.json"
        path.write_text(json.dumps(_conversation(a, b, topics, 3 * i)))
        files.append(path)
    write_corpus(files, tmp / "corpus", log=lambda m: None)
    return tmp / "corpus"


def test_turns_become_scoped_events_with_reply_links(corpus):
    batch = read_events(corpus)
    events = [json.loads(line) for line in (corpus / "events.jsonl").read_text().splitlines()]
    assert len(batch) == len(events) == 32
    first = next(e for e in events if e["id"] == "c1:D1:2")
    assert first["text"] == "Ben: No way, tell me everything."
    assert first["entities"] == ["conv:1", "session:1/1", "person:ben"]
    assert first["links"] == [{"to": "c1:D1:1", "type": "reply"}]
    assert next(e for e in events if e["id"] == "c2:D1:4")["text"].endswith("[shares a photo: a thumbs up]")
    assert all(e["links"] == [] for e in events if e["id"].endswith(":1"))   # a session starts fresh
    queries, qvecs = read_queries(corpus)
    assert len(queries) == 8 and qvecs.shape == (8, batch.dim)           # no question without evidence
    q = queries[0]
    assert q["scope"] == q["filters"] == {"entities_any": ["conv:1"]} and q["budget_tokens"] == 1000


def test_answers_stay_in_their_conversation_and_find_the_evidence(corpus, tmp_path):
    build(corpus, tmp_path / "idx")
    idx = Index(tmp_path / "idx")
    queries, qvecs = read_queries(corpus)
    truth = [json.loads(line) for line in (corpus / "truth.jsonl").read_text().splitlines()]
    found = 0
    for q, v, t in zip(queries, qvecs, truth):
        ans = idx.query_spec(q, v)
        conv = q["scope"]["entities_any"][0]
        assert ans.events and all(conv in e.entities for e in ans.events)
        assert ans.tokens <= q["budget_tokens"]
        found += len(set(t["relevant"]) & {e.id for e in ans.events})
    assert found == sum(len(t["relevant"]) for t in truth)   # tiny conversations: the budget holds them


def test_timestamps_in_both_layouts():
    assert parse_time("1:56 pm on 8 May, 2023", "x") == parse_time("08.05.2023, 13:56:00", "x")
    with pytest.raises(ValueError, match="where: unrecognised date"):
        parse_time("yesterday", "where")


def test_sessions_and_replies_can_be_left_out(corpus, tmp_path):
    """Other importers of such data may name no session or link no replies: both are options."""
    files = sorted(corpus.parent.glob("conv*.json"))
    write_corpus(files, tmp_path / "bare", log=lambda m: None, sessions_as_entities=False, replies=False)
    events = [json.loads(line) for line in (tmp_path / "bare" / "events.jsonl").read_text().splitlines()]
    first = next(e for e in events if e["id"] == "c1:D1:2")
    assert first["entities"] == ["conv:1", "person:ben"] and first["links"] == []
    assert not any(x.startswith("session:") for e in events for x in e["entities"])
    assert all(e["links"] == [] for e in events)


def test_memory_bench_groups_questions_by_evidence_count(corpus, tmp_path, capsys):
    """bench_memory.py --by-evidence: single-turn questions (what single-hop means) apart from
    several-turn ones, each system scored on the same questions."""
    from bench_memory import evidence_group, main as bench_memory
    assert [evidence_group(n) for n in (1, 2, 3, 4, 9)] == ["1 turn", "2-3 turns", "2-3 turns", "4+ turns", "4+ turns"]
    out = tmp_path / "m.json"
    assert bench_memory([str(corpus), "--work", str(tmp_path / "idx"), "--systems", "rag,fastctx",
                         "--by-evidence", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    for system in ("rag", "fastctx"):
        assert set(got[system]) == {"2-3 turns", "overall"}          # every question here has two turns
        assert got[system]["2-3 turns"]["n"] == got[system]["overall"]["n"] == 8
        assert got[system]["overall"]["outside"] == 0
    assert got["fastctx"]["overall"]["recall"] == 1.0
    assert "| 2-3 turns (n=8) | overall |" in capsys.readouterr().out


def test_memory_bench_states_the_margin_over_the_stronger_baseline():
    from bench_memory import margins
    res = {"rag": {"1": {"recall": 0.4}, "overall": {"recall": 0.6}},
           "hybrid": {"1": {"recall": 0.5}, "overall": {"recall": 0.55}},
           "fastctx": {"1": {"recall": 0.7}, "overall": {"recall": 0.65}}}
    got = margins(res)
    assert set(got) == {"fastctx"}
    assert abs(got["fastctx"]["1"] - 0.2) < 1e-12 and abs(got["fastctx"]["overall"] - 0.05) < 1e-12
    assert margins({"fastctx": res["fastctx"]}) == {}
