"""Filtered HNSW search over the graph hnswlib saved, read in place as arrays (no hnswlib call).

hnswlib's `saveIndex` layout (hnswalg.h, version 0.8): a 96-byte header, then `count` level-0
records of `size_data_per_element` bytes each ([link count (low 16 bits)] [maxM0 neighbour ids]
[dim float32 vector] [uint64 label]), then per element a uint32 byte size and its upper-level
link lists ((maxM + 1) uint32 per level). Every field is 4-byte aligned, so the level-0 block is
a uint32 matrix [count, size_data_per_element / 4] (and, viewed as float32, holds the vectors
next to their links, as hnswlib reads them).

The walk (`search_filtered`) checks an allowed mask (one byte per label = local row) inside the
graph walk, as hnswlib's filter callable does, without a callback. A node's row is read from its
own record (the label word next to its vector) rather than a separate labels array, and an empty
mask means "all allowed" and is never read: the unfiltered walk touches only the records.
`search_hits` is the same walk answering in the final `Hits` form of a one-segment search.

* plain (``PLAIN``): every reached node is scored and walked, only allowed ones enter
  the result beam. Cheap when most rows are allowed (hnswlib's own filtered search).
* two-hop (``TWO_HOP``, ACORN-1 style, Patel et al. 2024): only allowed nodes are scored
  and walked; a disallowed neighbour is looked through to its own neighbours, so the allowed
  subgraph stays connected when the filter is selective. At most ``maxM0`` new nodes are
  scored per expansion.
* beam (``BEAM``, the filtered search faiss runs with an IDSelector): every reached node is scored and walked and the
  beam of `ef` holds every row, allowed or not: the walk is the unfiltered one, whatever the
  filter; the answer is the k best allowed rows among all scored. Its cost does not grow as the
  allowed fraction falls (the plain walk's does, as it widens until `ef` allowed rows are in the
  beam), but its recall does fall with the fraction, so it needs a wider `ef` for the same recall.

Plain and two-hop stop like hnswlib: when the best unexpanded candidate scores below the worst of
`ef` allowed results; beam when it scores below the worst of the beam and k allowed rows are in
hand (until then every scored node is walked on, so a filter the graph reaches answers k rows,
which faiss's does not promise). With every row allowed the three are the same walk. Scores are inner products (hnswlib's "ip" space is 1 - dot).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import njit

HEADER_BYTES = 96
# the plain walk asks for a neighbour's vector this many neighbours before scoring it (2-3 measured
# ~10% faster than asking for every neighbour's at once, 200k x 384; 6 no better than all at once)
PREFETCH_AHEAD = 2
PLAIN, TWO_HOP, BEAM = 0, 1, 2     # the walk's modes (module doc)


def parse_header(head: bytes) -> dict:
    """The fields of hnswlib's index header (first 96 bytes)."""
    if len(head) < HEADER_BYTES:
        raise ValueError(f"header is {len(head)} bytes, expected {HEADER_BYTES}")
    u64 = np.frombuffer(head[:48], "<u8")
    maxlevel, entry = np.frombuffer(head[48:56], "<i4")
    tail = np.frombuffer(head[56:80], "<u8")
    return {"offset_level0": int(u64[0]), "max_elements": int(u64[1]), "count": int(u64[2]),
            "size_per_element": int(u64[3]), "label_offset": int(u64[4]), "offset_data": int(u64[5]),
            "maxlevel": int(maxlevel), "entry": int(np.uint32(entry)), "maxM": int(tail[0]),
            "maxM0": int(tail[1]), "M": int(tail[2])}


