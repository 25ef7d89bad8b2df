"""Text generation on CPU: ``from_transformers(task="generate")`` against hand loops.

    python -m benchmarks.generate              # GPT-2-small-sized, 48 prompts, 24 new tokens
    python -m benchmarks.generate --smoke      # 2 layers, 12 prompts, 6 new tokens

One process, one model: a GPT-2-small-sized config (12 layers, 768 wide, 12
heads, a 50,257-token vocabulary; random weights) with a word-level tokenizer of
50,257 made-up words, saved with ``save_pretrained``. The prompts have
log-normal lengths (4 to 60 tokens, as a column of a Parquet file). Greedy
search; every variant is timed after a warm-up (the model already loaded), twice
(in the order A B C, then C B A: the median), and counts its new tokens up to EOS:

- ``ours``: ``run_job`` with the threads engine (one worker in this process,
  a task thread per core, one torch thread each), 2 input files, one
  partition each, batches of up to 16 rows sorted by length, written to Parquet.
  The generate spec sets ``pad_slack=None``: on CPU an encoder's
  length-sorted batch ends where rows grow by 10% past 8 rows, which would
  halve the rows per decoding step here (measured 0.62x -> 0.82x of the hand
  loop when it was switched off).
- ``hand``: a careful loop: prompts sorted by length, batches of 16, left
  padding, ``model.generate``, ``batch_decode`` (torch with all cores).
- ``pipeline``: ``pipeline("text-generation", batch_size=16)`` over the rows
  in input order (``return_full_text=False``).
- ``continuous``: ``model.generate_batch`` (``transformers``' continuous batching).
- ``ours_sampling``: ``ours`` with ``do_sample=True`` (per-row generators).

Results go to ``benchmarks/results/generate-cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

SIZES = {
    "default": {"layers": 12, "rows": 48, "new": 24, "rounds": 2},
    "smoke": {"layers": 2, "rows": 12, "new": 6, "rounds": 1},
}
VOCAB = 50_257
BATCH = 16
FILES = 2  # one partition per core
LABELS = {
    "ours": "dask-batchinfer run_job (threads engine)",
    "hand": "hand loop: length-sorted model.generate",
    "pipeline": "pipeline('text-generation'), input order",
    "continuous": "model.generate_batch (continuous batching)",
    "ours_sampling": "dask-batchinfer run_job, do_sample=True",
}
#: The ratios reported (new tokens/s of the first over the second).
PAIRS = [("ours", "hand"), ("ours", "pipeline"), ("continuous", "hand"),
         ("ours_sampling", "ours"), ("hand", "pipeline")]  # fmt: skip


def make_model(folder: str, layers: int) -> None:
    """A GPT-2-small-sized checkpoint (random weights) and a word-level tokenizer."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(VOCAB - 1)} | {"<|endoftext|>": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    config = transformers.GPT2Config(
        n_layer=layers, n_embd=768, n_head=12, vocab_size=VOCAB, n_positions=1024,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)


