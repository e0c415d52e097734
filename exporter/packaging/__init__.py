"""``exporter package``: an artifacts folder and its server as a Docker/Triton bundle."""
