"""Git histories as orgmem events: one event per non-merge commit.

`read_git(repo)` / `iter_git(repo)` run the `git` binary (no library needed) on a work tree or a
bare repository and turn each non-merge commit, oldest first, into an orgmem-v1 event record:

- `id` the full sha, `time` the committer time, `source` "git", `text` the full message;
- `kind`: "revert" (a revert), "reapply" (a revert of a revert, a re-land), "backport"
  (a cherry-pick recorded with -x), else "commit";
- `tokens`: an estimate, one token per 4 characters of the message (at least 1);
- `entities`: `file:PATH` for each touched file (a renamed file under both names: git is never
  asked for file contents, so a blobless clone imports) unless the commit touches more than
  `max_files` (`MAX_FILES`, 32), `dir:PATH` for each directory above them, `person:Name
  <email>` for the author and, when different, the committer (names and emails as the
  repository's .mailmap gives them; emails lower-cased), and `ticket:ID` for ticket-like
  references in the message (see `tickets()`; none from quoted HTML blocks, such as another
  project's release notes in a dependency bump);
- `links` from what the message says, only to commits emitted earlier: "This reverts commit
  SHA" -> reverts, "cherry picked from commit SHA" -> backport_of, "fixes / fix / fixed SHA" ->
  fixes, "follow-up to SHA" -> follow_up, "refs / references / see SHA" -> references, and
  any other sha the message names ("Regression from SHA", a commit URL) -> references.
  Abbreviated shas (>= 7 hex digits, at least one a-f and one 0-9) are resolved against the
  commits already read; an ambiguous or unknown one is dropped.

`ingest_git(repo, index_dir)` is the CLI's `fastctx ingest git`: it creates the index (or opens
it), computes vectors from the text with the index's encoder and appends in batches; `add`
skips commits already there, so a re-run adds only new ones. Every commit is first checked by
the index's own validation, so one it cannot hold (git takes any committer date, the index only
1970..2200) stops the import before anything is written, naming the commit, unless
`skip_invalid` (`--skip-invalid`) leaves such commits out and lists them in the report.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .encoder import check_match, from_spec, spec_of
from .errors import CorpusError, FastctxError

# A commit touching more files names none of them, only their directories. Such a commit (a
# release gathering its changelog fragments, a tree-wide reformat or rename) shares a rarely
# touched file with each commit that wrote one, so through its files it joined every change of a
# release into one story: a question's answer filled with the release's other changes.
MAX_FILES = 32
SOURCE = "git"
_RS, _US = "\x1e", "\x1f"
_FORMAT = f"--format={_RS}%H{_US}%ct{_US}%aN{_US}%aE{_US}%cN{_US}%cE{_US}%B{_US}"

# ---------------------------------------------------------------------------------- tickets
# Words shaped like Jira keys (ABC-123) that are not tickets.
_NOT_JIRA = frozenset({"UTF", "SHA", "ISO", "RFC", "MD", "CP", "WIN", "X", "TLS", "SSL", "HTTP", "IPV",
                       "PEP", "GCC", "C", "GH", "LATIN", "ARM", "X86", "AMD", "EUC", "KOI", "ECMA"})
_TICKET_PATTERNS = [
    # GitHub / GitLab issue and pull URLs (and their redirecting mirrors, as bots write them)
    re.compile(r"https?://[\w.-]*?(?:github|gitlab)[\w.-]*\.com/([\w.-]+/[\w.-]+)/"
               r"(?:-/)?(?:issues|pull|pulls|merge_requests)/(\d+)"),
    re.compile(r"(?<![\w/#])([\w.-]+/[\w.-]+)#(\d+)\b"),                      # owner/repo#123
    re.compile(r"(?<![\w&/])()#(\d+)\b"),                                     # #123
    re.compile(r"\b()(?:gh|GH)-(\d+)\b"),                                     # gh-123
    re.compile(r"\[ticket:()(\d+)\]"),                                        # [ticket:123] (Trac)
    re.compile(r"\b()(?:[Bb]ug|[Ii]ssue|[Tt]icket|PR|[Pp]ull request)s?\s*#?\s?(\d+)\b"),  # bug 123, issue #123
]
_JIRA = re.compile(r"(?<![\w-])([A-Z][A-Z0-9]{1,9})-(\d{1,7})(?![\w.-]*\d\.\d)\b")
_CVE = re.compile(r"\bCVE-\d{4}-\d{4,7}\b")


# Another project's words quoted in a message (a dependency bump's release notes) and the text of
# HTML links (`<a href="URL">#148</a>`: the number is the URL's, whichever repository that is)
_BLOCKQUOTE = re.compile(r"<blockquote\b.*?(?:</blockquote>|$)", re.I | re.S)
_ANCHOR = re.compile(r"<a\b[^>]*?\bhref=[\"']([^\"']*)[\"'][^>]*>.*?</a>", re.I | re.S)


def _own_words(text: str) -> str:
    """The message less quoted HTML blocks, with each HTML link replaced by its address."""
    if "<" not in text:
        return text
    return _ANCHOR.sub(lambda m: f" {m.group(1)} ", _BLOCKQUOTE.sub(" ", text))


def tickets(text: str, home: Optional[str] = None) -> list[str]:
    """Ticket ids a message mentions, without repeats: `#123`, `gh-123`, `GH-123`,
    `[ticket:123]`, `bug 123`, `issue 123`, issue/pull URLs and `#123` all give `123` (one
    namespace: the repository's own tracker); `owner/repo#123` and URLs into another repository
    than `home` ("owner/repo", or several separated by commas, when known) give `owner/repo#123`;
    Jira keys give `ABC-123`; CVE ids give `CVE-2024-1234`. Quoted HTML blocks (another
    project's release notes in a dependency bump) name no ticket of this one, and an HTML
    link's text is read as its address (`<a href="URL-into-another-repository">#148</a>`)."""
    found: dict[str, None] = {}
    text = _own_words(text)
    homes = {h.strip().lower() for h in home.split(",")} if home else None
    for i, pat in enumerate(_TICKET_PATTERNS):
        for m in pat.finditer(text):
            repo, num = m.group(1), m.group(2)
            own = not repo or (repo.lower() in homes if homes else i == 0)  # a bare URL: ours
            found.setdefault(num if own else f"{repo}#{num}")
    for m in _CVE.finditer(text):
        found.setdefault(m.group(0))
    for m in _JIRA.finditer(text):
        if m.group(1) not in _NOT_JIRA and not m.group(0).startswith("CVE-"):
            found.setdefault(m.group(0))
    return list(found)


def strip_tickets(text: str) -> str:
    """The text with every ticket-like reference `tickets()` finds removed (for experiments
    where the relation must be inferred from the wording)."""
    for pat in _TICKET_PATTERNS[:2]:
        text = pat.sub("", text)
    text = re.sub(r"\b((?:[Bb]ug|[Ii]ssue|[Tt]icket|PR|[Pp]ull request)s?)\s*#?\s?\d+\b", r"\1", text)
    for pat in _TICKET_PATTERNS[2:5]:
        text = pat.sub("", text)
    text = _CVE.sub("", text)
    text = _JIRA.sub(lambda m: "" if m.group(1) not in _NOT_JIRA else m.group(0), text)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)          # "(#123)" leaves "()"
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


# ------------------------------------------------------------------------------------ links
_HEX = r"([0-9a-f]{7,40})\b"
_LINK_PATTERNS = [
    (re.compile(r"This reverts commit " + _HEX, re.I), "reverts"),
    (re.compile(r"cherry[- ]picked from commit " + _HEX, re.I), "backport_of"),
    (re.compile(r"\bfollow[- ]?up (?:to|of|for|on)(?: commit)?:? " + _HEX, re.I), "follow_up"),
    (re.compile(r"\b(?:fix(?:es|ed)?|closes)(?: commit)?:? " + _HEX, re.I), "fixes"),
    (re.compile(r"\b(?:refs?|references?|see(?: also)?|related to)(?: commit)?:? " + _HEX, re.I), "references"),
]
# any other commit the message names ("Regression from SHA", "Before SHA", a commit URL): a
# reference. Digits and letters both, so a word or a number is never read as a sha
_ANY_SHA = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])([0-9a-f]{7,40})(?![0-9A-Za-z])")


