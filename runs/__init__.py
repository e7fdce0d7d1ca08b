"""A run's life in the metrics database: start, epoch chunks, outcome, status, liveness, signals."""
