"""Searches over the hybrid loss (Optuna): the space (``space``), the stored search and its study
(``searches``), the driver that queues each trial's runs and prunes them (``driver``), and the
final comparison on test (``result``). See docs/SEARCH.md."""
