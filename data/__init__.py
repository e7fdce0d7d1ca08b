"""Data sets: CSV and Parquet files (or the seed's toy data) read into float arrays."""
