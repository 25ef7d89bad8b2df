"""``from_transformers`` image tasks (``model/hf_vision.py``) against ``transformers`` itself.

Tiny ViT and CLIP checkpoints are built from configs and saved to temporary
folders (offline); every output is compared with ``pipeline(...)`` or the
model called by hand on its image processor's output.
"""

from __future__ import annotations

import io
import os
import pickle

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from dask.base import tokenize
from PIL import Image

import dask_batchinfer as dbi
from dask_batchinfer.errors import InputError
from dask_batchinfer.model import hf_vision
from dask_batchinfer.model.hf import check_folder

transformers = pytest.importorskip("transformers")

SIZE = (40, 48)  # what decode_images makes of every file (height, width)
LABELS = {0: "cat", 1: "dog", 2: "eel"}
ATOL = 1e-5


def _vit_config(**extra):
    return transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()}, **extra,
    )  # fmt: skip


def _vit_processor(**extra):
    return transformers.ViTImageProcessor(**{"size": {"height": 32, "width": 32}, **extra})


def _save(folder, model, processor) -> str:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Folders of tiny checkpoints with their image processors, by name."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    clip = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=24,
    )  # fmt: skip
    clip_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    multi = _vit_config(problem_type="multi_label_classification")
    padded = _vit_processor(size={"height": 24, "width": 24}, do_pad=True,
                            pad_size={"height": 32, "width": 32})  # fmt: skip
    classifier = transformers.ViTForImageClassification(_vit_config())
    return {
        "classifier": _save(root / "vit-classifier", classifier, _vit_processor()),
        "multi-label": _save(
            root / "vit-multi", transformers.ViTForImageClassification(multi), _vit_processor()
        ),
        "padded": _save(root / "vit-padded", classifier, padded),
        "vit": _save(root / "vit", transformers.ViTModel(_vit_config()), _vit_processor()),
        "clip": _save(root / "clip", transformers.CLIPModel(clip), clip_processor),
    }


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """A folder of 7 PNGs of different sizes and modes (RGB, gray, RGBA), each a colour
    with noise (that a tiny random model tells apart); yields ``(folder, paths)``."""
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(1)
    shapes = [
        (40, 48, 3),
        (32, 32, 3),
        (64, 50, 3),
        (21, 37, 3),
        (45, 61, 3),
        (30, 30),
        (36, 44, 4),
    ]
    paths = []
    for i, shape in enumerate(shapes):
        path = str(folder / f"{i:02d}.png")
        colour = rng.integers(0, 256, shape[2:])
        pixels = np.clip(colour + rng.integers(-40, 40, shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return str(folder), paths


def spec_for(folder: str, task: str, **options) -> dbi.ModelSpec:
    """``hf_vision.build`` with ``from_transformers``' defaults."""
    settings = {
        "image_column": "image", "text_column": None, "output_column": None,
        "all_scores": False, "normalize": False, "batch_size": 4, "precision": "auto",
        "device": "auto", "name": None, "storage_options": None, "trust_remote_code": False,
    }  # fmt: skip
    settings.update(options)
    return hf_vision.build(folder, task, check_folder(folder, task), **settings)


def decoded(folder: str) -> pd.DataFrame:
    """The PNGs as ``decode_images`` gives them: ``path`` and ``image`` (uint8 C, H, W)."""
    frame = dbi.read_files(folder).compute(scheduler="sync")
    return dbi.decode_images(SIZE)(frame).drop(columns=["size"]).reset_index(drop=True)


def as_pil(frame: pd.DataFrame) -> list[Image.Image]:
    """What a user hands the pipeline for the decoded rows: PIL images of the arrays."""
    pixels = dbi.image_tensor(frame[["image"]]).numpy()
    return [Image.fromarray(np.ascontiguousarray(p.transpose(1, 2, 0))) for p in pixels]


def run(spec: dbi.ModelSpec, frame: pd.DataFrame, keep=("path",)) -> pd.DataFrame:
    out = dbi.predict(dd.from_pandas(frame, npartitions=2), spec, keep=list(keep))
    return out.compute(scheduler="sync").reset_index(drop=True)


def expected_classes(pipe, images) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Top label, its score, and every label's score (in id order) from the pipeline."""
    found = pipe(images)
    scores = np.array([[{d["label"]: d["score"] for d in row}[LABELS[i]] for i in range(3)]
                       for row in found])  # fmt: skip
    return [row[0]["label"] for row in found], np.array([row[0]["score"] for row in found]), scores


@pytest.mark.parametrize("name", ["classifier", "multi-label"])
def test_image_classify_matches_the_pipeline_on_decoded_images(checkpoints, pngs, name):
    folder = checkpoints[name]
    spec = spec_for(folder, "image-classify", all_scores=True)
    assert spec.outputs == {"label": pa.string(), "score": "float32", "scores": ("float32", 3)}
    frame = decoded(pngs[0])
    out = run(spec, frame)
    pipe = transformers.pipeline("image-classification", model=folder, top_k=None)
    labels, score, scores = expected_classes(pipe, as_pil(frame))
    assert out["path"].tolist() == frame["path"].tolist()
    assert out["label"].tolist() == labels
    assert len(set(labels)) > 1  # the tiny model tells the images apart
    np.testing.assert_allclose(out["score"].to_numpy(), score, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.stack(out["scores"].tolist()), scores, atol=ATOL, rtol=0)
    summed = scores.sum(axis=1)  # softmax, or independent sigmoids for multi-label
    assert np.allclose(summed, 1) == (name == "classifier")


def test_encoded_files_are_read_as_the_pipeline_reads_their_paths(checkpoints, pngs):
    folder, paths = pngs
    spec = spec_for(checkpoints["classifier"], "image-classify", image_column="bytes")
    out = dbi.predict(dbi.read_files(folder), spec, keep=["path"]).compute(scheduler="sync")
    pipe = transformers.pipeline("image-classification", model=checkpoints["classifier"], top_k=1)
    found = pipe(paths)  # opened, EXIF-rotated and made RGB by load_image
    assert out["path"].tolist() == paths
    assert out["label"].tolist() == [row[0]["label"] for row in found]
    expected = [row[0]["score"] for row in found]
    np.testing.assert_allclose(out["score"].to_numpy(), expected, atol=ATOL, rtol=0)
    files = dbi.read_files(folder).compute(scheduler="sync")[["bytes"]]
    as_objects = files.astype(object)  # bytes in a pandas object column work the same
    assert as_objects["bytes"].dtype == object
    assert spec.prepare_inputs(as_objects).equals(spec.prepare_inputs(files))


def test_pixels_travel_as_uint8_and_are_finished_like_the_processor(checkpoints, pngs):
    spec = spec_for(checkpoints["clip"], "image-embed")
    assert isinstance(spec.prepare, hf_vision.Pixels) and spec.prepare.split
    frame = decoded(pngs[0])
    prepared = spec.prepare_inputs(frame)
    assert list(prepared.columns) == [hf_vision.PIXELS] and prepared.index.equals(frame.index)
    pixels = hf_vision.collate_pixels(prepared)
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (len(frame), 3, 32, 32)
    processor = transformers.AutoImageProcessor.from_pretrained(checkpoints["clip"])
    reference = processor(images=as_pil(frame), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(spec.predict.normalize(pixels), reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "processor",
    [
        transformers.ViTImageProcessor(),
        transformers.CLIPImageProcessor(),
        transformers.ConvNextImageProcessor(),
        transformers.DeiTImageProcessor(),
        transformers.BitImageProcessor(),
        transformers.ViTImageProcessor(do_normalize=False),
    ],
    ids=["vit", "clip", "convnext", "deit", "bit", "vit-no-normalize"],
)
def test_common_processors_split_into_uint8_and_a_normalisation(processor):
    finish = hf_vision.normalization(processor)
    assert finish is not None
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (70, 90, 3), np.uint8))
    raw = processor(images=image, do_rescale=False, do_normalize=False, return_tensors="pt")
    full = processor(images=image, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(finish(raw["pixel_values"]), full, atol=ATOL, rtol=0)


def test_a_processor_that_pads_after_normalising_ships_float_pixels(checkpoints, pngs):
    folder = checkpoints["padded"]
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert hf_vision.normalization(processor) is None  # zeros padded after normalising
    spec = spec_for(folder, "image-classify")
    frame = decoded(pngs[0])
    pixels = hf_vision.collate_pixels(spec.prepare_inputs(frame))
    assert pixels.dtype == torch.float32
    out = run(spec, frame)
    pipe = transformers.pipeline("image-classification", model=folder, top_k=None)
    labels, score, _ = expected_classes(pipe, as_pil(frame))
    assert out["label"].tolist() == labels
    np.testing.assert_allclose(out["score"].to_numpy(), score, atol=ATOL, rtol=0)


def test_clip_image_embed_gives_the_normalised_image_features(checkpoints, pngs):
    folder = checkpoints["clip"]
    spec = spec_for(folder, "image-embed", normalize=True, output_column="vector")
    assert spec.outputs == {"vector": ("float32", 24)}
    frame = decoded(pngs[0])
    out = run(spec, frame)
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=as_pil(frame), return_tensors="pt")
    with torch.inference_mode():
        features = model.get_image_features(**inputs).pooler_output
    expected = torch.nn.functional.normalize(features, dim=1).numpy()
    np.testing.assert_allclose(np.stack(out["vector"].tolist()), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["vit", "classifier"])
def test_vit_image_embed_is_the_pooled_output_or_the_first_token(checkpoints, pngs, name):
    """A base checkpoint's pooler; a classifier's checkpoint has no pooler weights (the
    pooler would be random), so its first token."""
    folder = checkpoints[name]
    spec = spec_for(folder, "image-embed")
    assert spec.outputs == {"embedding": ("float32", 32)}
    frame = decoded(pngs[0])
    out = run(spec, frame)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    with torch.inference_mode():
        found = model(**processor(images=as_pil(frame), return_tensors="pt"))
    expected = found.pooler_output if name == "vit" else found.last_hidden_state[:, 0]
    np.testing.assert_allclose(np.stack(out["embedding"].tolist()), expected, atol=ATOL, rtol=0)


def test_run_job_writes_the_pipeline_labels(client, checkpoints, pngs, tmp_path):
    folder, paths = pngs
    spec = spec_for(checkpoints["classifier"], "image-classify", all_scores=True)
    output = str(tmp_path / "labels")
    result = dbi.run_job(
        dbi.read_files(folder), spec, output=output, preprocess=dbi.decode_images(SIZE),
        keep=["path"], client=client,
    )  # fmt: skip
    assert result.rows_out == len(paths)
    written = pd.read_parquet(output).sort_values("path").reset_index(drop=True)
    pipe = transformers.pipeline(
        "image-classification", model=checkpoints["classifier"], top_k=None
    )
    labels, score, scores = expected_classes(pipe, as_pil(decoded(folder)))
    assert written["path"].tolist() == paths
    assert written["label"].tolist() == labels
    np.testing.assert_allclose(written["score"].to_numpy(), score, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.stack(written["scores"].tolist()), scores, atol=ATOL, rtol=0)


def _png(shape) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "column, match",
    [
        (pd.Series([1, 2, 3], name="image"), "image column 'image' has dtype int64"),
        (pd.Series(["a", "b", "c"], name="image"), "image column 'image' has dtype"),
        (pd.Series(pd.arrays.ArrowExtensionArray(pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(6, np.float32)), 2))), "has dtype fixed_size_list"),
        (pd.Series(pd.arrays.ArrowExtensionArray(pa.array(
            [_png((4, 4, 3)), b"not a png", _png((4, 4))], pa.binary()))),
         "cannot decode the image at index 1 of column 'image'"),
    ],
    ids=["int64", "text", "float-arrays", "undecodable"],
)  # fmt: skip
def test_a_bad_image_column_is_named(checkpoints, column, match):
    spec = spec_for(checkpoints["classifier"], "image-classify")
    frame = pd.DataFrame({"image": column.rename("image")})
    with pytest.raises(InputError, match=match):
        spec.prepare_inputs(frame)
    with pytest.raises(Exception, match=match) as raised:  # through predict: the cause named
        run(spec, frame.assign(path="p"))
    assert isinstance(raised.value, InputError) or isinstance(raised.value.__cause__, InputError)