@njit
def upper_offsets(tail, count, maxM):
    """(levels int32 [count], ptr int64 [count]) for the upper-level block `tail` (uint32):
    element i's level-l links (l >= 1) start at tail[ptr[i] + (l - 1) * (maxM + 1)].
    Returns levels[0] = -1 when the block is shorter than its sizes say or a link is out of range
    (a damaged file)."""
    levels = np.zeros(count, np.int32)
    ptr = np.zeros(count, np.int64)
    per = 4 * (maxM + 1)
    pos = 0
    n = tail.shape[0]
    for i in range(count):
        if pos >= n:
            levels[0] = -1
            return levels, ptr
        size = np.int64(tail[pos])
        pos += 1
        if size % per != 0 or pos + size // 4 > n:
            levels[0] = -1
            return levels, ptr
        levels[i] = size // per
        ptr[i] = pos
        for lv in range(levels[i]):          # every upper link a valid node: the walk reads unchecked
            base = pos + lv * (maxM + 1)
            cnt = tail[base] & 0xFFFF
            if cnt > maxM:
                levels[0] = -1
                return levels, ptr
            for t in range(cnt):
                if tail[base + 1 + t] >= count:
                    levels[0] = -1
                    return levels, ptr
        pos += size // 4
    return levels, ptr


@njit
def links_in_range(words, stride, count, maxM0):
    """Whether every level-0 link list holds at most maxM0 ids, each a node of the graph."""
    for i in range(count):
        row = i * stride
        cnt = words[row] & 0xFFFF
        if cnt > maxM0:
            return False
        for t in range(cnt):
            if words[row + 1 + t] >= count:
                return False
    return True


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch arr[idx]'s cache line (LLVM's prefetch; no effect on results): the
    walk asks for every neighbour's vector before scoring the first, as hnswlib does."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])   # read, keep in all cache levels, data
        return context.get_dummy_value()
    return sig, codegen


@njit(fastmath=True)
def _dot(flat, start, q):
    """flat[start:start + dim] . q. Through a slice: indexing `flat[start + j]` directly kept LLVM
    from vectorising the loop (5x slower, measured)."""
    v = flat[start:start + q.shape[0]]
    s = np.float32(0.0)
    for j in range(q.shape[0]):
        s += v[j] * q[j]
    return s


@njit
def _prefetch_vector(flat, start, dim):
    for off in range(0, dim, 16):     # one hint per 64-byte line (all of them: measured fastest)
        _prefetch(flat, start + off)


# One binary min-heap over parallel (score, node) arrays serves both queues: the result beam keeps
# its worst score at the top; the candidates are pushed with negated scores, so their best is on top.
@njit
def _heap_push(hs, hn, size, s, node):
    i = size        # sift the hole up, then write once (the same heap as swapping, fewer stores)
    while i > 0:
        p = (i - 1) >> 1
        if hs[p] <= s:
            break
        hs[i], hn[i] = hs[p], hn[p]
        i = p
    hs[i], hn[i] = s, node
    return size + 1


@njit
def _heap_pop(hs, hn, size):
    size -= 1
    s, node = hs[size], hn[size]     # the last entry, sifted down from the root as a hole
    i = 0
    while True:
        a = 2 * i + 1
        if a >= size:
            break
        m = a
        if a + 1 < size and hs[a + 1] < hs[a]:
            m = a + 1
        if not hs[m] < s:
            break
        hs[i], hn[i] = hs[m], hn[m]
        i = m
    hs[i], hn[i] = s, node
    return size


