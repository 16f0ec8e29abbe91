"""Ablations: the variants of a suite, their statistics, and suites stored in the store."""
