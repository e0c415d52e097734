"""Input specs: what a model is fed, which dims may change, how they are written, and the sizes checked."""
