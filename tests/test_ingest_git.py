"""`fastctx ingest git`: a real git repository made in the test (commits with files, a revert, a
cherry-pick -x, a merge that must be skipped, a bare clone), read into events and an index."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import fastctx
from fastctx.cli import main
from fastctx.errors import CorpusError
from fastctx.ingest_git import ingest_git, read_git, strip_tickets, tickets

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git program")

T0 = 1_704_067_200  # 2024-01-01
ANA = ("Ana Silva", "Ana@Example.org")
BOB = ("Bob  Jones", "bob@example.org")


class Repo:
    def __init__(self, path: Path):
        self.path, self.clock = path, T0
        path.mkdir()
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, who=ANA, committer=None, committed=None) -> str:
        self.clock += 3600
        c = committer or who
        env = {**os.environ, "GIT_AUTHOR_NAME": who[0], "GIT_AUTHOR_EMAIL": who[1],
               "GIT_COMMITTER_NAME": c[0], "GIT_COMMITTER_EMAIL": c[1], "GIT_AUTHOR_DATE": f"@{self.clock} +0000",
               "GIT_COMMITTER_DATE": f"@{committed or self.clock} +0000",
               "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        out = subprocess.run(["git", *args], cwd=self.path, env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def commit(self, message: str, files: dict, **who) -> str:
        for name, content in files.items():
            p = self.path / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
            self.git("add", name)
        self.git("commit", "-q", "-m", message, **who)    # who: who=, committer=, committed= (a date)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """The repository, its bare clone, and the shas of the commits the tests look at."""
    base = tmp_path_factory.mktemp("git")
    r = Repo(base / "work")
    s = {}
    s["retry"] = r.commit("Add payment retry module", {"src/pay/retry.py": "def retry(): pass\n"})
    s["double"] = r.commit("Fix double charge in the retry loop (#42)\n\nIdempotency key per attempt. See PAY-17.",
                           {"src/pay/retry.py": "def retry(key): pass\n", "docs/pay.md": "retries\n"}, who=BOB)
    s["cache"] = r.commit("Switch the session cache from memcached to redis because of eviction storms",
                          {"src/session/cache.py": "BACKEND = 'redis'\n"}, who=ANA, committer=BOB)
    r.git("revert", "--no-edit", s["double"])
    s["revert"] = r.head()
    r.git("checkout", "-q", "-b", "feature")
    s["feature"] = r.commit("Guard the ledger export against empty batches",
                            {"src/ledger/export.py": "def export(b): return b or []\n"})
    r.git("checkout", "-q", "main")
    r.git("cherry-pick", "-x", s["feature"])
    s["picked"] = r.head()
    r.git("merge", "-q", "--no-ff", "-m", "Merge branch 'feature'", "feature")
    s["merge"] = r.head()
    s["follow"] = r.commit(f"Follow-up to {s['retry'][:9]}: back off exponentially\n\n"
                           "Refs issue 7, gh-8, [ticket:9] and bug 10; fixes nothing else.",
                           {"src/pay/backoff.py": "BASE = 2\n"})
    s["dot"] = r.commit(".", {"README": "x\n"})
    bare = base / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(r.path), str(bare)], check=True)
    return r, bare, s


def pairs(links):
    """Event payload links as (to, type), whether stored as objects or as pairs."""
    return [(lk["to"], lk["type"]) if isinstance(lk, dict) else tuple(lk) for lk in links]


def user_links(links):
    """`pairs` less the links the index derives itself (same_actor, co_mention, ...)."""
    from fastctx.corpus import DERIVED_LINK_TYPES
    return [p for p in pairs(links) if p[1] not in DERIVED_LINK_TYPES]


def by_id(events):
    return {e["id"]: e for e in events}


def test_events_from_commits(history):
    r, _, s = history
    events = read_git(r.path)
    ev = by_id(events)
    assert s["merge"] not in ev                       # merges are skipped
    assert len(events) == 8
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)   # oldest first
    d = ev[s["double"]]
    assert d["source"] == "git" and d["kind"] == "commit" and len(d["id"]) == 40
    assert d["text"].startswith("Fix double charge") and d["tokens"] == -(-len(d["text"]) // 4)
    assert d["time"] == int(r.git("log", "-1", "--format=%ct", s["double"]))
    assert {"file:src/pay/retry.py", "file:docs/pay.md", "dir:src", "dir:src/pay", "dir:docs",
            "person:Bob Jones <bob@example.org>", "ticket:42", "ticket:PAY-17"} == set(d["entities"])
    # author and a different committer, emails lower-cased
    people = {"person:Ana Silva <ana@example.org>", "person:Bob Jones <bob@example.org>"}
    assert people <= set(ev[s["cache"]]["entities"])
    assert ev[s["retry"]]["links"] == []


def test_links_from_messages(history):
    r, _, s = history
    ev = by_id(read_git(r.path))
    assert ev[s["revert"]]["kind"] == "revert"
    assert ev[s["revert"]]["links"] == [{"to": s["double"], "type": "reverts"}]
    assert ev[s["picked"]]["kind"] == "backport"
    assert ev[s["picked"]]["links"] == [{"to": s["feature"], "type": "backport_of"}]
    f = ev[s["follow"]]
    assert f["links"] == [{"to": s["retry"], "type": "follow_up"}]      # a 9-digit abbreviation resolved
    assert {"ticket:7", "ticket:8", "ticket:9", "ticket:10"} <= set(f["entities"])


def test_bare_clone_and_branch(history):
    r, bare, s = history
    assert read_git(bare) == read_git(r.path)
    feature = read_git(bare, "feature")
    assert [e["id"] for e in feature][-1] == s["feature"] and s["picked"] not in by_id(feature)
    assert [e["id"] for e in read_git(bare, max_commits=2)] == [s["follow"], s["dot"]]


def test_bad_input_is_a_clear_error(tmp_path, history):
    with pytest.raises(CorpusError, match="not a git repository"):
        read_git(tmp_path)
    with pytest.raises(CorpusError, match="no commit 'nope'"):
        read_git(history[1], "nope")
    res = CliRunner().invoke(main, ["ingest", "git", str(tmp_path), str(tmp_path / "idx")])
    assert res.exit_code == 1 and "not a git repository" in res.output and "Traceback" not in res.output


def test_ticket_patterns():
    text = ("Fix #12 and gh-13, GH-14; see ABC-15, [ticket:16], bug 17, Issue #18, "
            "https://github.com/org/other/issues/19, org/lib#20, CVE-2024-12345, UTF-8 and SHA-256")
    # home known: references into it are plain numbers, others keep their repository
    assert set(tickets(text, home="org/lib")) == {"org/other#19", "20", "12", "13", "14", "ABC-15", "16",
                                                  "17", "18", "CVE-2024-12345"}
    # home unknown: an issue URL is taken as the repository's own tracker, owner/repo#N is not
    assert {"19", "org/lib#20"} <= set(tickets(text))
    assert tickets("see https://github.com/org/lib/pull/21", home="org/lib") == ["21"]
    stripped = strip_tickets(text)
    assert tickets(stripped) == [] and "UTF-8" in stripped and "SHA-256" in stripped
    assert strip_tickets("Fix the retry loop (#42)") == "Fix the retry loop"


def test_quoted_release_notes_and_links_into_other_repositories_name_no_ticket_of_ours():
    bump = ("Bump codecov from 2.1.0 to 2.1.10 (#5054)\n\n<details>\n<summary>Release notes</summary>\n"
            "<blockquote>\n<li><a href=\"https://github-redirect.dependabot.com/codecov/codecov-python/pull/148\">"
            "#148</a> Output elapsed time</li>\n</blockquote>\n</details>\n<details>\n<summary>Commits</summary>\n"
            "<li>Merge pull request <a href=\"https://github-redirect.dependabot.com/codecov/codecov-python/issues/299\">"
            "#299</a> from x/y</li>\n<li>See <a href='https://github.com/org/lib/issues/77'>#77</a></li></details>")
    assert set(tickets(bump, home="org/lib")) == {"77", "codecov/codecov-python#299", "5054"}
    assert tickets("<blockquote>fixes #3 upstream", home="org/lib") == []     # unclosed: to the end
    assert tickets("a < b, see #9", home="org/lib") == ["9"]


def test_ingest_into_index_and_rerun(tmp_path, history):
    r, bare, s = history
    idx_dir = tmp_path / "idx"
    rep = ingest_git(bare, idx_dir)
    assert rep["commits"] == rep["added"] == 8 and rep["skipped"] == 0 and rep["links"] == 3
    with fastctx.Index(idx_dir) as idx:
        assert idx.n == 8
        hits = idx.search("revert the double charge fix", k=3)
        top = {e.id: e for e in hits.events(0)}
        assert s["revert"] in top
        assert user_links(top[s["revert"]].links) == [(s["double"], "reverts")]
        # a question paraphrasing a commit message finds that commit first
        q = idx.search("why did we move sessions to redis? memcached evictions", k=3)
        assert q.events(0)[0].id == s["cache"]
    # `fastctx get INDEX SHA --json` shows the revert's link to the reverted commit
    res = CliRunner().invoke(main, ["get", str(idx_dir), s["revert"], "--json"])
    assert res.exit_code == 0, res.output
    (got,) = json.loads(res.output)
    assert got["id"] == s["revert"] and user_links(got["links"]) == [(s["double"], "reverts")]
    again = ingest_git(bare, idx_dir)
    assert again["added"] == 0 and again["skipped"] == 8
    # a new commit upstream: only that one is added
    new = r.commit("Log retry attempts", {"src/pay/retry.py": "def retry(key, log): pass\n"})
    try:
        res = CliRunner().invoke(main, ["ingest", "git", str(r.path), str(idx_dir)])
        assert res.exit_code == 0, res.output
        assert "9 commits read, 1 added, 0 updated, 8 already present" in res.output
        with fastctx.Index(idx_dir) as idx:
            assert idx.n == 9 and idx.search("log the retry attempts", k=1).events(0)[0].id == new
    finally:
        r.git("reset", "-q", "--hard", "HEAD~1")


def test_refuses_a_directory_that_is_not_an_index(tmp_path, history):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    res = CliRunner().invoke(main, ["ingest", "git", str(history[1]), str(tmp_path / "junk")])
    assert res.exit_code == 1 and "neither empty nor a fastctx index" in res.output


def test_bench_git_corpus_queries(tmp_path):
    """bench/git_corpus.py: chain queries from shared ticket ids, current queries from a revert
    and re-land sequence; --strip-tickets removes the ids from text and entities."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from git_corpus import write_corpus

    from fastctx.corpus import read_events, read_queries

    r = Repo(tmp_path / "repo")
    chain = [r.commit("Parse the retry header (#5)", {"src/http/retry.c": "1"}),
             r.commit("Unrelated docs change", {"README": "1"}),
             r.commit("Handle a missing retry header, refs #5", {"src/http/retry.c": "2"}),
             r.commit("Honour the retry header in the client loop (#5)", {"src/http/client.c": "3"})]
    x = r.commit("Enable connection pooling by default", {"src/pool.c": "on"})
    r.git("revert", "--no-edit", x)
    rev = r.head()
    r.git("revert", "--no-edit", rev)
    reland = r.head()
    for strip in (False, True):
        out = tmp_path / f"corpus-{strip}"
        write_corpus(r.path, out, strip=strip, log=lambda m: None)
        batch = read_events(out)
        queries, qvecs = read_queries(out)
        assert len(batch) == 7 and qvecs.shape == (2, batch.dim)
        truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
        (qc, tc), (qr, tr) = zip(queries, truth)
        assert qc["type"] == "chain" and qc["text"] == "Honour the retry header in the client loop"
        assert tc["relevant"] == [chain[0], chain[2], chain[3]] and qc["direction"] == "back"
        assert qr["type"] == "current" and qr["text"] == "Enable connection pooling by default"
        assert tr["current"] == reland and tr["stale"] == [x, rev]
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        has_ids = any("#5" in e["text"] or "ticket:5" in e["entities"] for e in events)
        assert has_ids != strip