def prompts(rows: int) -> list[str]:
    """``rows`` prompts of log-normal lengths (4 to 60 words), seeded."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(16), 0.7, rows).astype(int), 4, 60)
    return [" ".join(f"w{i}" for i in rng.integers(0, VOCAB - 1, n)) for n in lengths]


def _ours(folder: str, texts: list[str], work: str, new: int, **options: Any) -> list[str]:
    """``texts`` are in ``<work>/in`` (the warm-up's 2 in ``<work>/warm``)."""
    import dask_batchinfer as dbi

    spec = dbi.from_transformers(folder, task="generate", max_new_tokens=new, batch_size=BATCH,
                                 **options)  # fmt: skip
    out = os.path.join(work, f"out-{time.monotonic_ns()}")
    source = os.path.join(work, "in" if len(texts) > 2 else "warm")
    dbi.run_job(source, spec, output=out, keep=["id"], progress=False)
    back = dbi.read_output(out).compute().sort_values("id")
    return back["generated_text"].tolist()


def _hand(folder: str, texts: list[str], new: int) -> list[str]:
    import torch
    import transformers

    model = _model(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
    tok.pad_token = tok.eos_token
    order = np.argsort([len(t.split()) for t in texts], kind="stable")
    done: dict[int, str] = {}
    for start in range(0, len(texts), BATCH):
        rows = order[start : start + BATCH]
        batch = tok([texts[i] for i in rows], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        decoded = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        done.update(zip(rows.tolist(), decoded, strict=True))
    return [done[i] for i in range(len(texts))]


def _pipeline(folder: str, texts: list[str], new: int) -> list[str]:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.eos_token
    pipe = transformers.pipeline("text-generation", model=_model(folder), tokenizer=tok)
    out = pipe(texts, batch_size=BATCH, return_full_text=False, max_new_tokens=new,
               do_sample=False)  # fmt: skip
    return [row[0]["generated_text"] for row in out]


def _continuous(folder: str, texts: list[str], new: int) -> list[str]:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.GenerationConfig(max_new_tokens=new, do_sample=False,
                                           eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.eos_token_id)  # fmt: skip
    ids = [tok(t)["input_ids"] for t in texts]
    out = _model(folder).generate_batch(inputs=ids, generation_config=config, warmup=False)
    by_id = {key: value.generated_tokens for key, value in out.items()}
    return tok.batch_decode([by_id[f"req_{i}"] for i in range(len(texts))],
                            skip_special_tokens=True)  # fmt: skip


_MODELS: dict[str, Any] = {}


def _model(folder: str) -> Any:
    """The hand variants' model, loaded once (outside their timings, by the warm-up)."""
    import transformers

    if folder not in _MODELS:
        _MODELS[folder] = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return _MODELS[folder]


def _run(name: str, folder: str, texts: list[str], work: str, new: int) -> list[str]:
    if name == "ours":
        return _ours(folder, texts, work, new)
    if name == "ours_sampling":
        return _ours(folder, texts, work, new, do_sample=True, seed=0)
    return {"hand": _hand, "pipeline": _pipeline, "continuous": _continuous}[name](
        folder, texts, new
    )


def sampler_ms(rows: int = BATCH, steps: int = 24) -> float:
    """Milliseconds per decoding step that the per-row generators' noise costs a batch."""
    import torch

    from dask_batchinfer.model.hf_generate import RowSampler

    sampler, scores = RowSampler(list(range(rows))), torch.zeros(rows, VOCAB)
    started = time.perf_counter()
    for _ in range(steps):
        sampler(None, scores)
    return round((time.perf_counter() - started) / steps * 1000, 2)


def _new_tokens(texts: list[str]) -> int:
    """New tokens in decoded texts (one word-level token per word; EOS was skipped)."""
    return sum(len(t.split()) for t in texts)


def main(argv: list[str] | None = None) -> dict:
    import dask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                        default="default")  # fmt: skip
    parser.add_argument("--variants", nargs="+", choices=tuple(LABELS), default=list(LABELS))
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    size = SIZES[args.mode]
    texts = prompts(size["rows"])
    settings = {"batchinfer.engine": "threads", "batchinfer.partition-size": "1B"}
    with tempfile.TemporaryDirectory() as work, dask.config.set(settings):
        folder = os.path.join(work, "gpt2")
        make_model(folder, size["layers"])
        os.makedirs(os.path.join(work, "in"))
        os.makedirs(os.path.join(work, "warm"))
        frame = pd.DataFrame({"id": range(len(texts)), "text": texts})
        frame.iloc[:2].to_parquet(os.path.join(work, "warm", "part-0.parquet"))
        for i, rows in enumerate(np.array_split(np.arange(len(texts)), FILES)):
            frame.iloc[rows].to_parquet(os.path.join(work, "in", f"part-{i}.parquet"))
        for name in args.variants:  # warm-up: load the model, make the first calls
            _run(name, folder, texts[:2], work, 2)
        outputs: dict[str, list[str]] = {}
        seconds: dict[str, list[float]] = {name: [] for name in args.variants}
        rounds = [args.variants, args.variants[::-1]] * 2
        for order in rounds[: size["rounds"]]:  # A B C, C B A, A B C
            for name in order:
                started = time.perf_counter()
                outputs[name] = _run(name, folder, texts, work, size["new"])
                seconds[name].append(time.perf_counter() - started)
                print(f"{name:14s} {seconds[name][-1]:7.1f} s", flush=True)
    runs = {}
    for name, times in seconds.items():
        tokens = _new_tokens(outputs[name])
        runs[name] = {"seconds": [round(t, 2) for t in times], "new_tokens": tokens,
                      "tokens_per_second": round(tokens / float(np.median(times)), 2)}  # fmt: skip
    report = _report(args.mode, size, runs, outputs)
    _write(report, args.results)
    return report


def _report(mode: str, size: dict, runs: dict, outputs: dict) -> dict:
    import torch
    import transformers

    def rate(name: str) -> float | None:
        return runs[name]["tokens_per_second"] if name in runs else None

    ratios = {
        f"{a}_vs_{b}": round(rate(a) / rate(b), 3)  # type: ignore[operator]
        for a, b in PAIRS
        if rate(a) and rate(b)
    }
    reference = outputs.get("hand")
    same = {
        name: round(float(np.mean([a == b for a, b in zip(texts, reference, strict=True)])), 3)
        for name, texts in outputs.items()
        if reference is not None and name != "ours_sampling"
    }
    return {
        "mode": mode,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": f"GPT-2 config, {size['layers']} layers x 768, vocab {VOCAB}, random weights",
        "rows": size["rows"],
        "max_new_tokens": size["new"],
        "batch_size": BATCH,
        "runs": runs,
        "ratios": ratios,
        "same_text_as_hand": same,
        "row_sampler_ms_per_step": sampler_ms(),
    }


def _write(report: dict, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    name = "generate-cpu" if report["mode"] == "default" else "generate-smoke"
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        "# Generation benchmark (CPU)",
        "",
        f"`python -m benchmarks.generate`: {report['model']}; {report['rows']} prompts of 4-60 "
        f"tokens, {report['max_new_tokens']} new tokens each (greedy), batches of "
        f"{report['batch_size']}; {report['machine']}; {report['versions']}.",
        "",
        "| variant | seconds (rounds) | new tokens | new tokens/s (median) | same text as hand |",
        "|---|---|---|---|---|",
    ]
    for variant, run in report["runs"].items():
        same = report["same_text_as_hand"].get(variant, "n/a (sampled)")
        times = ", ".join(map(str, run["seconds"]))
        lines.append(f"| {LABELS[variant]} | {times} | {run['new_tokens']} | "
                     f"{run['tokens_per_second']} | {same} |")  # fmt: skip
    lines += ["", "Ratios (new tokens/s):", ""]
    lines += [f"- {key}: {value}" for key, value in report["ratios"].items()]
    lines += ["", f"Sampling noise (per-row generators, {report['batch_size']} rows x {VOCAB} "
              f"tokens): {report['row_sampler_ms_per_step']} ms per decoding step."]  # fmt: skip
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
