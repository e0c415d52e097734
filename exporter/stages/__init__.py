"""The pipeline's stages as the export runs them, each handing the next a plain typed object."""
