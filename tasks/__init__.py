"""The Prefect layer over the plain functions: a run's five tasks and its dashboard artifacts."""
