"""Benchmarks of dask-batchinfer (``make bench``); see ``benchmarks/run.py``."""
