"""Benchmarks (not tests): run as modules, print a table, return a dict of figures."""