class _ShaIndex:
    """Full shas read so far; resolves an abbreviation when exactly one commit has it."""

    def __init__(self) -> None:
        self.by_prefix: dict[str, list[str]] = {}

    def add(self, sha: str) -> None:
        self.by_prefix.setdefault(sha[:7], []).append(sha)

    def resolve(self, abbrev: str) -> Optional[str]:
        hits = [s for s in self.by_prefix.get(abbrev[:7], ()) if s.startswith(abbrev)]
        return hits[0] if len(hits) == 1 else None


def links(message: str, known: _ShaIndex, own: str) -> list[dict]:
    out, seen, named = [], set(), {own}
    for pat, ltype in _LINK_PATTERNS:
        for m in pat.finditer(message):
            to = known.resolve(m.group(1).lower())
            if to is not None and to != own and (to, ltype) not in seen:
                seen.add((to, ltype))
                named.add(to)
                out.append({"to": to, "type": ltype})
    for m in _ANY_SHA.finditer(message):
        to = known.resolve(m.group(1))
        if to is not None and to not in named:
            named.add(to)
            out.append({"to": to, "type": "references"})
    return out


def _kind(message: str, links_: list[dict]) -> str:
    subject = message.split("\n", 1)[0]
    if re.match(r'(Revert "Revert|Reapply|Re-?land|Reland)', subject, re.I):
        return "reapply"
    if subject.startswith("Revert") or any(lk["type"] == "reverts" for lk in links_):
        return "revert"
    if any(lk["type"] == "backport_of" for lk in links_):
        return "backport"
    return "commit"


