"""The CI gate: ``exporter verify`` re-checks a folder, ``exporter run`` exports and gates recipes."""
