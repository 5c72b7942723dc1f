"""Thin Ray wrappers around core: one Ray idea per file."""
