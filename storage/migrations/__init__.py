"""Alembic migrations of gdflow's schema; `storage.migrate` applies them."""
