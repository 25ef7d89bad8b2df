"""The image suite: classify a folder of PNG files (files as rows), against the peers.

    python -m benchmarks.images            # 5,000 and 20,000 64x64 PNGs, 2 repetitions
    python -m benchmarks.images --smoke    # 200 and 400 images, one repetition

Every system reads the same PNG files, decodes them with Pillow, runs the same
small CNN (:func:`benchmarks.workloads.make_cnn`, batch 512) and writes each
file's path and 10 class probabilities as Parquet:

- ``ours``: ``run_job("<folder>/*.png", spec, preprocess=dbi.decode_images(size=64))``
  with its default local cluster (files grouped into partitions by size).
- ``hand``: a single-process loop: files in chunks of 2,048, ``PIL.Image.open``,
  one tensor per chunk, the model with all cores' threads, one Parquet file per chunk.
- ``ray``: Ray Data ``read_images(include_paths=True)`` -> ``map_batches`` with
  an actor pool -> ``write_parquet``.

Each run is a fresh process (``benchmarks.variant``, workload ``W3-png``), timed
from process start to exit, with the process tree's PSS sampled; variants are
interleaved and medians reported. Steady-state images/s is the slope between
the two sizes. Results go to ``benchmarks/results/images-<mode>.{json,md}``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
from datetime import datetime, timezone
from typing import Any

import numpy as np

SIZES = {"smoke": (200, 400), "default": (5_000, 20_000)}
SIDE = 64
BATCH = 512
CHUNK = 2_048  # the hand loop's files per step


def write_pngs(folder: str, n: int) -> None:
    """``n`` 64x64 RGB PNGs (smooth colour fields with noise, about 9 KB each), seeded."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    for i in range(n):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 256, size=3)
        field = (base[:, None, None] + x[None] * rng.integers(1, 4) + y[None]) % 256
        noise = rng.integers(0, 24, size=(3, SIDE, SIDE))
        pixels = np.clip(field + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).save(os.path.join(folder, f"img-{i:06d}.png"))


def _spec() -> Any:
    import dask_batchinfer as dbi
    from benchmarks.workloads import _call, make_cnn

    return dbi.ModelSpec(load=make_cnn, predict=_call, collate=dbi.image_tensor,
                         input_columns=["image"], outputs={"probs": ("float32", 10)},
                         batch_size=BATCH, name="small-cnn-png")  # fmt: skip


def ours(input_dir: str, output_dir: str) -> dict:
    import dask_batchinfer as dbi

    result = dbi.run_job(os.path.join(input_dir, "*.png"), _spec(), output=output_dir,
                         preprocess=dbi.decode_images(size=SIDE), keep=["path"],
                         progress=False)  # fmt: skip
    return {"rows": result.rows_out, "startup_seconds": result.startup_seconds,
            "partitions": result.partitions_run}  # fmt: skip


def hand(input_dir: str, output_dir: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from benchmarks.workloads import fixed_size_lists, make_cnn

    torch.set_num_threads(os.cpu_count() or 1)
    model = make_cnn()
    paths = sorted(glob.glob(os.path.join(input_dir, "*.png")))
    os.makedirs(output_dir, exist_ok=True)
    with torch.inference_mode():
        for i, start in enumerate(range(0, len(paths), CHUNK)):
            chunk = paths[start : start + CHUNK]
            pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in chunk])
            images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            probs = np.concatenate([model(images[b : b + BATCH]).numpy()
                                    for b in range(0, len(chunk), BATCH)])  # fmt: skip
            table = pa.table({"path": chunk, "probs": fixed_size_lists(probs)})
            pq.write_table(table, os.path.join(output_dir, f"part-{i:05d}.parquet"))
    return {"rows": len(paths)}


def ray(input_dir: str, output_dir: str) -> dict:
    import pyarrow.parquet as pq
    import ray as ray_
    import torch

    from benchmarks.workloads import make_cnn

    ray_.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    class Classifier:
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.model = make_cnn()

        def __call__(self, batch: dict) -> dict:
            images = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                probs = self.model(images).numpy()
            return {"path": batch["path"], "probs": list(probs)}

    dataset = ray_.data.read_images(input_dir, mode="RGB", include_paths=True)
    predictions = dataset.map_batches(Classifier, batch_size=BATCH, batch_format="numpy",
                                      concurrency=os.cpu_count() or 1, num_cpus=0.5)  # fmt: skip
    predictions.write_parquet(output_dir)
    rows = sum(pq.read_metadata(p).num_rows for p in glob.glob(f"{output_dir}/*.parquet"))
    ray_.shutdown()
    return {"rows": rows}


VARIANTS = {"ours": ours, "hand": hand, "ray": ray}