@njit(fastmath=True)
def _search_one(words, flat, stride, vec_col, label_col, upper, levels, uptr, maxM, maxM0, entry, maxlevel,
                labels, allowed, q, k, ef, mode, visited, tag, cs, cn, rs, rn, fresh, ks, kn, out_rows, out_scores):
    """One query; writes up to k (row, score) pairs best first into out_*; returns how many, or
    -1 when a level-0 link list it reads is damaged (count > maxM0 or an id past the graph).
    An empty `allowed` allows every row (no mask read at all): every mode is then the plain walk."""
    dim = q.shape[0]
    count = visited.shape[0]
    every = allowed.shape[0] == 0
    two_hop = mode == TWO_HOP and not every
    beam = mode == BEAM and not every
    nk = 0                               # the beam mode's allowed results (ks, kn)
    # greedy descent through the upper levels, unfiltered (as hnswlib and ACORN do)
    cur = entry
    cur_s = _dot(flat, cur * stride + vec_col, q)
    for level in range(maxlevel, 0, -1):
        changed = True
        while changed:
            changed = False
            if levels[cur] < level:
                break
            base = uptr[cur] + (level - 1) * (maxM + 1)
            cnt = upper[base] & 0xFFFF
            for t in range(cnt):
                _prefetch_vector(flat, upper[base + 1 + t] * stride + vec_col, dim)
            for t in range(cnt):
                nb = upper[base + 1 + t]
                s = _dot(flat, nb * stride + vec_col, q)
                if s > cur_s:
                    cur_s, cur = s, nb
                    changed = True
    # level 0: best-first search; plain / two-hop: only allowed nodes enter the result beam (rs, rn);
    # beam mode: every node does, and the allowed ones also the answer heap (ks, kn)
    nc = 0
    nr = 0
    visited[cur] = tag
    nc = _heap_push(cs, cn, nc, -cur_s, cur)
    if beam:
        nr = _heap_push(rs, rn, nr, cur_s, cur)
        if allowed[words[cur * stride + label_col]]:
            nk = _heap_push(ks, kn, nk, cur_s, cur)
    elif every or allowed[words[cur * stride + label_col]]:
        nr = _heap_push(rs, rn, nr, cur_s, cur)
    while nc > 0:
        c_s, c = -cs[0], cn[0]
        if nr >= ef and c_s < rs[0] and (nk >= k or not beam):
            break
        nc = _heap_pop(cs, cn, nc)
        row = c * stride
        cnt = words[row] & 0xFFFF
        if cnt > maxM0:
            return -1                      # a damaged link list (the caller names the file)
        for t in range(cnt):               # links checked here, not in a whole-file pass
            if words[row + 1 + t] >= count:
                return -1
        if not two_hop:
            # every unvisited neighbour is scored: their vectors are asked for PREFETCH_AHEAD
            # neighbours ahead of the one being scored
            nf = 0
            for t in range(cnt):
                nb = words[row + 1 + t]
                if visited[nb] != tag:
                    fresh[nf] = nb
                    nf += 1
            for t in range(min(nf, PREFETCH_AHEAD)):
                _prefetch_vector(flat, fresh[t] * stride + vec_col, dim)
            for t in range(nf):
                if t + PREFETCH_AHEAD < nf:
                    _prefetch_vector(flat, fresh[t + PREFETCH_AHEAD] * stride + vec_col, dim)
                nb = fresh[t]
                if visited[nb] == tag:
                    continue               # a link listed twice
                visited[nb] = tag
                s = _dot(flat, nb * stride + vec_col, q)
                if beam:
                    if nr < ef or s > rs[0]:       # the beam holds every row ...
                        nc = _heap_push(cs, cn, nc, -s, nb)
                        nr = _heap_push(rs, rn, nr, s, nb)
                        if nr > ef:
                            nr = _heap_pop(rs, rn, nr)
                    elif nk < k:                   # (walking on while fewer than k allowed are in hand)
                        nc = _heap_push(cs, cn, nc, -s, nb)
                    if (nk < k or s > ks[0]) and allowed[words[nb * stride + label_col]]:
                        nk = _heap_push(ks, kn, nk, s, nb)     # ... the answer only allowed ones
                        if nk > k:
                            nk = _heap_pop(ks, kn, nk)
                    continue
                if nr < ef or s > rs[0]:
                    nc = _heap_push(cs, cn, nc, -s, nb)
                    if every or allowed[words[nb * stride + label_col]]:
                        nr = _heap_push(rs, rn, nr, s, nb)
                        if nr > ef:
                            nr = _heap_pop(rs, rn, nr)
            continue
        scored = 0
        for t in range(cnt):
            nb = words[row + 1 + t]
            if visited[nb] == tag:
                continue
            if not allowed[words[nb * stride + label_col]]:
                visited[nb] = tag          # look through it once
                row2 = nb * stride
                cnt2 = words[row2] & 0xFFFF
                if cnt2 > maxM0:
                    return -1
                for u in range(cnt2):
                    nb2 = words[row2 + 1 + u]
                    if nb2 >= count:
                        return -1
                    if visited[nb2] == tag or not allowed[words[nb2 * stride + label_col]]:
                        continue
                    visited[nb2] = tag
                    s = _dot(flat, nb2 * stride + vec_col, q)
                    scored += 1
                    if nr < ef or s > rs[0]:
                        nc = _heap_push(cs, cn, nc, -s, nb2)
                        nr = _heap_push(rs, rn, nr, s, nb2)
                        if nr > ef:
                            nr = _heap_pop(rs, rn, nr)
                    if scored >= maxM0:
                        break
            else:
                visited[nb] = tag
                s = _dot(flat, nb * stride + vec_col, q)
                scored += 1
                if nr < ef or s > rs[0]:
                    nc = _heap_push(cs, cn, nc, -s, nb)
                    nr = _heap_push(rs, rn, nr, s, nb)
                    if nr > ef:
                        nr = _heap_pop(rs, rn, nr)
            if scored >= maxM0:
                break
    if beam:    # the answer is the allowed heap
        for i in range(nk):
            rs[i], rn[i] = ks[i], kn[i]
        nr = nk
    # the beam, best first (ties: lower row first), cut to k
    m = nr
    while nr > 0:
        nr -= 1
        s, node = rs[0], rn[0]
        _heap_pop(rs, rn, nr + 1)
        if nr < k:
            out_rows[nr] = labels[node]
            out_scores[nr] = s
    m = min(m, k)
    for i in range(1, m):      # equal scores: lower row first (insertion sort; k is small)
        j = i
        while j > 0 and out_scores[j - 1] == out_scores[j] and out_rows[j - 1] > out_rows[j]:
            out_rows[j - 1], out_rows[j] = out_rows[j], out_rows[j - 1]
            j -= 1
    return m


