"""A job, on the client: check its options, prepare it, run its worklist, build its result.

- :mod:`~dask_batchinfer.job.options`: every option declared once, checked once,
- :mod:`~dask_batchinfer.job.prepare`: the prepared job ``run_job`` and ``plan()`` start from,
- :mod:`~dask_batchinfer.job.worklist`: partitions, fingerprints, done and to do (pure),
- :mod:`~dask_batchinfer.job.executor`: the bounded submit window, pool routing, progress,
- :mod:`~dask_batchinfer.job.record`: the one :class:`~dask_batchinfer.JobResult` builder,
- :mod:`~dask_batchinfer.job.run`: :func:`~dask_batchinfer.run_job`, the whole of it,
- :mod:`~dask_batchinfer.job.plan`: :func:`~dask_batchinfer.plan`, a sample projected.
"""
