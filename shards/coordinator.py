"""The coordinator: the causal engine of fastctx/answer.py over shard servers.

`Coordinator.query()` runs `Engine.run` unchanged over a `DistributedGraph`, a per-query
`GraphAccess` whose calls become batched shard stages:

* seeds: ``Search`` on every shard at once, k-way merge by (score desc, global row asc): the
  one-shard tie-break, since global rows are the rows of a one-shard build;
* per-row attributes: ``Fetch`` grouped by owner shard (owners are learned with every row);
* expansion: the kernel's best-first search replayed here in Python, every candidate head's
  search advancing in lockstep. A search that needs the neighbours of a row it pops pauses;
  when all are paused or done, one *wave* fetches the neighbour lists of the paused rows plus
  the best `prefetch` queued rows of every search: ``Expand`` on the owner shards (explicit
  links in and out, checked shard-side, with their visit positions; the row's entities with
  global df and holder shards; the owner's part of each entity walk), then ``Expand`` on the
  other holder shards of those entities (their part of the walks). The coordinator merges the
  walk parts by (time, global row) and replays the kernel's walk (nearest first, both sides
  merged by |dt| with ties to the lower side, max_per_entity eligible entries, hub window),
  so every neighbour gets the kernel's weight, order and edge-visit position; budget cuts are
  applied exactly as the kernel applies them. Results equal the kernel's on a one-shard build.

The coordinator holds no index state (only a cache of shard stats), so several can run side by
side behind a load balancer.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import replace
from typing import Optional, Sequence, Union

import numpy as np

from fastctx.answer import DAY, Answer, AnswerParams, Engine, check_query, link_weights
from fastctx.derive import query_words
from fastctx.encoder import from_record
from fastctx.errors import AccessDeniedError, InvalidQueryError, ShardUnavailableError
from fastctx.filters import Filters
from fastctx.types import Event
from fastctx.view import View

from .transport import CallStats, Cluster

_NEG_INF = float("-inf")


class DistributedGraph:
    """`GraphAccess` over a `Cluster` for one query (it caches what it learns)."""

    def __init__(self, coord: "Coordinator", deadline: float, require_all: bool = False):
        self.c, self.params, self.deadline, self.require_all = coord, coord.params, deadline, require_all
        self.cluster: Cluster = coord.cluster
        self.n = coord.n_global
        self.missing: set[int] = set()
        self.stats = CallStats()
        self.owner: dict[int, int] = {}
        self.cache: dict[str, dict] = {f: {} for f in ("time", "tokens", "sup", "slot", "id", "rev", "vector",
                                                         "visible")}
        self.nb: dict[int, tuple[list, int]] = {}
        self.waves = 0
        p = self.params
        if p.expansion != "best_first":
            raise InvalidQueryError(f"the coordinator runs expansion='best_first' only, got {p.expansion!r}")
        self.lw = [float(x) for x in link_weights(p).tolist()]
        self.ts = float(p.time_scale_days * DAY)
        self.view = View()
        self.vmsg: Optional[dict] = None   # the view on the wire (None: unrestricted)
        self.text: Optional[str] = None    # the query's text and type (what the seed round asks)
        self.qtype = "chain"
        self._lex: Optional[tuple] = None  # lexical seeds answered by the seed round

    def for_view(self, view: View) -> "DistributedGraph":
        """One graph per query: the view travels with every shard request; shards never send
        what it hides, and link targets are checked before they are walked."""
        self.view = view
        self.vmsg = view.to_msg() if view.restricts else None
        return self

    def _with_view(self, req: dict) -> dict:
        if self.vmsg is not None:
            req["view"] = self.vmsg
        return req

    def visible(self, rows) -> np.ndarray:
        rows = [int(r) for r in rows]
        if self.vmsg is None:
            return np.ones(len(rows), bool)
        return np.asarray(self._get("visible", rows, 0), bool)

    # -- transport -----------------------------------------------------------------------------
    def _scatter(self, method: str, reqs: dict[int, dict]) -> dict[int, dict]:
        reqs = {k: r for k, r in reqs.items() if k not in self.missing}
        if not reqs:
            return {}
        res, failed = self.cluster.scatter(method, reqs, self.deadline, self.stats)
        if failed:
            self.missing |= failed
            if self.require_all:
                raise ShardUnavailableError(f"shard(s) {sorted(self.missing)} did not answer "
                                            f"(every replica failed or timed out)")
        return res

    def _by_owner(self, rows) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        owner = self.owner
        for r in rows:
            k = owner[r]
            lst = out.get(k)
            if lst is None:
                out[k] = [r]
            else:
                lst.append(r)
        return out

    def _fetch(self, rows: Sequence[int], fields: list[str], extra: Optional[dict] = None) -> None:
        """Fill the caches of `fields` for `rows` (one Fetch per owner shard)."""
        rows = set(map(int, rows))
        need = set()
        for f in fields:
            need.update(rows.difference(self.cache[f].keys()))
        need = sorted(need)
        if not need:
            return
        groups = self._by_owner(need)
        res = self._scatter("Fetch", {k: self._with_view({"rows": np.asarray(v, np.int64), "fields": fields})
                                      for k, v in groups.items()})
        for k, v in groups.items():
            out = res.get(k)
            if out is None:
                continue
            for f in fields:
                if f == "sup":
                    for r, b, a, s in zip(v, out["sup_by"].tolist(), out["sup_at"].tolist(),
                                          out["sup_shard"].tolist()):
                        self.cache["sup"][r] = (b, a)
                        if b >= 0:
                            self.owner[b] = s
                elif f == "rev":
                    ptr, rr = out["rev_ptr"], out["rev_rows"].tolist()
                    rt, rs, ra = out["rev_time"].tolist(), out["rev_shard"].tolist(), out["rev_at"].tolist()
                    for j, r in enumerate(v):
                        lst = []
                        for x in range(int(ptr[j]), int(ptr[j + 1])):
                            lst.append(rr[x])
                            self.owner[rr[x]] = rs[x]
                            self.cache["time"][rr[x]] = rt[x]
                            self.cache["sup"][rr[x]] = (r, ra[x])
                        self.cache["rev"][r] = lst
                elif f == "vector":
                    for r, vec in zip(v, out["vector"]):
                        self.cache.setdefault("vector", {})[r] = vec
                else:
                    vals = out[f]
                    vals = vals.tolist() if isinstance(vals, np.ndarray) else vals
                    for r, x in zip(v, vals):
                        self.cache[f][r] = x

    def _get(self, field: str, rows, default):
        rows = [int(r) for r in rows]
        self._fetch(rows, [field])
        c = self.cache.setdefault(field, {})
        return [c.get(r, default) for r in rows]

    # -- GraphAccess ---------------------------------------------------------------------------
    def seeds(self, q, k, filters: Filters):
        """One Search round: the vector hits, the lexical hits of the query's words (asked by
        `lexical` next) and, for a chain query (whose head choice reads every hit's vector and
        time), the vectors and times of each shard's first hits: about its share of the global
        top k plus a margin. Hits past that margin are fetched when read."""
        req = self._with_view({"vectors": np.asarray(q, np.float32)[None, :], "k": int(k), "filters": filters.to_dict(),
                               "as_of": filters.as_of})
        names = query_words(self.text)
        if names:
            req.update(self._lexical_req(names, self.params.lexical_k))
            req["lex_k"] = req.pop("k")
            req["k"] = int(k)
        n_sh = len(self.cluster.shards)
        if self.qtype == "chain":
            req["hit_vectors"] = min(int(k), -(-5 * int(k) // (4 * n_sh)) + 16) if n_sh > 1 else int(k)
        res = self._scatter("Search", {s: req for s in self.cluster.shards})
        cand = []
        for s, out in res.items():
            c = int(out["counts"][0])
            for r, sc in zip(out["rows"][0, :c].tolist(), out["scores"][0, :c].tolist()):
                cand.append((-sc, r, s))
        cand.sort()
        cand = cand[:k]
        for _, r, s in cand:
            self.owner[r] = s
        keep = {r for _, r, _ in cand}
        vc, tc = self.cache["vector"], self.cache["time"]
        for s, out in res.items():
            if "vectors" in out:
                m = len(out["vectors"])
                for r, vec, t in zip(out["rows"][0, :m].tolist(), out["vectors"], out["times"].tolist()):
                    if r in keep:
                        vc[r], tc[r] = vec, t
        if names:
            self._lex = (list(names), self.params.lexical_k, filters,
                         self._merge_lexical({s: {"rows": out["lex_rows"], "scores": out["lex_scores"]}
                                              for s, out in res.items() if "lex_rows" in out},
                                             self.params.lexical_k))
        rows = np.array([r for _, r, _ in cand], np.int64)
        sims = np.array([np.float32(-sc) for sc, _, _ in cand], np.float32).astype(np.float64)
        return rows, sims

    def _lexical_req(self, names, k) -> dict:
        st = self.c.shard_stats()
        avg = sum(int(v.get("doc_len_sum", 0)) for v in st["shards"].values()) / max(self.n, 1)
        p = self.params
        return {"words": list(names), "k": int(k), "avg_len": float(avg),
                "bm25": np.array([p.bm25_k1, p.bm25_b], np.float64)}

    def _merge_lexical(self, res: dict, k: int):
        cand = []
        for s, out in res.items():
            for r, sc in zip(out["rows"].tolist(), out["scores"].tolist()):
                cand.append((-sc, r, s))
        cand.sort()
        cand = cand[:k]
        for _, r, s in cand:
            self.owner[r] = s
        return np.array([r for _, r, _ in cand], np.int64), np.array([-sc for sc, _, _ in cand], np.float64)

    def lexical(self, names, k, filters: Filters):
        """Lexical seeds: each shard scores its own postings with the corpus-wide df. Usually
        answered by the seed round already (same words, k and filters)."""
        if self._lex is not None and self._lex[:3] == (list(names), int(k), filters):
            return self._lex[3]
        req = self._with_view({**self._lexical_req(names, k), "filters": filters.to_dict(), "as_of": filters.as_of})
        return self._merge_lexical(self._scatter("Search", {s: req for s in self.cluster.shards}), int(k))

    def times(self, rows):
        return np.asarray(self._get("time", rows, 0), np.int64)

    def tokens(self, rows):
        # rows of a missing shard never fit a budget
        return np.asarray(self._get("tokens", rows, np.iinfo(np.int64).max // 4), np.int64)

    def vectors(self, rows):
        rows = [int(r) for r in rows]
        self._fetch(rows, ["vector", "time"])
        c = self.cache.setdefault("vector", {})
        dim = self.c.dim
        return np.stack([np.asarray(c.get(r, np.zeros(dim, np.float32)), np.float32) for r in rows]) \
            if rows else np.zeros((0, dim), np.float32)

    def supersession(self, rows):
        got = self._get("sup", rows, (-1, -1))
        by = np.array([b if b < 0 or self.owner.get(b) not in self.missing else -1 for b, _ in got], np.int64)
        return by, np.array([a for _, a in got], np.int64)

    def superseded(self, rows):
        out = [[x for x in lst if self.owner.get(x) not in self.missing] for lst in self._get("rev", rows, [])]
        if self.vmsg is not None:
            flat = sorted({x for lst in out for x in lst})
            ok = dict(zip(flat, self.visible(flat).tolist()))
            out = [[x for x in lst if ok[x]] for lst in out]
        return out

    def slot_entity(self, rows):
        return np.asarray(self._get("slot", rows, -1), np.int64)

    def ids(self, rows):
        return self._get("id", rows, "?")

    def entity_names(self, pairs):
        groups: dict[int, list[tuple[int, int]]] = {}
        for r, e in pairs:
            groups.setdefault(self.owner[r], []).append((r, e))
        res = self._scatter("Fetch", {k: {"rows": np.array([r for r, _ in v], np.int64), "fields": ["entity_names"],
                                          "entities": np.array([e for _, e in v], np.int64)}
                                      for k, v in groups.items()})
        names = {}
        for k, v in groups.items():
            for (r, e), nm in zip(v, (res.get(k) or {}).get("entity_names", [None] * len(v))):
                names[(r, e)] = nm if nm is not None else f"entity#{e}"
        return [names[(r, e)] for r, e in pairs]

    def events(self, rows, scores, as_of):
        rows = [int(r) for r in rows]
        groups = self._by_owner(rows)
        res = self._scatter("Fetch", {k: self._with_view({"rows": np.asarray(v, np.int64),
                                                          "fields": ["payload", "sup"]})
                                      for k, v in groups.items()})
        got: dict[int, tuple] = {}
        for k, v in groups.items():
            out = res.get(k)
            if out is None:
                continue
            for j, r in enumerate(v):
                b, a, s = int(out["sup_by"][j]), int(out["sup_at"][j]), int(out["sup_shard"][j])
                if b >= 0:
                    self.owner[b] = s
                if out["payload"][j] is not None:
                    got[r] = (out["payload"][j], b, a)
        sup = sorted({b for _, b, a in got.values() if b >= 0 and (as_of is None or a <= as_of)
                      and self.owner.get(b) not in self.missing})
        if sup and self.vmsg is not None:   # a superseder the asker cannot see is not named
            sup = [b for b, ok in zip(sup, self.visible(sup).tolist()) if ok]
        sup_ids = dict(zip(sup, self.ids(sup))) if sup else {}
        out_events: list[Optional[Event]] = []
        for r, sc in zip(rows, scores):
            if r not in got:
                out_events.append(None)
                continue
            pl, b, a = got[r]
            e = Event(id=pl["id"], time=int(pl["time"]), source=pl["source"], kind=pl["kind"],
                      tokens=int(pl["tokens"]), score=float(sc), text=pl.get("text"),
                      entities=list(pl.get("entities") or []), links=list(pl.get("links") or []),
                      attrs=dict(pl.get("attrs") or {}), shard=self.owner[r], row=r)
            if b in sup_ids:
                e.superseded_by, e.superseded_at = sup_ids[b], a
            out_events.append(e)
        return out_events

    # -- expansion -----------------------------------------------------------------------------
    def _params_msg(self, direction, t_lo, t_hi, as_of) -> dict:
        p = self.params
        return {"direction": int(direction), "t_lo": int(t_lo), "t_hi": int(t_hi), "as_of": as_of,
                "link_weight": link_weights(p).astype(np.float64), "hub_postings": int(p.hub_postings),
                "hub_window_s": int(p.hub_window_days * DAY), "max_per_entity": int(p.max_per_entity),
                "entity_weight": float(p.entity_weight), "entity_max_df": int(p.entity_max_df),
                "entity_max_share": float(p.entity_max_share), "max_edge_visits": int(p.max_edge_visits),
                "term_weight": float(p.term_weight),
                **({"view": self.vmsg} if self.vmsg is not None else {})}

    def _wave(self, rows: list[int], pmsg: dict) -> None:
        """Fetch the full neighbour enumeration (kernel order, with visit positions) of `rows`."""
        self.waves += 1
        rows = sorted(set(rows))
        t_of = self.cache["time"]
        groups = self._by_owner(rows)
        res = self._scatter("Expand", {k: {"rows": np.asarray(v, np.int64), "params": pmsg}
                                       for k, v in groups.items()})
        parts: dict[tuple[int, int], list] = {}   # (u, gid) -> walk parts
        todo = []                                  # (u, owner, links, total, entity entries)
        need: dict[int, set] = {}                  # holder shard -> {(u, gid)}
        for k, v in groups.items():
            out = res.get(k)
            if out is None:
                for u in v:
                    self.nb[u] = ([], 0)
                continue
            lp, ep, hp, wp = out["l_ptr"], out["e_ptr"], out["e_hold_ptr"], out["ew_ptr"]
            for j, u in enumerate(v):
                links = []
                for x in range(int(lp[j]), int(lp[j + 1])):
                    vv = int(out["l_v"][x])
                    self.owner[vv] = int(out["l_shard"][x])
                    t_of[vv] = int(out["l_time"][x])
                    t = int(out["l_type"][x])
                    links.append((vv, self.lw[t], 1, t, int(out["l_pos"][x])))
                ents = []
                for x in range(int(ep[j]), int(ep[j + 1])):
                    gid, w_e = int(out["e_gid"][x]), float(out["e_w"][x])   # the owner's weight
                    ents.append((gid, w_e))
                    key = (u, gid)
                    if key not in parts:
                        a, b = int(wp[x]), int(wp[x + 1])
                        parts[key] = [(out["ew_rows"][a:b], out["ew_time"][a:b], out["ew_elig"][a:b],
                                       out["ew_side"][a:b], k)]
                        for h in out["e_hold"][int(hp[x]):int(hp[x + 1])].tolist():
                            if h != k and h not in self.missing:
                                need.setdefault(h, set()).add(key)
                todo.append((u, links, int(out["l_total"][j]), ents))
        if self.vmsg is not None:   # never walk through a link target the asker cannot see
            targets = sorted({e[0] for _, links, _, _ in todo for e in links})
            ok = dict(zip(targets, self.visible(targets).tolist()))
            todo = [(u, [e for e in links if ok[e[0]]], total, ents) for u, links, total, ents in todo]
        if need:
            reqs = {}
            order = {}
            for h, keys in need.items():
                ks = sorted(keys)
                order[h] = ks
                reqs[h] = {"walk_u": np.array([u for u, _ in ks], np.int64),
                           "walk_t": np.array([t_of[u] for u, _ in ks], np.int64),
                           "walk_e": np.array([e for _, e in ks], np.int64), "params": pmsg}
            res2 = self._scatter("Expand", reqs)
            for h, ks in order.items():
                out = res2.get(h)
                if out is None:
                    continue
                wp = out["w_ptr"]
                for j, key in enumerate(ks):
                    a, b = int(wp[j]), int(wp[j + 1])
                    parts[key].append((out["w_rows"][a:b], out["w_time"][a:b], out["w_elig"][a:b],
                                       out["w_side"][a:b], h))
        mpe = pmsg["max_per_entity"]
        for u, links, pos, ents in todo:
            t_u = t_of[u]
            entries = list(links)
            for gid, w_e in ents:
                if not w_e > 0.0 or mpe <= 0:
                    continue
                lo, hi = [], []
                for rws, tms, elg, sd, shard in parts[(u, gid)]:
                    for r, t, e, s in zip(rws.tolist(), tms.tolist(), elg.tolist(), sd.tolist()):
                        (lo if s == 0 else hi).append((t, r, e, shard))
                lo.sort(reverse=True)
                hi.sort()
                i = j = taken = 0
                while taken < mpe and (i < len(lo) or j < len(hi)):
                    pos += 1
                    d_lo = abs(t_u - lo[i][0]) if i < len(lo) else -1
                    d_hi = abs(hi[j][0] - t_u) if j < len(hi) else -1
                    if d_lo >= 0 and (d_hi < 0 or d_lo <= d_hi):
                        t, r, e, shard = lo[i]
                        dt = d_lo
                        i += 1
                    else:
                        t, r, e, shard = hi[j]
                        dt = d_hi
                        j += 1
                    if not e:
                        continue
                    taken += 1
                    self.owner[r] = shard
                    t_of[r] = t
                    decay = 1.0
                    if self.ts > 0.0:
                        decay = 1.0 / (1.0 + float(dt) / self.ts)
                    entries.append((r, w_e * decay, 2, gid, pos))
            self.nb[u] = (entries, pos)

    def _search(self, seeds, seed_scores, direction, t_lo, t_hi, as_of):
        """The kernel's expand_best_first as a generator: yields (row needed, heap) when it must
        expand a row whose neighbours are not fetched yet; returns the result arrays."""
        p = self.params
        min_score = float(p.min_score)
        t_of = self.cache["time"]
        nodes: dict[int, list] = {}   # row -> [best, parent, kind, via, hops, final]
        heap: list = []
        for r, s in zip(np.asarray(seeds).tolist(), np.asarray(seed_scores, np.float32).tolist()):
            sc = float(s)
            tr = t_of.get(r)
            if not 0 <= r < self.n or tr is None or (as_of is not None and tr > as_of) or not t_lo <= tr <= t_hi:
                continue
            if self.owner.get(r) in self.missing or not sc >= min_score:
                continue
            nd = nodes.get(r)
            if nd is None:
                nd = nodes[r] = [_NEG_INF, -1, 0, -1, 0, False]
            if sc > nd[0]:
                nd[0] = sc
                heapq.heappush(heap, (-sc, r))
        out: list[int] = []
        examined, budget_hit = 0, False
        while heap and len(out) < p.max_results:
            if -heap[0][0] < min_score:
                break
            neg, u = heapq.heappop(heap)
            nu = nodes[u]
            if nu[5]:
                continue
            nu[5] = True
            out.append(u)
            if len(out) >= p.max_results or budget_hit or nu[4] >= p.max_hops:
                continue
            if u not in self.nb:
                yield u, heap, nodes
            entries, total = self.nb[u]
            budget = p.max_edge_visits - examined
            examined += min(total, budget)
            if total > budget:
                budget_hit = True
            sc_u = -neg
            hops_v = nu[4] + 1
            for v, w, kind, via, pos in entries:
                if pos > budget:
                    break
                cand = sc_u * w
                if cand < min_score:
                    continue
                nv = nodes.get(v)
                if nv is None:
                    nv = nodes[v] = [_NEG_INF, -1, -1, -1, 0, False]
                if nv[5] or not cand > nv[0]:
                    continue
                nv[0], nv[1], nv[2], nv[3], nv[4] = cand, u, kind, via, hops_v
                heapq.heappush(heap, (-cand, v))
        return (np.array(out, np.int64), np.array([nodes[r][0] for r in out], np.float32),
                np.array([nodes[r][1] for r in out], np.int64), np.array([nodes[r][2] for r in out], np.int8),
                np.array([nodes[r][3] for r in out], np.int64), np.array([nodes[r][4] for r in out], np.int32))

    def expand(self, seeds, seed_scores, direction, t_lo, t_hi, as_of):
        p = self.params
        pmsg = self._params_msg(direction, t_lo, t_hi, as_of)
        seeds = np.asarray(seeds, np.int64)
        self.times(seeds.tolist())  # seed checks need their times
        gens = [self._search(seeds[i:i + 1], np.asarray(seed_scores)[i:i + 1], direction, t_lo, t_hi, as_of)
                for i in range(len(seeds))]
        results: list = [None] * len(gens)
        blocked: dict[int, tuple] = {}
        active = list(range(len(gens)))
        for i in active:
            try:
                blocked[i] = next(gens[i])
            except StopIteration as st:
                results[i] = st.value
        while blocked:
            need = {u for u, _, _ in blocked.values()}
            if self.c.prefetch > 0:
                for u, heap, nodes in blocked.values():
                    extra = 0
                    for neg, v in heapq.nsmallest(self.c.prefetch * 2, heap):
                        nv = nodes[v]
                        if nv[5] or v in self.nb or v in need or nv[4] >= p.max_hops or -neg < p.min_score:
                            continue
                        need.add(v)
                        extra += 1
                        if extra >= self.c.prefetch:
                            break
            self._wave([u for u in need if u not in self.nb], pmsg)
            for i in list(blocked):
                try:
                    blocked[i] = gens[i].send(None)
                except StopIteration as st:
                    results[i] = st.value
                    del blocked[i]
        return results


class Coordinator:
    """Answers causal queries over a `Cluster` of shards (in-process or remote), with the
    embedded engine's `query()` API. Stateless apart from a cache of shard stats."""

    def __init__(self, cluster: Cluster, *, params: AnswerParams = AnswerParams(), encoder=None,
                 deadline_s: float = 10.0, prefetch: int = 64):
        self.cluster, self.params, self.deadline_s, self.prefetch = cluster, params, deadline_s, prefetch
        self.engine = Engine(params=params, graph=_NoGraph())
        self._encoder = encoder
        self._stats: Optional[dict] = None
        self.last_graph: Optional[DistributedGraph] = None

    # -- shard stats ---------------------------------------------------------------------------
    def shard_stats(self, deadline_s: float = 5.0) -> dict:
        if self._stats is None:
            res, failed = self.cluster.scatter("Stats", {k: {} for k in self.cluster.shards},
                                               time.monotonic() + deadline_s)
            if not res:
                raise ShardUnavailableError(f"no shard answered Stats (shards {sorted(failed)})")
            one = next(iter(res.values()))
            n_shards = int(one["n_shards"])
            if set(self.cluster.shards) != set(range(n_shards)):
                raise InvalidQueryError(f"the index has {n_shards} shards; the coordinator was given "
                                        f"{self.cluster.shards}")
            self._stats = {"n_global": int(one["n_global"]), "n_shards": n_shards, "dim": int(one["dim"]),
                           "encoder": one.get("encoder"), "shards": {k: v for k, v in res.items()},
                           "acl": any(bool(v.get("acl")) for v in res.values())}
        return self._stats

    @property
    def n_global(self) -> int:
        return self.shard_stats()["n_global"]

    @property
    def dim(self) -> int:
        return self.shard_stats()["dim"]

    @property
    def encoder(self):
        if self._encoder is None:
            spec = self.shard_stats().get("encoder")
            if isinstance(spec, dict):   # the encoder the index records (a model is loaded once)
                self._encoder = from_record(spec)
        return self._encoder

    def _vector(self, query) -> np.ndarray:
        if isinstance(query, str):
            if self.encoder is None:
                raise InvalidQueryError("this index has no text encoder recorded; query with a vector")
            return self.encoder.encode([query]).astype(np.float32)[0]
        try:
            q = np.asarray(query, np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidQueryError(f"query must be text or a float vector: {e}") from None
        if q.ndim != 1 or q.shape[0] != self.dim:
            raise InvalidQueryError(f"query vector shape {q.shape}: expected ({self.dim},)")
        if not np.isfinite(q).all():
            raise InvalidQueryError("query vector contains NaN or inf")
        norm = float(np.linalg.norm(q))
        if norm == 0:
            raise InvalidQueryError("query vector is all zeros")
        return np.ascontiguousarray(q / norm, np.float32)

    # -- queries -------------------------------------------------------------------------------
    def query(self, query: Union[str, np.ndarray], *, type: str = "chain", filters: Optional[Filters] = None,
              as_of: Optional[int] = None, direction: str = "back", budget_tokens: int = 4000,
              require_all: bool = False, deadline_s: Optional[float] = None, scope=None, principals=None,
              unrestricted: bool = False, fill: bool = False, text: Optional[str] = None, **filter_kw) -> Answer:
        """Same arguments and answer as `Index.query`, plus `require_all` (fail instead of a
        partial answer when a shard is down) and `deadline_s` (the whole query's deadline).
        The answer's `partial` / `missing_shards` say which shards did not contribute."""
        view = View.make(scope, principals)
        if view.principals is None and not unrestricted and self.shard_stats().get("acl"):
            raise AccessDeniedError("this index holds access lists; pass principals=[...] (who asks) "
                                    "or unrestricted=True")
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters or Filters.from_dict({k: v for k, v in filter_kw.items()})
        if as_of is not None:
            f = replace(f, as_of=as_of)
        if type == "as_of" and f.as_of is None:
            raise InvalidQueryError("an as_of query needs as_of=<unix time>")
        check_query(type, direction, budget_tokens)
        t0 = time.perf_counter()
        q = self._vector(query)
        deadline = time.monotonic() + (deadline_s if deadline_s is not None else self.deadline_s)
        g = DistributedGraph(self, deadline, bool(require_all))
        if text is None and isinstance(query, str):
            text = query
        g.text, g.qtype = text, type
        ans = self.engine.run(q, type, f, direction, int(budget_tokens), graph=g, view=view, text=text, fill=fill)
        ans.partial, ans.missing_shards = bool(g.missing), sorted(g.missing)
        ans.timings.update({"total_ms": 1e3 * (time.perf_counter() - t0), "waves": g.waves, "rpcs": g.stats.calls,
                            "bytes_out": g.stats.bytes_out, "bytes_in": g.stats.bytes_in,
                            "failovers": g.stats.failovers, "hedges": g.stats.hedges})
        self.last_graph = g
        return ans

    def query_spec(self, spec: dict, vector: Optional[np.ndarray] = None, **kw) -> Answer:
        f = Filters.from_dict(spec.get("filters"), as_of=spec.get("as_of"))
        q = vector if vector is not None else spec.get("text")
        if q is None:
            raise InvalidQueryError(f"query {spec.get('qid')!r} has neither a vector nor text")
        return self.query(q, type=spec.get("type", "chain"), filters=f, direction=spec.get("direction", "back"),
                          budget_tokens=spec.get("budget_tokens", 4000), scope=spec.get("scope"),
                          principals=spec.get("principals"), text=spec.get("text"), **kw)

    def close(self) -> None:
        self.cluster.close()


class _NoGraph:
    """Placeholder: a coordinator's engine always gets a per-query graph."""
    missing: list = []
