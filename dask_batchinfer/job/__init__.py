"""A job, on the client: plan it, execute it on the cluster, build its result.

- :mod:`~dask_batchinfer.job.worklist`: partitions, fingerprints, done and to do (pure),
- :mod:`~dask_batchinfer.job.executor`: the bounded submit window, pool routing, progress,
- :mod:`~dask_batchinfer.job.record`: the one :class:`~dask_batchinfer.JobResult` builder,
- :mod:`~dask_batchinfer.job.run`: :func:`~dask_batchinfer.run_job`, the whole of it.
"""