def _person(name: str, email: str) -> str:
    return f"person:{' '.join(name.split())} <{email.strip().lower()}>"


def _entities(files: list[str], people: list[str], ticket_ids: list[str], max_files: int = MAX_FILES) -> list[str]:
    ents: dict[str, None] = {}
    dirs: dict[str, None] = {}
    if len(files) <= max_files:
        for f in files:
            ents.setdefault(f"file:{f}")
    for f in files:
        parts = f.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.setdefault("dir:" + "/".join(parts[:i]))
    ents.update(dirs)
    for p in people:
        ents.setdefault(p)
    for t in ticket_ids:
        ents.setdefault(f"ticket:{t}")
    return list(ents)


def _check_max_files(max_files) -> None:
    if not isinstance(max_files, int) or isinstance(max_files, bool) or max_files < 1:
        raise CorpusError(f"must be a whole number of at least 1, not {max_files!r}", field="max_files")


def estimate_tokens(text: str) -> int:
    """About 4 characters per model token (English prose and code); at least 1."""
    return max(1, math.ceil(len(text) / 4))


# ------------------------------------------------------------------------------------- git
def _git(repo: Path, *args: str) -> list[str]:
    return ["git", f"--git-dir={repo}" if (repo / "HEAD").is_file() and not (repo / ".git").exists()
            else f"--git-dir={repo / '.git'}", *args]


def _check_repo(repo: Union[str, Path], ref: str) -> Path:
    repo = Path(repo)
    if not repo.is_dir():
        raise CorpusError("not a directory", file=str(repo))
    if not ((repo / ".git").exists() or (repo / "HEAD").is_file()):
        raise CorpusError("not a git repository (no .git, and not a bare repository)", file=str(repo))
    try:
        r = subprocess.run(_git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"),
                           capture_output=True, text=True)
    except FileNotFoundError:
        raise FastctxError("the `git` program is not installed (needed to read git histories)") from None
    if r.returncode != 0:
        raise CorpusError(f"no commit {ref!r} in this repository (empty history or unknown branch)",
                          file=str(repo), field="branch")
    return repo


