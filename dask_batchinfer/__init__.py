"""dask-batchinfer: offline batch inference on Dask.

Turn a lazily partitioned Dask DataFrame into model outputs, with one cached
model per worker process and exactly-once partitioned Parquet output.

Examples
--------
>>> import dask_batchinfer as dbi
>>> spec = dbi.sentence_encoder(text_column="text")
>>> result = dbi.run_job("docs/", spec, output="embeddings/", keep=["doc_id"])  # doctest: +SKIP
"""

from __future__ import annotations

from dask_batchinfer import _config  # noqa: F401  (registers the batchinfer.* defaults)
from dask_batchinfer.cli.status import output_status
from dask_batchinfer.cluster.engine import shutdown
from dask_batchinfer.cluster.local import local_cluster
from dask_batchinfer.errors import (
    BadRowsError,
    BatchInferError,
    ClusterError,
    InputError,
    ModelLoadError,
    OutputLockedError,
    PartitionError,
    PartitionTimeoutError,
    SchemaError,
)
from dask_batchinfer.io.files import read_files
from dask_batchinfer.io.read import read_output
from dask_batchinfer.job.plan import Plan, plan
from dask_batchinfer.job.run import run_job
from dask_batchinfer.model import (
    ModelSpec,
    file_sha256,
    from_callable,
    from_torch,
    from_torch_file,
    from_transformers,
    sentence_encoder,
)
from dask_batchinfer.pipeline.images import decode_images, image_tensor
from dask_batchinfer.predict import predict
from dask_batchinfer.report.result import JobResult
from dask_batchinfer.version import __version__
from dask_batchinfer.worker.cache import model_stats

__all__ = [
    "BadRowsError",
    "BatchInferError",
    "ClusterError",
    "InputError",
    "JobResult",
    "ModelLoadError",
    "ModelSpec",
    "OutputLockedError",
    "PartitionError",
    "PartitionTimeoutError",
    "Plan",
    "SchemaError",
    "__version__",
    "decode_images",
    "file_sha256",
    "from_callable",
    "from_torch",
    "from_torch_file",
    "from_transformers",
    "image_tensor",
    "local_cluster",
    "model_stats",
    "output_status",
    "plan",
    "predict",
    "read_files",
    "read_output",
    "run_job",
    "sentence_encoder",
    "shutdown",
]
