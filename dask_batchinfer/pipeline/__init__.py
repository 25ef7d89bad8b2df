"""The worker side of a job, one module per step of a partition's way.

``read`` (the input's own tasks, :mod:`dask_batchinfer.io.read`) ->
:mod:`~dask_batchinfer.pipeline.preprocess` -> :mod:`~dask_batchinfer.pipeline.infer`
(:mod:`~dask_batchinfer.pipeline.loading` and :mod:`~dask_batchinfer.pipeline.batching`
underneath) -> write (:mod:`dask_batchinfer.io.parquet`, :mod:`dask_batchinfer.io.commit`).
:mod:`~dask_batchinfer.pipeline.stages` times and traces each step and is what
``predict``, ``run_job`` and ``plan`` call.
"""
