"""Verify stage: outputs judged against a reference (numpy only, so the server and the gate share it)."""
