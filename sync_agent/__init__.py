"""The sync agent: streams versioned deltas from training PS shards to serving PS shards."""
