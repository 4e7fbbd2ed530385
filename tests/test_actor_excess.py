"""Same-actor links only where people work in sittings: `derive.actor_excess` against a plain
reading, and builds and adds that derive the links, or none, by what it measures."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import derived_links
from fastctx.cli import main
from fastctx.derive import actor_excess
from fastctx.index import Index, build
from fastctx.params import BuildParams

T0, HOUR, DAY = 1_704_067_200, 3_600, 86_400


def _reference(times, mentions, w):
    """Both chance readings by plain loops over every pair (the docstring of actor_excess)."""
    by = {}
    for a, r in mentions:
        by.setdefault(a, []).append(times[r])
    n_all = len(times)
    close = steady_expected = observed = busy_expected = 0.0
    for ts in by.values():
        ts, n = sorted(ts), len(ts)
        close += sum(b - a <= w for a, b in zip(ts, ts[1:]))
        span = max(ts[-1] - ts[0], w, 1)
        steady_expected += (n - 1) * (1 - math.exp(-(n - 1) * w / span))
        for i, t in enumerate(ts):
            observed += sum(abs(u - t) <= w for j, u in enumerate(ts) if j != i)
            busy_expected += (sum(abs(u - t) <= w for u in times) - 1) * (n - 1) / (n_all - 1)

    def beyond(o, e):
        high = o + 2 * math.sqrt(o)
        return max(high - e, 0) / high if high else 0.0
    if not observed:
        return 1.0
    return min(max(beyond(close, steady_expected), beyond(observed, busy_expected)), 1.0)


@pytest.mark.parametrize("seed", range(40))
def test_actor_excess_matches_a_plain_reading(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 250)
    coarse = rng.choice([1, 600, HOUR])          # coarse stamps: runs of one time
    times = [T0 + rng.randint(0, rng.choice([3, 30, 300]) * HOUR) // coarse * coarse for _ in range(n)]
    actors = rng.randint(1, 6)
    mentions = sorted({(rng.randrange(actors), rng.randrange(n)) for _ in range(rng.randint(0, 2 * n))})
    w = rng.choice([0, 600, HOUR, 6 * HOUR])
    got = actor_excess(np.array(times, np.int64), np.array([a for a, _ in mentions], np.int64),
                       np.array([r for _, r in mentions], np.int64), w)
    assert got == pytest.approx(_reference(times, mentions, w), abs=1e-9)
    assert 0.0 <= got <= 1.0


def _events(sittings: bool, n=2000, people=20, seed=5):
    """Commits by `people` people over 30 days: at random times, or in sittings (runs of 2-6
    commits of one person a few minutes apart, the runs at random times)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        who, t = rng.randrange(people), T0 + rng.randint(0, 30 * DAY)
        for _ in range(rng.randint(2, 6) if sittings else 1):
            out.append({"id": f"e{len(out):05d}", "time": t, "source": "git", "kind": "commit",
                        "text": f"change {len(out)}", "entities": [f"person:p{who}", "service:pay"]})
            t += rng.randint(60, 900)
    return out[:n]


def _same_actor_links(idx, ids) -> int:
    return sum(map(len, derived_links(idx, ids, "same_actor").values()))


def _built_actor_k(path) -> int:
    return json.loads((path / "shard-000" / "MANIFEST.json").read_text())["params"]["actor_k"]


def test_people_at_random_times_get_no_same_actor_links_at_build_or_add(tmp_path):
    events = _events(sittings=False)
    idx, report = build(events[:1500], tmp_path / "i")
    assert report.actor_excess < BuildParams.actor_min_excess
    assert _built_actor_k(tmp_path / "i") == 0
    assert _same_actor_links(idx, [e["id"] for e in events[:1500]]) == 0
    # an add follows the build's finding, even for a run of one person's commits
    t = max(e["time"] for e in events) + DAY
    run = [{**events[0], "id": f"run{j}", "time": t + 300 * j, "text": f"run step {j}"} for j in range(4)]
    idx.add(events[1500:] + run)
    assert _same_actor_links(idx, [e["id"] for e in events[1500:] + run]) == 0
    # asked for always, the same events are linked
    always, report = build(events, tmp_path / "always", params=BuildParams(actor_min_excess=0))
    assert report.actor_excess == pytest.approx(actor_excess_of(events))
    assert _built_actor_k(tmp_path / "always") == BuildParams.actor_k
    assert _same_actor_links(always, [e["id"] for e in events]) > 100


def actor_excess_of(events) -> float:
    names = sorted({x for e in events for x in e["entities"] if x.startswith("person:")})
    code = {nm: i for i, nm in enumerate(names)}
    mentions = [(code[x], r) for r, e in enumerate(events) for x in e["entities"] if x in code]
    return actor_excess(np.array([e["time"] for e in events], np.int64), np.array([a for a, _ in mentions]),
                        np.array([r for _, r in mentions]), HOUR)


def test_people_in_sittings_keep_their_same_actor_links_at_build_and_add(tmp_path):
    events = sorted(_events(sittings=True), key=lambda e: (e["time"], e["id"]))
    one, report = build(events, tmp_path / "one")
    assert report.actor_excess > BuildParams.actor_min_excess
    assert _built_actor_k(tmp_path / "one") == BuildParams.actor_k
    inc, _ = build(events[:1000], tmp_path / "inc")
    inc.add(events[1000:])
    added = [e["id"] for e in events[1000:]]
    assert derived_links(inc, added, "same_actor") == derived_links(one, added, "same_actor")
    assert _same_actor_links(one, added) > 500


def test_the_build_command_says_when_it_derives_no_same_actor_links(tmp_path):
    for sittings in (False, True):
        corpus = tmp_path / f"c{sittings}.jsonl"
        corpus.write_text("".join(json.dumps(e) + "\n" for e in _events(sittings, n=800)))
        out = CliRunner().invoke(main, ["build", str(corpus), str(tmp_path / f"i{sittings}"), "--quiet"])
        assert out.exit_code == 0, out.output
        assert ("no same-actor links" in out.output) == (not sittings)


def test_an_index_without_a_recorded_finding_derives_same_actor_links_at_add(tmp_path):
    """A build from before the finding was recorded (no actor_k in its manifest) adds as before."""
    events = _events(sittings=False, n=600)
    build(events[:500], tmp_path / "i", params=BuildParams(actor_min_excess=0))
    path = tmp_path / "i" / "shard-000" / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    del manifest["params"]["actor_k"]
    from fastctx.format import write_manifest
    write_manifest(tmp_path / "i" / "shard-000", manifest)
    idx = Index(tmp_path / "i")
    idx.add(events[500:])
    assert _same_actor_links(idx, [e["id"] for e in events[500:]]) > 0


def test_actor_min_excess_is_a_share():
    with pytest.raises(ValueError, match="actor_min_excess"):
        BuildParams(actor_min_excess=1.5)
    with pytest.raises(ValueError, match="actor_min_excess"):
        BuildParams(actor_min_excess=-0.1)
