"""Rendering: terminal tables, markdown and SVG charts, as plain strings (no I/O)."""
