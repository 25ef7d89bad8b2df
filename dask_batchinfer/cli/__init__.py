"""The ``dask-batchinfer`` command: flags, job files, ``status`` and ``demo``."""
