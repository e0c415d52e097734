"""The documents an export writes and the gate and server read: manifest.json and report.json."""
