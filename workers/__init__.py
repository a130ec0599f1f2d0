"""Baton workers."""