@njit(fastmath=True)
def _search_into(words, flat, stride, vec_col, label_col, upper, levels, uptr, maxM, maxM0, entry, maxlevel,
                 labels, allowed, qs, k, ef, mode, visited, tag0, cs, cn, out_rows, out_scores, counts):
    """Each query row of `qs` into row i of out_rows / out_scores (its first counts[i] slots;
    the rest left as they are). False when a damaged level-0 link list was met."""
    ef = max(ef, k)
    rs = np.empty(ef + 2, np.float32)
    rn = np.empty(ef + 2, np.int64)
    fresh = np.empty(maxM0, np.int64)
    ks = np.empty(k + 2, np.float32)
    kn = np.empty(k + 2, np.int64)
    for i in range(qs.shape[0]):
        m = _search_one(words, flat, stride, vec_col, label_col, upper, levels, uptr, maxM, maxM0, entry, maxlevel,
                        labels, allowed, qs[i], k, ef, mode, visited, tag0 + i, cs, cn, rs, rn, fresh, ks, kn,
                        out_rows[i], out_scores[i])
        if m < 0:
            return False
        counts[i] = m
    return True


@njit(fastmath=True)
def search_filtered(words, flat, stride, vec_col, label_col, upper, levels, uptr, maxM, maxM0, entry, maxlevel,
                    labels, allowed, qs, k, ef, mode, visited, tag0, cs, cn):
    """Top-k allowed rows for each query row of `qs` (float32 [nq, dim]): (rows int64 [nq, k],
    scores float32 [nq, k]; unfilled slots row -1, score -inf), the next free visit tag, and False
    when a level-0 link list met on the way was damaged (the answers are then void).

    words: the level-0 block as uint32 (1-D), flat: the same memory as float32; stride: uint32
    words per record; vec_col / label_col: the vector's first word and the label's (low) word in a
    record (offset_data / 4, label_offset / 4); upper, levels, uptr: the upper-level block and
    `upper_offsets` of it; maxM / maxM0: the header's; labels: int64 [count] row of each graph
    node; allowed: uint8 [rows] (nonzero = allowed), or empty: every row allowed (the mask is then
    never read); mode: PLAIN, TWO_HOP or BEAM (module doc); visited: int32 [count] visit tags (reused across calls: tags tag0, tag0 + 1, ...
    mark this call's queries; the caller resets it when tags run out); cs, cn: float32 / int64
    [count + 1] scratch for the candidate heap (each node enters it at most once), reused."""
    nq = qs.shape[0]
    out_rows = np.full((nq, k), -1, np.int64)
    out_scores = np.full((nq, k), -np.inf, np.float32)
    counts = np.zeros(nq, np.int64)
    sound = _search_into(words, flat, stride, vec_col, label_col, upper, levels, uptr, maxM, maxM0, entry, maxlevel,
                         labels, allowed, qs, k, ef, mode, visited, tag0, cs, cn, out_rows, out_scores, counts)
    return out_rows, out_scores, tag0 + nq, sound


