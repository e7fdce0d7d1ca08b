"""The Prefect layer over the plain functions: the five tasks of a run and its dashboard artifacts."""