def count_commits(repo: Union[str, Path], branch: Optional[str] = None) -> int:
    """Non-merge commits reachable from `branch` (HEAD by default)."""
    ref = branch or "HEAD"
    repo = _check_repo(repo, ref)
    out = subprocess.run(_git(repo, "rev-list", "--count", "--no-merges", ref, "--"),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _home(repo: Path) -> Optional[str]:
    """owner/repo of the origin remote when it is a GitHub or GitLab URL."""
    r = subprocess.run(_git(repo, "config", "--get", "remote.origin.url"), capture_output=True, text=True)
    m = re.search(r"(?:github|gitlab)\.com[:/]([\w.-]+/[\w.-]+?)(?:\.git)?/?$", r.stdout.strip())
    return m.group(1) if m else None


def _records(stream) -> Iterator[bytes]:
    """Split `git log` output into one byte string per commit, reading in chunks."""
    buf = b""
    rs = _RS.encode()
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        buf += chunk
        parts = buf.split(rs)
        buf = parts.pop()
        for p in parts:
            if p:
                yield p
    if buf:
        yield buf


def iter_git(repo: Union[str, Path], branch: Optional[str] = None, *, max_commits: Optional[int] = None,
             home: Optional[str] = None, max_files: int = MAX_FILES) -> Iterator[dict]:
    """Yield one orgmem event record per non-merge commit reachable from `branch` (HEAD by
    default), oldest first; `max_commits` keeps the most recent N. `home` ("owner/repo") names
    the repository's own tracker for issue URLs (default: from the origin remote). A commit
    touching more than `max_files` files names none of them (their directories stay)."""
    _check_max_files(max_files)
    ref = branch or "HEAD"
    repo = _check_repo(repo, ref)
    home = home or _home(repo)
    # --no-renames: a renamed file is listed under both names (either is the file's history), and
    # git never reads file contents, so a blobless partial clone imports offline and fast
    cmd = _git(repo, "-c", "core.quotepath=off", "log", "--no-merges", "--no-renames", "--reverse",
               "--encoding=UTF-8", "-z", "--name-only", _FORMAT)
    if max_commits is not None:
        cmd.append(f"--max-count={int(max_commits)}")
    cmd += [ref, "--"]
    known = _ShaIndex()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for raw in _records(proc.stdout):
            rec = raw.decode("utf-8", errors="replace")
            head = rec.split(_US, 6)
            if len(head) < 7:
                raise CorpusError(f"unexpected `git log` output near {rec[:60]!r}", file=str(repo))
            sha, ctime, aname, aemail, cname, cemail, rest = head
            message, _, file_part = rest.rpartition(_US)
            files = [f for f in file_part.split("\0") if f.strip()]
            files = [f.lstrip("\n") for f in files]
            message = message.strip()
            people = [_person(aname, aemail)]
            committer = _person(cname, cemail)
            if committer != people[0]:
                people.append(committer)
            lk = links(message, known, sha)
            known.add(sha)
            yield {"id": sha, "time": int(ctime), "source": SOURCE, "kind": _kind(message, lk),
                   "tokens": estimate_tokens(message),
                   "entities": _entities(files, people, tickets(message, home), max_files),
                   "links": lk, "text": message}
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", errors="replace")
        proc.stderr.close()
        rc = proc.wait()
    if rc != 0:
        raise CorpusError(f"`git log` failed: {err.strip()[:300]}", file=str(repo))


def read_git(repo: Union[str, Path], branch: Optional[str] = None, **kw) -> list[dict]:
    """All of `iter_git`'s records as a list (oldest commit first)."""
    return list(iter_git(repo, branch, **kw))


# ----------------------------------------------------------------------------- into an index
def _embed(enc, records: list[dict]):
    """Vectors of the messages; a message with no words ("." or empty) is embedded from its
    entities and id instead, so that every event has a non-zero vector."""
    import numpy as np
    vecs = enc.encode([r["text"] for r in records])
    for i in np.flatnonzero(~np.linalg.norm(vecs, axis=1).astype(bool)):
        r = records[int(i)]
        vecs[i] = enc.encode([" ".join([*r["entities"], r["id"]])])[0]
    return vecs


_GIT_LINKS = {"reverts", "backport_of", "fixes", "follow_up", "references"}


def _same(rec: dict, ev) -> bool:
    """Whether the stored event `ev` already holds this commit record (vectors aside)."""
    links = {tuple(lk) if not isinstance(lk, dict) else (lk["to"], lk["type"]) for lk in ev.links}
    return (ev.time == rec["time"] and ev.kind == rec["kind"] and ev.tokens == rec["tokens"]
            and ev.text == rec["text"] and set(ev.entities) == set(rec["entities"])
            and {lk for lk in links if lk[1] in _GIT_LINKS} == {(lk["to"], lk["type"]) for lk in rec["links"]})


def _commit_of(repo: Path, ref: str) -> str:
    """The sha `ref` names now, so that the check and the import read the same history even if
    a commit lands in between."""
    out = subprocess.run(_git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"),
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _check_commits(repo: Path, head: str, max_commits: Optional[int], skip_invalid: bool) -> dict[str, str]:
    """{sha: why} of the commits the index would refuse (git takes any committer date, the index
    only 1970..2200), found by the validation `Index.add` runs before anything is written, one
    commit at a time so memory stays as when importing. Unless `skip_invalid`, the first is an
    error naming the repository and the commit."""
    from .corpus import parse_records
    bad: dict[str, str] = {}
    first: Optional[CorpusError] = None
    for rec in iter_git(repo, head, max_commits=max_commits):
        try:
            parse_records([rec])
        except CorpusError as e:
            first = first or e
            bad[rec["id"]] = f"field '{e.field}': {e.message}" if e.field else e.message
    if first is not None and not skip_invalid:
        more = f" ({len(bad) - 1} more commits cannot be indexed either)" if len(bad) > 1 else ""
        raise CorpusError(f"commit {next(iter(bad))}: {first.message}{more}; nothing was written "
                          "(--skip-invalid imports the other commits and lists the ones left out)",
                          file=str(repo), field=first.field)
    return bad


def _open_existing(index_dir: Path, encoder: Optional[str]):
    """The index at `index_dir` for writing, checked to embed with `encoder` when one is given."""
    from .index import Index
    idx = Index(index_dir, writable=True)
    try:
        if encoder is not None:
            check_match(idx.marker.get("encoder"), from_spec(encoder), where=str(index_dir))
        if idx.encoder is None:
            raise FastctxError(f"{index_dir}: the index records no text encoder, so commit messages "
                               f"cannot be embedded; ingest into a new index")
    except BaseException:
        idx.close()
        raise
    return idx


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost directory on the way to `path` that does not exist yet: what creating
    `path` makes (None when `path` exists)."""
    top = None
    while not os.path.lexists(path) and path != path.parent:
        top, path = path, path.parent
    return top


def _remove_new_index(index_dir: Path, top: Optional[Path]) -> None:
    """Undo a failed import into a new index: the directories this call created, or, when the
    (empty) index directory was there before, only what it holds now."""
    if top is not None:
        shutil.rmtree(top, ignore_errors=True)
    elif index_dir.is_dir() and not index_dir.is_symlink():
        for p in index_dir.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _write_failed(e: Exception, index_dir: Path, outcome: str) -> Optional[FastctxError]:
    """A failed write (disk full, no permission) as an error the CLI prints, saying what became
    of the index; None for fastctx's own errors, which pass unchanged."""
    if isinstance(e, OSError) and not isinstance(e, FastctxError):
        return FastctxError(f"{index_dir}: writing failed: {e}; {outcome}")
    return None


def ingest_git(repo: Union[str, Path], index_dir: Union[str, Path], *, encoder: Optional[str] = None,
               branch: Optional[str] = None, batch_size: int = 1000, max_commits: Optional[int] = None,
               skip_invalid: bool = False, progress: Optional[Callable[[int, int], None]] = None,
               max_files: int = MAX_FILES) -> dict:
    """Append the commits of `repo` to the index at `index_dir`, creating it (with `encoder`,
    default "hashing") when it does not exist. Returns {"commits", "added", "skipped",
    "updated", "links", "dangling_links", "left_out"}; `progress(done, total)` is called per batch.

    Every commit is checked before anything is written: one the index cannot hold (a committer
    date after 2200) is an error naming it, or with `skip_invalid` is left out and listed in
    "left_out" ({sha: why}). An error after this call created the index removes it again; in an
    index that was there, the batches added before the error stay (a re-run adds the rest)."""
    from .errors import IndexExistsError
    from .index import INDEX_MARKER, Index
    _check_max_files(max_files)
    index_dir = Path(index_dir)
    repo = _check_repo(repo, branch or "HEAD")
    head = _commit_of(repo, branch or "HEAD")
    run = dict(repo=repo, head=head, batch_size=batch_size, max_commits=max_commits, max_files=max_files,
               progress=progress)
    if (index_dir / INDEX_MARKER).exists():
        with _open_existing(index_dir, encoder) as idx:
            left_out = _check_commits(repo, head, max_commits, skip_invalid)
            try:
                return _append(idx, left_out=left_out, **run)
            except OSError as e:
                if clear := _write_failed(e, index_dir, "the batches added before stay in the index "
                                                        "(a re-run adds the rest)"):
                    raise clear from e
                raise
    if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())):
        raise FastctxError(f"{index_dir}: exists and is neither empty nor a fastctx index")
    enc = from_spec(encoder or "hashing")
    left_out = _check_commits(repo, head, max_commits, skip_invalid)
    top = _first_missing(index_dir.absolute())
    try:
        with Index.create(index_dir, enc.dim, encoder=spec_of(enc), writable=True) as idx:
            idx.encoder = enc      # the same one the marker records, without loading a model twice
            return _append(idx, left_out=left_out, **run)
    except IndexExistsError:       # another process filled the directory meanwhile: not ours to remove
        raise
    except Exception as e:
        _remove_new_index(index_dir, top)
        if clear := _write_failed(e, index_dir, "the half-made index was removed"):
            raise clear from e
        raise


