"""An answer's token budget: which ranked events fit, in what order (`pack`), for chain and
current answers alike. Token counts are read from the graph in batches (a remote graph fetches
only what the budget can take)."""
from __future__ import annotations

import numpy as np


def pack(g, order, budget: int, pad=(), pad_share: float = 0.0, pad_first: float = 0.0):
    """First the events of `pad` (best first) that fit in `pad_first` of the budget; then those
    of `order` that fit the budget, each once; then those of `pad` that fit in `pad_share` of
    the budget left. Token counts of `pad` are asked in growing chunks, once: a remote graph
    fetches only what the budget can take."""
    picked, seen = [], set()
    pad_tokens: list = []

    def take_pad(limit: int, used: int) -> int:
        lo, step = 0, 64
        while lo < len(pad) and used < limit:
            if len(pad_tokens) < min(len(pad), lo + step):
                more = pad[len(pad_tokens):lo + step]
                pad_tokens.extend(np.asarray(g.tokens([r for r, _, _ in more]), np.int64).tolist())
            used = take(g, pad[lo:lo + step], limit, used, picked, seen, pad_tokens[lo:lo + step])
            lo, step = lo + step, 2 * step
        return used

    used = take_pad(int(pad_first * budget), 0) if pad_first > 0 and pad else 0
    used = take(g, order, budget, used, picked, seen)
    if pad_share > 0 and pad:
        used = take_pad(used + int(pad_share * (budget - used)), used)
    return picked

def take(g, items, limit: int, used: int, picked: list, seen: set, tokens=None) -> int:
    """Append the items that fit under `limit` tokens to `picked`; the tokens now used.
    `tokens`: the items' token counts where the caller has them."""
    if tokens is None:
        tokens = np.asarray(g.tokens([r for r, _, _ in items]), np.int64).tolist() if items else []
    for (r, v, reason), tok in zip(items, tokens):
        if r in seen or used + tok > limit:
            continue
        seen.add(r)
        used += tok
        picked.append((r, v, reason))
    return used