def _outputs(folder: str) -> Any:
    """``probs`` by file name (ours' paths are absolute URLs, Ray's and the loop's paths)."""
    import pandas as pd

    files = sorted(glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True))
    frame = pd.concat([pd.read_parquet(f, columns=["path", "probs"]) for f in files])
    frame.index = [os.path.basename(str(p)) for p in frame["path"]]
    return np.stack(frame.sort_index()["probs"].to_numpy())


def main(argv: list[str] | None = None) -> dict:
    from benchmarks import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                        default="default")  # fmt: skip
    parser.add_argument("--reps", type=int)
    parser.add_argument("--skip", nargs="+", default=[], choices=("ray",))
    parser.add_argument("--results", default=run.RESULTS)
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.mode == "smoke" else 2)
    variants = ["ours", "hand"]
    if importlib.util.find_spec("ray") is not None and "ray" not in args.skip:
        variants.append("ray")
    folders = {}
    for n in SIZES[args.mode]:
        folders[n] = os.path.join(run.DATA, f"png-{n}")
        if not os.path.exists(os.path.join(folders[n], "_READY")):
            write_pngs(folders[n], n)
            open(os.path.join(folders[n], "_READY"), "w").close()
    runs = run.interleaved(run.Runner(), reps, variants, folders, "W3-png", "png", "images")
    report = _report(args, reps, variants, runs, os.path.join(run.DATA, "out"))
    _write(report, args.results)
    return report


def _report(args: argparse.Namespace, reps: int, variants: list[str], runs: dict,
            scratch: str) -> dict:  # fmt: skip
    from benchmarks import run

    lo, hi = SIZES[args.mode]
    results = run.cold_summary(runs, variants, lo, hi, "steady_images_per_s")
    for variant in variants:
        results[variant]["cold_images_per_s"] = hi / results[variant][str(hi)]["cold_seconds"]
    reference = _outputs(os.path.join(scratch, f"png-hand-{hi}"))
    correct = {
        v: float(np.max(np.abs(_outputs(os.path.join(scratch, f"png-{v}-{hi}")) - reference)))
        for v in variants if v != "hand"
    }  # fmt: skip
    return {
        "suite": "images", "mode": args.mode, "reps": reps, "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": run._git_commit(), "load_average_at_end": os.getloadavg(),
        "sizes": [lo, hi], "variants": results, "max_abs_diff_vs_hand": correct,
    }  # fmt: skip


def _write(report: dict, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    name = f"images-{report['mode']}"
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    lo, hi = report["sizes"]
    labels = {"ours": "dask-batchinfer", "hand": "hand loop (PIL + torch)",
              "ray": "Ray Data (read_images)"}  # fmt: skip
    lines = [
        f"Image suite ({report['mode']}, {report['reps']} interleaved repetitions, medians; "
        f"{report['cpus']} CPUs; {report['date']}; checkout {report['commit']}; load average "
        f"at end {report['load_average_at_end'][0]:.1f}).",
        "",
        f"64x64 RGB PNG files in one folder, decoded with Pillow, small CNN (batch {BATCH}), "
        f"path + 10 probabilities written as Parquet. Cold: process start to exit.",
        "",
        f"| system | {lo:,} images s | {hi:,} images s | cold images/s at {hi:,} | "
        f"steady images/s | peak MB at {hi:,} |",
        "|---|---|---|---|---|---|",
    ]
    v = report["variants"]
    for variant, r in v.items():
        steady = r["steady_images_per_s"]
        lines.append(
            f"| {labels[variant]} | {r[str(lo)]['cold_seconds']:.1f} | "
            f"{r[str(hi)]['cold_seconds']:.1f} | {r['cold_images_per_s']:,.0f} | "
            f"{f'{steady:,.0f}' if steady else '-'} | {r[str(hi)]['peak_pss_mb']:,.0f} |"
        )
    lines.append("")
    for peer in ("hand", "ray"):
        if peer in v and "ours" in v:
            cold = v["ours"]["cold_images_per_s"] / v[peer]["cold_images_per_s"]
            s_ours, s_peer = v["ours"]["steady_images_per_s"], v[peer]["steady_images_per_s"]
            steady = f"{s_ours / s_peer:.2f}x" if s_ours and s_peer else "-"
            lines.append(f"- dask-batchinfer / {labels[peer]}: images/s {cold:.2f}x cold at "
                         f"{hi:,}, {steady} steady")  # fmt: skip
    diffs = ", ".join(f"{labels[k]} {d:.1e}" for k, d in report["max_abs_diff_vs_hand"].items())
    lines.append(f"- outputs against the hand loop (max abs difference of probabilities): {diffs}")
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
