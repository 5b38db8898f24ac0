"""Contract suites and helpers for plugin authors: run them on your own backend or channel."""
