"""fastctx.shards: serving and distribution (gRPC shard servers, a stateless coordinator).

    fastctx build CORPUS INDEX --shards 4          # 4 independently servable shard directories
    fastctx serve shard --index INDEX --shard 0 --port 7001      # one per shard (and replica)
    fastctx serve coordinator --port 7000 --shard 0=host:7001,host:7101 --shard 1=...
    fastctx.connect("host:7000").query("what led to ...")     # same API as Index.query

`open_local(INDEX)` runs the coordinator in-process over every shard of a partitioned index
(no network): the same protocol, the same answers.
"""
from __future__ import annotations


def open_local(index_dir, *, replica: bool = False, **kw):
    """A `Coordinator` over all shards of a partitioned index, in this process; with `replica`,
    holding the index's graph (shards/replica.py), so chain expansion takes no shard round."""
    from fastctx.format import read_marker
    from pathlib import Path
    from .coordinator import Coordinator
    from .service import ShardService
    from .transport import Cluster, LocalReplica
    marker = read_marker(Path(index_dir))
    n = len(marker["shards"])
    cluster = Cluster({k: [LocalReplica(ShardService(index_dir, k), f"local-{k}")] for k in range(n)})
    return Coordinator(cluster, replica=index_dir if replica else None, **kw)
