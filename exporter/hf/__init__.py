"""Hugging Face folders as checkpoints: reading a folder as data, its task and input spec, wrappers that give
its models flat named inputs and outputs, and greedy decoding through an exported decoder's cache."""
