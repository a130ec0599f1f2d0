"""Peer frameworks run beside Baton by `baton bench e2e`, each in its own venv (never imported by Baton)."""