def _append(idx, *, repo: Path, head: str, batch_size: int, max_commits: Optional[int], max_files: int,
            progress: Optional[Callable[[int, int], None]], left_out: dict[str, str]) -> dict:
    """`ingest_git`'s import into the open index `idx`, in batches of `batch_size` commits."""
    total = count_commits(repo, head) if progress else 0
    if max_commits is not None:
        total = min(total, max_commits)
    report = {"commits": 0, "added": 0, "skipped": 0, "updated": 0, "links": 0, "dangling_links": 0,
              "left_out": left_out}
    pending: list[dict] = []

    def push() -> None:
        # commits already there unchanged are skipped before embedding: cheaper, and a model's
        # vectors may differ in the last bits with the batch around them
        stored = idx.get([r["id"] for r in pending], unrestricted=True)
        todo = [r for r, ev in zip(pending, stored) if ev is None or not _same(r, ev)]
        report["skipped"] += len(pending) - len(todo)
        pending.clear()
        if todo:
            r = idx.add(todo, _embed(idx.encoder, todo), on_existing="upsert")
            report["added"] += r.n_events - r.updated
            report["updated"] += r.updated
            report["skipped"] += r.skipped
            report["links"] += r.n_links
            report["dangling_links"] += r.dangling_links
        if progress:
            progress(report["commits"], total)

    for rec in iter_git(repo, head, max_commits=max_commits, max_files=max_files):
        report["commits"] += 1
        if rec["id"] in left_out:
            continue
        pending.append(rec)
        if len(pending) >= batch_size:
            push()
    if pending:
        push()
    if report["added"] or report["updated"]:
        idx.flush()
    return report
