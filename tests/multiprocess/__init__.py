"""Multi-process tests: real processes sharing one SQLite file (issue #13)."""
