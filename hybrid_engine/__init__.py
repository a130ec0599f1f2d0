"""Baton hybrid_engine."""
