"""Orchestration: the Prefect flows (train, sweep), their deployments, task runners and the
Prefect server they report to."""