def test_bench_git_corpus_reland_under_the_subject_without_its_code_quotes(tmp_path):
    """A change re-landed later under its subject less the ``code`` quotes is the same change:
    the sequence's current commit is the re-land (bench/git_corpus.py compares words)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from git_corpus import write_corpus

    r = Repo(tmp_path / "repo")
    x = r.commit("Add ``config-inited`` event", {"sphinx/app.py": "1"})
    r.git("revert", "--no-edit", x)
    rev = r.head()
    r.commit("Unrelated docs change", {"README": "1"})
    reland = r.commit("Add config-inited event", {"sphinx/app.py": "2"})
    write_corpus(r.path, tmp_path / "c", strip=False, log=lambda m: None)
    truth = [json.loads(line) for line in (tmp_path / "c" / "truth.jsonl").read_text().splitlines()]
    assert [(t["current"], t["stale"]) for t in truth] == [(reland, [x, rev])]


def test_existing_index_keeps_its_encoder(tmp_path, history):
    _, bare, _ = history
    idx_dir = tmp_path / "idx"
    assert ingest_git(bare, idx_dir, max_commits=3)["added"] == 3
    res = CliRunner().invoke(main, ["ingest", "git", str(bare), str(idx_dir), "--encoder", "hashing:64"])
    assert res.exit_code == 1 and "encoder" in res.output and "Traceback" not in res.output
    # without --encoder the recorded one embeds the rest; the cherry-pick and the follow-up, read
    # before without the commits they name, are updated with their links; "." is unchanged
    assert ingest_git(bare, idx_dir) == {"commits": 8, "added": 5, "skipped": 1, "updated": 2, "links": 3,
                                         "dangling_links": 0, "left_out": {}}


def test_any_other_sha_the_message_names_is_a_reference():
    """Besides the phrases with a link type of their own, a commit the message names any other way
    ("Regression from SHA", "Before SHA", a commit URL) is a reference; a word or a number that
    looks like hex, an unknown or ambiguous abbreviation, the commit itself and a sha already
    linked by a typed phrase are not."""
    from fastctx.ingest_git import _ShaIndex, links
    a, b, c = "b13936bd6a89993cd3bf4a" + "0" * 18, "02f2700a61157ce5a264319bdb807" + "1" * 11, "5a96f494" + "e" * 32
    known = _ShaIndex()
    for sha in (a, b, c, "deadbee" + "0" * 33, "deadbee" + "1" * 33):
        known.add(sha)
    msg = (f"Regression from {a[:12]}. Before {b[:9]} it worked; see https://example.org/commit/{c[:10]}\n"
           f"Follow-up to {c[:8]}, not 1234567 or defaced or deadbee; {'f' * 40} is unknown")
    got = links(msg, known, own=a)
    assert got == [{"to": c, "type": "follow_up"}, {"to": b, "type": "references"}]


def test_a_rename_lists_both_names_and_file_contents_are_never_read(tmp_path):
    """A renamed file is listed under its old and new names, and git is never asked for a file's
    contents: the history imports from a clone whose blobs are gone (a blobless partial clone)."""
    r = Repo(tmp_path / "work")
    r.commit("Add the ledger", {"src/ledger.py": "x = 1\n" * 50})
    r.git("mv", "src/ledger.py", "src/book.py")
    r.git("commit", "-q", "-m", "Rename the ledger module to book")
    blobs = [line.split()[0] for line in r.git("cat-file", "--batch-all-objects", "--batch-check").splitlines()
             if line.split()[1] == "blob"]
    for sha in blobs:          # loose objects only (no pack yet): remove every file's contents
        (r.path / ".git" / "objects" / sha[:2] / sha[2:]).unlink()
    events = list(read_git(r.path))
    assert [e["text"].split("\n")[0] for e in events] == ["Add the ledger", "Rename the ledger module to book"]
    assert {"file:src/ledger.py", "file:src/book.py"} <= set(events[1]["entities"])


def test_a_commit_touching_many_files_names_only_their_directories(tmp_path):
    """A release commit that gathers every changelog fragment names no file (it would tie itself to
    each commit that wrote one); its directories stay, and so do a smaller commit's files."""
    from fastctx.ingest_git import MAX_FILES
    r = Repo(tmp_path / "work")
    r.commit("Fix the resolver", {"src/resolve.py": "x\n", "news/101.bugfix": "Fixed.\n"})
    many = {f"news/{100 + i}.bugfix": "" for i in range(MAX_FILES)} | {"docs/changes.rst": "all\n"}
    r.commit("Release 1.0", many)
    small, release = read_git(r.path)
    assert {"file:src/resolve.py", "file:news/101.bugfix", "dir:src", "dir:news"} <= set(small["entities"])
    assert not [e for e in release["entities"] if e.startswith("file:")]
    assert {"dir:news", "dir:docs"} <= set(release["entities"])
    _, release = read_git(r.path, max_files=MAX_FILES + 1)
    assert {"file:news/101.bugfix", "file:docs/changes.rst"} <= set(release["entities"])

    # the CLI's --max-files: with 1, the two-file fix names no file either
    res = CliRunner().invoke(main, ["ingest", "git", str(r.path), str(tmp_path / "idx"), "--max-files", "1"])
    assert res.exit_code == 0, res.output
    with fastctx.open(tmp_path / "idx") as idx:
        fix = idx.get([small["id"]])[0]
    assert "dir:src" in fix.entities and not [e for e in fix.entities if e.startswith("file:")]

    # a bad value is an error naming the field, and no index is made
    with pytest.raises(CorpusError, match="max_files"):
        ingest_git(r.path, tmp_path / "bad", max_files=0)
    assert not (tmp_path / "bad").exists()


