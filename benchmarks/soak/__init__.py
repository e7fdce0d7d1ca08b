"""The soak: hundreds of scheduled runs of `gdflow serve` or of a work pool under injected
faults, then every invariant checked (`make soak`, `python -m benchmarks.soak`)."""
