"""Cross-channel tests: one app, every channel, the same answers (issue 8)."""