FUTURE = 9_999_999_999      # 2286: git takes any committer date, the index holds 1970..2200


@pytest.fixture
def future(tmp_path):
    """A repository whose middle commit has a committer date the index cannot hold."""
    r = Repo(tmp_path / "repo")
    first = r.commit("one", {"a": "1"})
    bad = r.commit("from the future", {"b": "2"}, committed=FUTURE)
    r.commit("three", {"c": "3"})
    return r, first, bad


def test_a_commit_the_index_cannot_hold_stops_the_import_before_anything_is_written(tmp_path, future):
    r, first, bad = future
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "idx", tmp_path / "new" / "deeper" / "idx", tmp_path / "empty"):
        with pytest.raises(CorpusError, match=f"field 'time': commit {bad}: .*9999999999.*--skip-invalid") as e:
            ingest_git(r.path, target, batch_size=1)      # a batch of the first commit would fit
        assert e.value.file == str(r.path)
    assert not (tmp_path / "idx").exists() and not (tmp_path / "new").exists()
    assert list((tmp_path / "empty").iterdir()) == []       # there before: kept, and still empty
    # the CLI: a one-line error, no traceback, nothing on disk
    for batch in ("1", "1000"):
        res = CliRunner().invoke(main, ["ingest", "git", str(r.path), str(tmp_path / "idx"), "--batch", batch])
        assert res.exit_code == 1 and type(res.exception) is SystemExit and "Traceback" not in res.output
        assert f"commit {bad}" in res.output and str(r.path) in res.output and "field 'time'" in res.output
        assert not (tmp_path / "idx").exists()
    # an existing index is left as it was
    assert ingest_git(r.path, tmp_path / "idx", branch=first)["added"] == 1
    with pytest.raises(CorpusError, match=f"commit {bad}"):
        ingest_git(r.path, tmp_path / "idx")
    with fastctx.Index(tmp_path / "idx") as idx:
        assert idx.n == 1


