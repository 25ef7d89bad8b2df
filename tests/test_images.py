"""Files as rows (``read_files``) and images as model inputs (``decode_images``)."""

from __future__ import annotations

import io
import os
import pickle

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image

import dask_batchinfer as dbi
from dask_batchinfer.errors import InputError, PartitionError
from dask_batchinfer.io.files import read_binary_files, read_files_source
from dask_batchinfer.io.read import READ_TIMES
from dask_batchinfer.pipeline.preprocess import preprocess_partition
from dask_batchinfer.testing import make_cnn, tiny_cnn_model


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path):
    """40 random 32x32 RGB PNGs, 20 in ``cats/`` and 20 in ``dogs/``, plus hidden files.

    Yields ``(folder, {path: bytes})`` for the visible files.
    """
    rng = np.random.default_rng(0)
    files = {}
    for kind in ("cats", "dogs"):
        os.makedirs(tmp_path / kind)
        for i in range(20):
            path = str(tmp_path / kind / f"{i:03d}.png")
            data = png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            with open(path, "wb") as f:
                f.write(data)
            files[path] = data
    os.makedirs(tmp_path / ".thumbnails")
    for hidden in ("_manifest.png", ".thumbnails/000.png", "cats/.000.png"):
        (tmp_path / hidden).write_bytes(b"not listed")
    return str(tmp_path), files


def test_read_files_lists_and_reads_every_visible_file(image_folder):
    folder, files = image_folder
    ddf = dbi.read_files(folder)
    assert list(ddf.columns) == ["path", "size", "bytes"]
    assert ddf.dtypes["bytes"] == pd.ArrowDtype(pa.binary())
    assert ddf.npartitions == 40  # the tests' partition-size is 1 byte: one file each
    frame = ddf.compute(scheduler="sync")
    assert frame["path"].tolist() == sorted(files)
    assert frame["bytes"].tolist() == [files[p] for p in sorted(files)]
    assert frame["size"].tolist() == [len(files[p]) for p in sorted(files)]
    assert frame["size"].dtype == np.int64


def test_small_files_are_read_together_up_to_the_partition_size(image_folder):
    folder, files = image_folder
    with dask.config.set({"batchinfer.partition-size": "16MiB", "batchinfer.min-partitions": 4}):
        ddf, groups = read_files_source(folder)
    assert ddf.npartitions == len(groups) and 4 <= len(groups) <= 12  # about a quarter each
    assert [f.path for group in groups for f in group] == sorted(files)
    assert {f.relpath for f in groups[0]} >= {"cats/000.png"}
    assert all(f.version for group in groups for f in group)  # modification times
    first = ddf.partitions[0].compute(scheduler="sync")
    assert first["path"].tolist() == [f.path for f in groups[0]]


