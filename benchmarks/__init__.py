"""gdflow benchmarks: each measures a ratio against a physical limit or a peer in the same run."""