def test_a_missing_image_column_is_named(checkpoints, pngs):
    spec = spec_for(checkpoints["classifier"], "image-classify", image_column="picture")
    with pytest.raises(InputError, match=r"needs column\(s\) \['picture'\]"):
        spec.prepare_inputs(decoded(pngs[0]))


def test_build_checks_the_folder_and_its_arguments(checkpoints, tmp_path):
    model = transformers.ViTForImageClassification(_vit_config())
    model.save_pretrained(tmp_path / "bare")  # no image processor
    with pytest.raises(InputError, match="has no image processor"):
        spec_for(str(tmp_path / "bare"), "image-classify")
    with pytest.raises(InputError, match="text_column='caption'"):
        spec_for(checkpoints["clip"], "image-embed", text_column="caption")
    with pytest.raises(InputError, match="image_column=''"):
        spec_for(checkpoints["clip"], "image-embed", image_column="")


def test_specs_are_deterministic_picklable_recipes(checkpoints):
    spec = spec_for(checkpoints["clip"], "image-embed", normalize=True)
    again = spec_for(checkpoints["clip"], "image-embed", normalize=True)
    assert tokenize(spec) == tokenize(again)
    assert tokenize(spec) != tokenize(spec_for(checkpoints["clip"], "image-embed"))
    assert tokenize(pickle.loads(pickle.dumps(spec))) == tokenize(spec)
    assert spec.name == f"image-embed:{os.path.basename(checkpoints['clip'])}"
    assert len(pickle.dumps(spec)) < 2_000  # a recipe, not a model
