"""Tuning knobs, in one place, each named for the trade-off it controls."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import InvalidQueryError


# the entity types that name who did something: the build's same-actor links and the answer's
# "chain's people" read the same ones
ACTOR_PREFIXES = ("person:", "user:", "author:", "speaker:")


def _check_positive(obj) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):   # NaN passes every comparison below
                raise ValueError(f"{type(obj).__name__}.{f.name} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"{type(obj).__name__}.{f.name} must be >= 0, got {v!r}")


@dataclass(frozen=True)
class BuildParams:
    """How segments are built."""
    hnsw_m: int = 16                 # graph degree: higher = better recall, bigger index, slower build
    hnsw_ef_construction: int = 200  # build-time beam: higher = better graph, slower build
    hnsw_min_rows: int = 4096        # below this a segment has no HNSW and is always scanned exactly
    bitmap_min_postings: int = 512   # entities with at least this many events get a stored roaring bitmap
    threads: int = 2                 # threads for HNSW construction
    seed: int = 100                  # HNSW level-assignment seed (builds are deterministic)
    # Implicit supersession: a later event of one of `slot_kinds` that mentions the same "slot"
    # entity (a name starting with one of `slot_prefixes`) replaces the earlier one as current.
    slot_prefixes: tuple[str, ...] = ("decision:",)
    slot_kinds: tuple[str, ...] = ("decision",)
    # Derived `similar` links (derive.similarity_links): each event's `similar_k` most similar
    # earlier events within `similar_window_days`, if they stand out from the event's other
    # candidates by `similar_z` standard deviations; scans at most `similar_max_candidates`
    # earlier events per event (bounds the build's cost at large N). 0 disables.
    similar_k: int = 0
    # Derived `same_actor` links: each event links to the previous `actor_k` events of each of
    # its actors (entities starting with one of `actor_prefixes`) within `actor_window_days`:
    # one sitting (an hour) of one person is usually one piece of work. Walked at a weak weight;
    # never counted as causal evidence (see AnswerParams.chain_evidence).
    # Derived only where people work in sittings: a build measures how much of the actors'
    # closeness in time chance does not explain (derive.actor_excess) and, below
    # `actor_min_excess`, derives none (and records actor_k 0 for later adds). 0: always.
    actor_k: int = 2
    actor_window_days: float = 1.0 / 24
    actor_prefixes: tuple[str, ...] = ACTOR_PREFIXES
    actor_min_excess: float = 0.4
    # Derived `relands` links: a later event whose title repeats that of a reverted event
    # re-lands the change and supersedes the revert (derive.reland_links). False disables.
    relands: bool = True
    # Derived `title_reverts` links: an event whose title is `Revert "T"` and which names no
    # reverted event (a revert made in a web interface says "Reverts #123", or names a commit
    # that is not among the events) reverts the latest earlier event titled T
    # (derive.title_revert_links); supersession and re-lands follow it like a `reverts` link.
    title_reverts: bool = True
    # Derived entities (derive.py): identifier terms of the text (walked, rarity-weighted) and
    # the words of text and entity names (lexical seeds). Access lists are always derived.
    text_terms: bool = True
    text_words: bool = True
    # Derived `co_cited` links (derive.cocitation_links): each event to the previous `cocite_k`
    # events that link to one of its own link targets by a link of `cocite_types` (two
    # follow-ups to one commit). Walking back from one, the other lies forward of the common
    # cause; the link makes it reachable. 0: off
    cocite_k: int = 3
    cocite_types: tuple[str, ...] = ("references", "fixes", "follow_up", "reverts", "backport_of")
    # Derived `co_mention` links (derive.comention_links): each event to its `comention_k` earlier
    # events sharing the most rarity-weighted files (entities starting with `comention_prefixes`)
    # within `comention_window_days`, closeness in time counting over `comention_scale_days`;
    # files on more than `comention_max_share` of the events say nothing. Walked at a weak weight
    # and never causal evidence: commits touching the same files in one week are often one piece
    # of work whose ticket nobody wrote down. 0 disables.
    comention_k: int = 5
    comention_window_days: float = 365.0
    comention_scale_days: float = 30.0
    comention_max_share: float = 0.2
    comention_prefixes: tuple[str, ...] = ("file:", "path:")
    similar_window_days: float = 120.0
    similar_z: float = 2.5
    similar_max_candidates: int = 8192

    def __post_init__(self):
        _check_positive(self)
        if self.hnsw_m < 2:
            raise ValueError(f"BuildParams.hnsw_m must be >= 2, got {self.hnsw_m}")
        if self.actor_min_excess > 1:
            raise ValueError(f"BuildParams.actor_min_excess must be in [0, 1], got {self.actor_min_excess}")

    def manifest_params(self) -> dict:
        """What a shard's manifest records of the build (`params`): which entities are slots and
        which are actors is fixed in its entity flags (derive.FLAG_*). A manifest without
        `actor_prefixes` comes from a build before actors were flagged; `Shard.entity_flags`
        flags them from their names. `actor_k` is what the build applied (derive.corpus_params):
        0 where it derived no same-actor links, so adds derive none either."""
        return {"slot_prefixes": list(self.slot_prefixes), "slot_kinds": list(self.slot_kinds),
                "actor_prefixes": list(self.actor_prefixes), "actor_k": int(self.actor_k)}


@dataclass(frozen=True)
class SearchParams:
    """How seeds are searched; see `planner.plan_segment` for how these pick a strategy."""
    exact_max_rows: int = 2048        # allowed rows at or below this: exact scan (no graph at all)
    hnsw_min_fraction: float = 0.005  # allowed fraction below this: exact scan (over-fetch would be huge)
    hnsw_candidate_cost: float = 12.0 # one over-fetched HNSW candidate costs about this many gathered row scores
    slice_row_cost: float = 0.3       # a row of a contiguous (time-window) scan, relative to a gathered row
    ef_search: int = 64               # HNSW beam for unfiltered search; raised to the over-fetch size
    overfetch: float = 2.0            # HNSW over-fetch factor on k / allowed fraction
    max_rounds: int = 4               # over-fetch doublings before falling back to an exact scan
    walk_beam_below: float = 0.0      # filtered walks below this allowed fraction run the beam walk
                                      # (unfiltered, keeping the allowed rows it meets; needs a wider
                                      # ef_search for the same recall); 0: never (see planner.py)
    scan_threads: int = 2             # an exact scan of many rows runs in this many threads (the
                                      # kernel releases the GIL; same scores); 1: the calling thread only

    def __post_init__(self):
        _check_positive(self)
        if not 0 <= self.hnsw_min_fraction <= 1:
            raise ValueError(f"SearchParams.hnsw_min_fraction must be in [0, 1], got {self.hnsw_min_fraction}")
        if not 0 <= self.walk_beam_below <= 1:
            raise ValueError(f"SearchParams.walk_beam_below must be in [0, 1], got {self.walk_beam_below}")
        if self.scan_threads < 1:
            raise ValueError(f"SearchParams.scan_threads must be >= 1, got {self.scan_threads}")


@dataclass(frozen=True)
class AnswerParams:
    """Knobs of the causal engine. Defaults are measured on the orgmem yardstick (see docs)."""
    seed_k: int = 1024               # seed hits considered (their mean is what "specific" is relative
                                     # to; a fact's versions and mentions group together among them)
    # hits of a second chain search with the query less the first hits' mean, asked when the first
    # search filled seed_k out of at least specific_allowed_ratio times as many allowed rows: among
    # tens of thousands of look-alikes the asked event may rank low by plain similarity. 512:
    # chain recall 3.4M events 0.552 -> 0.615, 1e6 +0.010..+0.013 on three knob settings for
    # about +3 ms chain p50 there; at 1e5 (at most ~3,700 allowed rows) it is not asked
    # (bench/README.md, "specific_seeds re-measured")
    specific_seeds: int = 512
    specific_allowed_ratio: float = 4.0
    current_seed_k: int = 1024       # ... for `current` / `as_of`: a fact's versions must be among
                                     # the hits to group. At 3.4M events 4096 lifts current from
                                     # 0.84 to 0.93 at twice the latency; no change at 1e6 or below
    # "best_first" (max-product paths; the sharded coordinator reproduces it exactly) or "ppr"
    # (personalized PageRank push; embedded only for now; measured in the issue notes)
    expansion: str = "best_first"
    ppr_alpha: float = 0.3           # PPR teleport probability
    ppr_epsilon: float = 1e-3        # PPR push threshold
    candidates: int = 64             # hits expanded as possible chain heads ...
    # ... or this many where the second, centred search is asked (the hits are a small sample of
    # many look-alikes: seed_k filled out of at least specific_allowed_ratio times as many allowed
    # rows), since there the asked event's prior ranks lower among them. 128: chain recall 1e6
    # knobs A 0.800 -> 0.811, knobs F 0.777 -> 0.815, 3.4M events 0.681 -> 0.712, for about +4 ms
    # chain p50 at 1e6; git histories of 4,096 commits and more -0.008..+0.004 (libevent without
    # ids: 2 of 12 questions lost); conversations and 1e5 questions (fewer allowed rows) keep
    # `candidates` (bench/README.md, "A wider candidate pool")
    many_candidates: int = 128
    threads: int = 2                 # threads one answer's expansions and older-version test run
                                     # in (independent parts, identical results; fastctx.parallel)
    # a reply is conversation structure (what came next), not a cause: it weighs what the other
    # non-causal adjacencies (similar, same_actor) weigh, well below a reference; a co-mention
    # (same files, same weeks) weighs least: it fills what explicit evidence leaves (at 0.05 and
    # above it crowded out ticket-linked events and alternative heads on git histories)
    link_weights: tuple[tuple[str, float], ...] = (
        ("reply", 0.3), ("references", 0.85), ("fixes", 0.9), ("follow_up", 0.9),
        ("reverts", 0.8), ("backport_of", 0.8), ("supersedes", 0.8), ("similar", 0.3),
        ("same_actor", 0.3), ("relands", 0.8), ("co_mention", 0.03),
        ("co_cited", 0.7),               # two links to one cause: about a reference followed twice
        ("title_reverts", 0.8))          # a revert named by its title: a revert
    entity_weight: float = 0.8       # weight of sharing an entity mentioned by 2 events ...
    term_weight: float = 0.2         # ... times this for identifier terms derived from text (a name
                                     # in prose is weaker evidence than a recorded entity; measured
                                     # against 0.5 on 16 real histories, bench/README.md)
    entity_max_df: int = 16          # ... falling (log) to 0 at this many events: hubs are no evidence
    entity_max_share: float = 0.02   # ... or at this share of the shard's events, if that is fewer
    time_scale_days: float = 240.0   # entity edges decay as 1 / (1 + |dt| / scale): a story spans months
    hub_postings: int = 4096         # postings longer than this are scanned only ...
    hub_window_days: float = 30.0    # ... this close in time to the node
    max_per_entity: int = 64         # candidates examined per (node, entity)
    max_hops: int = 6
    max_results: int = 256           # events reached per expansion
    max_edge_visits: int = 20_000    # work cap per expansion
    min_score: float = 0.02
    relevance: float = 0.8           # weight of how much a candidate's chain is about the query
    relevance_mass: float = 1.5      # ... counting up to this many units of evidence behind it, those
                                     # past the first only through causal links: a head with a
                                     # linked history beats a look-alike with one neighbour
    # a candidate whose walk in the asked direction gathered less than this much evidence (one
    # unit: what chain relevance counts in full) is walked again both ways in time, the events
    # past it left out (heads.widen_thin); 0: never
    widen_below: float = 1.0
    # weight of how much of a candidate's chain its own people worked (heads.actor_coherence: the
    # evidence it reaches through events sharing a person, user, author or speaker with it, up to
    # one unit): a story's steps are mostly worked by the same few people, a look-alike's
    # neighbourhood by others. 0: off. Chain recall 1e5 knobs A 0.857 -> 0.893, 1e6 knobs A
    # 0.701 -> 0.776, 3.4M 0.615 -> 0.673; git histories within +-0.004; conversations -0.003,
    # 1e4 default knobs -0.009 (bench/README.md, "A chain's own people")
    actor_coherence: float = 0.2
    recency: float = 0.6             # weight of a candidate's place in the query's time window
    older_version_cos: float = 0.6   # a later hit more similar than this marks an older version ...
    older_version_penalty: float = 1.3  # ... penalised by this times the excess similarity
    inherit: bool = True             # a candidate whose chain reaches another inherits its weight
    # ... if the path between them scores at least this times the best chain's confidence: a
    # co-mention (0.03) or two weak hops explain nothing, and the inherited chain only padded a
    # causal answer (git histories without ticket ids: tokio 0.654 -> 0.690; chain precision up on
    # 23 of 26 imports; conversations, whose chains are not causal, unchanged; bench/README.md)
    inherit_min_path: float = 0.2
    pool_temperature: float = 0.03   # softmax temperature pooling candidates' chains (0: winner only)
    # chains of candidates weighted below `pool_min_weight` are not evidence. 0.01 trades recall
    # for precision: yardstick chain precision +0.03 to +0.09 for 0.003-0.023 recall, but real git
    # histories lose recall (libgit2 without ids 0.769 -> 0.667) and gain no precision, so the
    # default keeps runner-up chains down to 0.001 (bench/README.md, "Weak runner-up chains")
    pool_min_weight: float = 0.001
    # Pooled events with less than this share of the best event's evidence stay in the answer
    # only where an actor they name (person, user, author, speaker) is named by another pooled
    # event too (pooling.same_people): a story's weak steps are the work of people seen elsewhere
    # in its evidence, a look-alike's neighbourhood mostly not. 0: off. Yardstick chain precision
    # +0.025..+0.079 at recall -0.006..+0.007 (1e5 knobs A 0.514 -> 0.572, 1e6 knobs A 0.428 ->
    # 0.470); git with ids libuv 0.997 -> 0.988, redis -0.002, others and conversations unchanged
    # (bench/README.md, "Weak evidence by strangers")
    people_floor: float = 0.1
    # How much causal structure the best chain has decides the answer's breadth: its evidence
    # mass (path scores of the events it reaches through anything but reply or same-actor
    # links) relative to `chain_evidence` is the confidence c in [0, 1]. The pooling
    # temperature moves from `wide_temperature` (c = 0) to `pool_temperature` (c = 1), and
    # direct hits, in fused relevance order, take the share 1 - c of the budget the chains leave.
    chain_evidence: float = 0.5
    # entities naming where events were said (a chat session, a thread, a channel) group them
    # the way reply links do: walked like any entity, but what they reach is conversation
    # structure, not causal evidence, so it never makes the answer stop early
    context_prefixes: tuple[str, ...] = ("session:", "thread:", "channel:", "conversation:", "conv:")
    wide_temperature: float = 0.3
    # Below full confidence c, pooled chain events are ordered by their evidence times
    # exp(question_focus * (1 - c) * aboutness), aboutness being an event's query-specific
    # similarity plus its closeness to a date the question names: among turns reached through a
    # session or a reply, what the question asks about comes first. 0: off. Conversations
    # (REALTALK, MiniLM) 0.709 -> 0.728 evidence recall, with a hashing encoder 0.656 -> 0.640;
    # git histories and the yardstick -0.017..+0.005 (bench/README.md, "Question focus")
    question_focus: float = 5.0
    # Below full confidence, each candidate's pooling weight is also scaled towards its support
    # in time relative to the best candidate's (pooling.time_coherence: pooled weight within about
    # this many days), by the share 1 - c: candidates that agree in time with the best one
    # outweigh a lone look-alike from another year. Direct hits are ranked the same way: fused
    # relevance plus the pooling temperature times the log of that factor. 0: off.
    time_coherence_days: float = 30.0
    # of the share 1 - c of the budget that direct hits may take, this part goes to the best of
    # them before the chains, so a question the chains do not explain keeps its best look-alikes
    # even when the pooled chains could fill the budget; the rest comes after the chains
    hits_first: float = 0.5
    window_slack_days: float = 0.0   # expansion may leave the seed time window by this much
    lexical_k: int = 256             # lexical seeds (the query's words against the index vocabulary)
    lexical: float = 0.75            # weight of a hit's lexical match (0..1, relative to the best)
                                     # beside its query-specific similarity
    # ... scaled by lexical_max_matches / n when n > lexical_max_matches rows match at least half
    # as well as the best: words many events match about equally (a topic's vocabulary) single
    # out none of them, while a rare name or a commit subject singles out a few. 0: off.
    # Generated corpora with text at 1e5, where the text names only the topic: chain recall
    # +0.05..+0.12 (0.809 -> 0.893 default knobs); git histories -0.005..+0.033; conversations
    # -0.002 (bench/README.md, "Lexical matches many rows share")
    lexical_max_matches: int = 32
    bm25_k1: float = 1.2             # BM25 (presence only: tf = 1); k1 textbook
    # length normalisation weaker than the textbook 0.75: with presence only, a long text gains no
    # term frequency, only more distinct words, and 0.75 buried a commit whose subject is the
    # question under its own long body (git chain recall with ids: redis 0.795 -> 0.864)
    bm25_b: float = 0.3
    # a question that names a date ("what did Kate cook on 29 Dec 2023?") is about what happened
    # then: a hit's closeness to it (1 on the day, 1/2 three days away; timeexpr.py) adds this
    # much to its head and direct-hit score, a prior like `recency`, never a filter
    date_weight: float = 0.4
    date_scale_days: float = 3.0
    # The kind of event a question asks about ("what led to the current incident"): each kind's
    # mean query-specific similarity among the hits (over its count plus `kind_prior_hits`, in
    # standard deviations; heads.kind_affinity) below the best kind's, times `kind_weight` and
    # the best chain's confidence, is added to the candidates' scores. Candidates on the asked
    # side of the new head keep `kind_history` of their kind-free pooling weight (the head's own
    # history may be of other kinds). Inert when all hits are one kind or no chain is causal.
    # 0: off. Yardstick with unseen knobs at 1e5: chain recall +0.02..+0.04, precision +0.04..+0.06
    # (bench/README.md, "The asked kind")
    kind_weight: float = 0.25
    kind_prior_hits: int = 8
    kind_history: float = 0.3
    # The best chain's people (entities starting with `team_prefixes`, the build's actors by
    # default, of its first `team_members` events, at most `team_people` of them): their
    # `team_k` other events most like the chain (pooling.add_team) join the answer as weak
    # evidence, `team_weight` times the chain's confidence, ranked below every stronger event.
    # 0: off. Yardstick, 14 corpora of 4 knob settings and 11 seeds: chain recall +0.007..+0.056
    # (1e5 knobs A 0.832 -> 0.857, 1e6 knobs A 0.656 -> 0.691), precision -0.02..-0.14; git
    # without ids +0.000..+0.029, with ids unchanged, precision lower; conversations unchanged
    # (bench/README.md, "The chain's people")
    team_k: int = 3
    team_members: int = 8
    team_people: int = 8
    team_weight: float = 0.01
    team_prefixes: tuple[str, ...] = ACTOR_PREFIXES

    def __post_init__(self):
        if self.expansion not in ("best_first", "ppr"):
            raise InvalidQueryError(f"AnswerParams.expansion must be 'best_first' or 'ppr', got {self.expansion!r}")
        try:
            _check_positive(self)
        except ValueError as e:
            raise InvalidQueryError(str(e)) from None
        # a hit, a head, a thread, a member of the chain
        for name in ("seed_k", "current_seed_k", "candidates", "many_candidates", "threads", "team_members"):
            if getattr(self, name) < 1:
                raise InvalidQueryError(f"AnswerParams.{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < self.ppr_alpha <= 1:
            raise InvalidQueryError(f"AnswerParams.ppr_alpha is a teleport probability, in (0, 1]; got {self.ppr_alpha!r}")
        if self.hits_first > 1:
            raise InvalidQueryError(f"AnswerParams.hits_first is a share of the budget, in [0, 1]; got {self.hits_first!r}")
        if self.people_floor > 1:
            raise InvalidQueryError("AnswerParams.people_floor is a share of the best event's evidence, "
                                    f"in [0, 1]; got {self.people_floor!r}")
        if self.pool_min_weight > 1:
            raise InvalidQueryError("AnswerParams.pool_min_weight is a pooling weight (the best chain's is 1), "
                                    f"in [0, 1]; got {self.pool_min_weight!r}")