def test_read_binary_files_records_its_read_times_and_names_a_missing_file(image_folder):
    folder, files = image_folder
    paths = sorted(files)[:3]
    frame = read_binary_files(paths, protocol="file", storage_options={})
    start, end, worker = frame.attrs[READ_TIMES]
    assert start <= end and worker is None
    missing = os.path.join(folder, "cats", "gone.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_binary_files([paths[0], missing], protocol="file", storage_options={})


def test_read_files_takes_a_glob(image_folder):
    folder, files = image_folder
    cats = dbi.read_files(f"{folder}/cats/*.png").compute(scheduler="sync")
    assert cats["path"].tolist() == sorted(p for p in files if "/cats/" in p)
    everything = dbi.read_files(f"{folder}/**/*.png").compute(scheduler="sync")
    assert everything["path"].tolist() == sorted(files)  # hidden files skipped
    _, groups = read_files_source(f"{folder}/*/01*.png")
    assert [f.relpath for group in groups for f in group] == [
        f"{kind}/{i:03d}.png" for kind in ("cats", "dogs") for i in range(10, 20)
    ]
    with pytest.raises(InputError, match="no files match"):
        dbi.read_files(f"{folder}/**/*.jpg")
    with pytest.raises(InputError, match="does not exist"):
        dbi.read_files(f"{folder}/birds")


def test_decode_images_gives_the_pixels_channels_first():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)  # height 2, width 3, RGB
    pixels[0, 1] = (255, 0, 0)
    pixels[1, 2] = (0, 0, 255)
    data = pd.Series([png_bytes(pixels)], dtype=pd.ArrowDtype(pa.binary()))
    frame = pd.DataFrame({"path": ["tiny.png"], "id": [7], "bytes": data})
    decode = dbi.decode_images(size=(2, 3))
    out = decode(frame)
    assert list(out.columns) == ["path", "id", "image"]
    tensor = dbi.image_tensor(out[["image"]])
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (1, 3, 2, 3)
    assert torch.equal(tensor[0], torch.from_numpy(pixels.transpose(2, 0, 1).copy()))
    gray = dbi.image_tensor(dbi.decode_images(size=(2, 3), mode="L")(frame)[["image"]])
    assert gray[0, 0].tolist() == [[0, 76, 0], [0, 0, 29]]  # ITU-R 601-2 luma
    # Resized: nearest neighbour doubles each pixel.
    big = dbi.image_tensor(dbi.decode_images(size=(4, 6), resample="nearest")(frame)[["image"]])
    assert torch.equal(big[0], tensor[0].repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert pickle.loads(pickle.dumps(decode))(frame).equals(out)  # a picklable step


def test_decode_images_checks_its_arguments():
    with pytest.raises(InputError, match="size"):
        dbi.decode_images(size=(0, 16))
    with pytest.raises(InputError, match="mode"):
        dbi.decode_images(mode="CMYK")
    with pytest.raises(InputError, match="resample"):
        dbi.decode_images(resample="cubic")
    with pytest.raises(InputError, match="one column"):
        dbi.image_tensor(pd.DataFrame({"a": [1], "b": [2]}))
    with pytest.raises(InputError, match="fixed-shape"):
        dbi.image_tensor(pd.DataFrame({"a": [1]}))


def test_read_files_from_s3(s3):
    fs, storage_options = s3
    files = {f"s3://batchinfer-test/scans/{d}/{i}.png": png_bytes(np.full((4, 4, 3), i, np.uint8))
             for d in ("a", "b") for i in range(3)}  # fmt: skip
    for url, data in files.items():
        fs.pipe_file(url, data)
    fs.pipe_file("s3://batchinfer-test/scans/a/_hidden.png", b"skipped")
    frame = dbi.read_files("s3://batchinfer-test/scans/**/*.png", storage_options)
    frame = frame.compute(scheduler="sync")
    assert frame["path"].tolist() == sorted(files)
    assert frame["bytes"].tolist() == [files[p] for p in sorted(files)]
    with dask.config.set({"batchinfer.partition-size": "1MiB", "batchinfer.min-partitions": 1}):
        _, groups = read_files_source("s3://batchinfer-test/scans/", storage_options)
        assert len(groups) == 2  # one partition per folder: each read with concurrent requests
    group = [f for g in groups for f in g]
    assert [f.relpath for f in group] == [p.split("/scans/")[1] for p in sorted(files)]
    assert all(f.version for f in group)  # ETags
    paths = [f.path for f in group]
    frame = read_binary_files(paths, protocol="s3", storage_options=storage_options)
    assert frame["bytes"].tolist() == [files[p] for p in sorted(files)]
    # A file that arrives later is listed (the filesystem's listings cache is not trusted).
    elsewhere = type(fs)(skip_instance_cache=True, **storage_options)  # another writer
    elsewhere.pipe_file("s3://batchinfer-test/scans/b/9.png", b"new")
    for url in ("s3://batchinfer-test/scans/**/*.png", "s3://batchinfer-test/scans/"):
        later = dbi.read_files(url, storage_options)["path"].compute(scheduler="sync")
        assert later.tolist()[-1] == "s3://batchinfer-test/scans/b/9.png", url


def _frame_with_a_corrupt_file(image_folder) -> tuple[pd.DataFrame, str]:
    folder, files = image_folder
    broken = os.path.join(folder, "dogs", "005.png")
    with open(broken, "wb") as f:
        f.write(files[broken][: len(files[broken]) // 2])  # truncated
    return dbi.read_files(folder).compute(scheduler="sync"), broken


def test_a_corrupt_file_raises_an_error_naming_it(image_folder):
    frame, broken = _frame_with_a_corrupt_file(image_folder)
    decode = dbi.decode_images(size=(16, 16))
    with pytest.raises(InputError, match=f"cannot decode image '{broken}'"):
        decode(frame)
    with pytest.raises(PartitionError, match="dogs/005.png"):
        preprocess_partition(frame, preprocess=decode, keep=["path"])


def test_a_corrupt_file_is_set_aside_with_quarantine(image_folder):
    frame, broken = _frame_with_a_corrupt_file(image_folder)
    prepared = preprocess_partition(
        frame, preprocess=dbi.decode_images(size=(16, 16)), keep=["path"], on_error="quarantine"
    )
    assert prepared.bad["path"].tolist() == [broken]
    assert prepared.bad["row"].tolist() == [frame["path"].tolist().index(broken)]
    assert broken in prepared.bad["error"].iloc[0]
    assert len(prepared.features) == len(frame) - 1 and broken not in prepared.kept["path"].values


def test_predict_scores_image_files(client, image_folder):
    folder, files = image_folder
    spec = tiny_cnn_model()
    scores = dbi.predict(
        dbi.read_files(folder), spec, preprocess=dbi.decode_images(size=(16, 16)), keep=["path"]
    ).compute()
    assert scores["path"].tolist() == sorted(files)
    model = make_cnn()
    by_hand = []
    for path in sorted(files):
        image = Image.open(path).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
        by_hand.append(np.asarray(image).transpose(2, 0, 1))
    with torch.inference_mode():
        expected = model(torch.from_numpy(np.stack(by_hand))).numpy()
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_run_job_over_a_glob_of_images_resumes_after_new_files(client, image_folder, tmp_path):
    folder, files = image_folder
    run = dict(preprocess=dbi.decode_images(size=(16, 16)), keep=["path"], client=client,
               output=str(tmp_path / "out"), progress=False)  # fmt: skip
    with dask.config.set({"batchinfer.partition-size": "4KB"}):  # a few images a partition
        first = dbi.run_job(f"{folder}/**/*.png", tiny_cnn_model(), **run)
        again = dbi.run_job(f"{folder}/**/*.png", tiny_cnn_model(), **run)
        new = os.path.join(folder, "dogs", "999.png")
        with open(new, "wb") as f:
            f.write(png_bytes(np.zeros((32, 32, 3), dtype=np.uint8)))
        third = dbi.run_job(f"{folder}/**/*.png", tiny_cnn_model(), **run)
    assert first.rows_out == len(files) and first.partitions > 1
    assert again.partitions_run == 0 and again.partitions_skipped == first.partitions
    assert third.partitions_run == 1 and third.rows_in == len(files) + 1
    back = dbi.read_output(str(tmp_path / "out")).compute()
    assert sorted(back["path"]) == sorted([*files, new])
