"""The public API: __all__ is complete, sorted and importable."""

from __future__ import annotations
import __future__

import types

import dask_batchinfer as dbi


def test_all_is_sorted_and_complete():
    assert dbi.__all__ == sorted(dbi.__all__)
    public = {
        name
        for name, value in vars(dbi).items()
        if not name.startswith("_")
        and not isinstance(value, (types.ModuleType, __future__._Feature))
    }
    assert public <= set(dbi.__all__), public - set(dbi.__all__)
    for name in dbi.__all__:
        assert hasattr(dbi, name)


#: The public API, pinned: adding a name is a decision, removing one breaks users.
PUBLIC = [
    "BadRowsError", "BatchInferError", "ClusterError", "InputError", "JobResult",
    "ModelLoadError", "ModelSpec", "OutputLockedError", "PartitionError",
    "PartitionTimeoutError", "Plan", "SchemaError", "__version__", "decode_images",
    "file_sha256", "from_callable", "from_torch", "from_torch_file", "from_transformers",
    "image_tensor",
    "local_cluster", "model_stats", "output_status", "plan", "predict", "read_files",
    "read_output", "run_job", "sentence_encoder", "shutdown",
]  # fmt: skip


def test_the_public_names_are_pinned():
    assert dbi.__all__ == PUBLIC


def test_errors_subclass_builtins():
    assert issubclass(dbi.InputError, ValueError)
    assert issubclass(dbi.ModelLoadError, RuntimeError)
    assert issubclass(dbi.PartitionError, RuntimeError)
    err = dbi.PartitionError("boom", partition=3, source="s3://b/k.parquet")
    import pickle

    back = pickle.loads(pickle.dumps(err))
    assert (back.partition, back.source, str(back)) == (3, "s3://b/k.parquet", "boom")