@njit(fastmath=True)
def search_hits(words, flat, stride, vec_col, label_col, upper, levels, uptr, maxM, maxM0, entry, maxlevel,
                labels, allowed, qs, k, ef, mode, visited, tag0, cs, cn, row_base, shard):
    """`search_filtered` answering in the final form of a one-segment search (`types.Hits`): (shards
    int32 [nq, k], rows int64 [nq, k] (local row + row_base), scores float32 [nq, k], counts int64
    [nq], next tag, sound); unfilled slots shard -1, row -1, score NaN. The walk's order (score
    desc, then row) is already the merge's, so nothing is left to sort."""
    nq = qs.shape[0]
    rows = np.full((nq, k), -1, np.int64)
    scores = np.full((nq, k), np.nan, np.float32)
    shards = np.full((nq, k), -1, np.int32)
    counts = np.zeros(nq, np.int64)
    sound = _search_into(words, flat, stride, vec_col, label_col, upper, levels, uptr, maxM, maxM0, entry, maxlevel,
                         labels, allowed, qs, k, ef, mode, visited, tag0, cs, cn, rows, scores, counts)
    for i in range(nq):
        for j in range(counts[i]):
            rows[i, j] += row_base
            shards[i, j] = shard
    return shards, rows, scores, counts, tag0 + nq, sound


def warm_up(dim: int) -> None:
    """Compile (or load from cache) `search_filtered` and `search_hits` for the array types a
    segment's graph map gives (read-only uint32 / float32 views), on a two-node graph of `dim` dims."""
    maxM0, maxM = 2, 1
    stride = 1 + maxM0 + dim + 2
    words = np.zeros(2 * stride, np.uint32)
    for node, other in ((0, 1), (1, 0)):
        words[node * stride] = 1
        words[node * stride + 1] = other
        words[node * stride + 1 + maxM0] = np.float32(1.0).view(np.uint32)
        words[node * stride + 1 + maxM0 + dim] = node
    ro = np.frombuffer(words.tobytes(), np.uint32)
    upper = np.frombuffer(np.zeros(2, np.uint32).tobytes(), np.uint32)
    levels, uptr = upper_offsets(upper, 2, maxM)
    links_in_range(ro, stride, 2, maxM0)
    graph = (ro, ro.view(np.float32), stride, 1 + maxM0, 1 + maxM0 + dim, upper, levels, uptr, maxM, maxM0, 0, 0,
             np.arange(2, dtype=np.int64))
    allowed = np.ones(2, np.uint8)
    qs = np.ones((1, dim), np.float32)
    visited = np.zeros(2, np.int32)
    cs, cn = np.empty(3, np.float32), np.empty(3, np.int64)
    for mode in (PLAIN, TWO_HOP, BEAM):
        search_filtered(*graph, allowed, qs, 1, 1, mode, visited, 1 + mode, cs, cn)
    search_hits(*graph, allowed, qs, 1, 1, PLAIN, visited, 4, cs, cn, 0, 0)
