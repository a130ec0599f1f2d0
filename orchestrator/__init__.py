"""Baton orchestrator."""
