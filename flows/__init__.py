"""gdflow's Prefect flows and its command line; nothing imports this package."""
