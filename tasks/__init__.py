"""gdflow's tasks: plain functions for data, training and evaluation, and their Prefect wrappers."""
