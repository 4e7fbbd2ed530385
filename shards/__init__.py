"""fastctx.shards: serving and distribution (gRPC shard servers, coordinator)."""
