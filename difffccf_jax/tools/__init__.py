"""Workflows built on the library: hyper-parameter sweeps and the end-to-end demo."""