def test_skip_invalid_leaves_such_commits_out_and_lists_them(tmp_path, future):
    r, _, bad = future
    idx_dir = tmp_path / "idx"
    res = CliRunner().invoke(main, ["ingest", "git", str(r.path), str(idx_dir), "--skip-invalid", "--batch", "1"])
    assert res.exit_code == 0, res.output
    assert "3 commits read, 2 added, 0 updated, 0 already present; 0 links; 1 left out" in res.output
    assert f"{bad}: field 'time'" in res.output
    with fastctx.Index(idx_dir) as idx:
        assert idx.n == 2 and idx.get([bad], unrestricted=True) == [None]
    rep = ingest_git(r.path, idx_dir, skip_invalid=True)
    assert rep["skipped"] == 2 and rep["added"] == 0 and list(rep["left_out"]) == [bad]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX resource limits")
def test_a_failed_write_removes_the_index_this_command_created(tmp_path):
    """A write that fails after the index was created (here: the file-size limit, below one batch's
    log record) removes the half-made index; an index that was there before stays, with what it
    held."""
    import sys

    r = Repo(tmp_path / "repo")
    first = r.commit("one", {"a": "1"})
    r.commit("a long message " * 7_000, {"b": "2"})     # ~100 kB, over the limit below

    # the limit is set by the child itself: a preexec_fn would run this process's fork handlers
    # (gRPC's, once an earlier test loaded it), which can abort the child before it starts
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10)); "

    def cli(target: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", limit + "from fastctx.cli import main; main()", "ingest", "git",
                               str(r.path), str(target), "--batch", "1"],
                              capture_output=True, text=True, timeout=300)

    out = cli(tmp_path / "idx")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "writing failed" in out.stderr and "the half-made index was removed" in out.stderr
    assert not (tmp_path / "idx").exists()
    ingest_git(r.path, tmp_path / "idx", branch=first)
    out = cli(tmp_path / "idx")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "stay in the index" in out.stderr, out.stderr
    with fastctx.Index(tmp_path / "idx") as idx:
        assert idx.n == 1 and idx.get([first], unrestricted=True)[0].text == "one"
