"""``from_transformers(task="generate")`` equals ``generate`` and the pipeline on the same model.

Tiny GPT-2 and T5 checkpoints are built from configs (random weights) with a
byte-level BPE tokenizer trained here on a few sentences, and saved with
``save_pretrained``, so the real loading code runs offline. The EOS token's
output weights are scaled so that some rows stop early and others run to
``max_new_tokens``.
"""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch
import transformers

import dask_batchinfer as dbi
from dask_batchinfer.model.hf_generate import RowSampler, row_seeds

N = 12  # max_new_tokens
PROMPTS = [
    "the quick brown fox",
    "a stitch",
    "all that glitters is not gold, and dask schedules tasks on workers all day long",
    "models",
    "café naïve résumé über",
    "",
    "over the lazy dog, one token at a time",
    "saves nine",
    "gold",
    "the lazy workers generate text one token at a time while the fox jumps",
    "a",
] * 2
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "all that glitters is not gold",
    "dask schedules tasks on workers",
    "models generate text one token at a time",
    "café naïve résumé über",
] * 4


def _tokenizer(specials, **tokens):
    """A byte-level BPE tokenizer trained on ``CORPUS`` (T5's appends ``</s>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    if "</s>" in specials:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from threads, and the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    tok = _tokenizer(["<|endoftext|>"], eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = tok.eos_token_id
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=len(tok),
                                     n_positions=64, initializer_range=0.2, bos_token_id=eos,
                                     eos_token_id=eos)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # tied embeddings: a larger EOS row makes EOS likelier
        model.transformer.wte.weight[eos] *= 4
    folder = tmp_path_factory.mktemp("gen") / "gpt2"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    tok = _tokenizer(["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>",
                     unk_token="<unk>")  # fmt: skip
    config = transformers.T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128,
                                   num_layers=2, num_heads=2, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config)
    with torch.no_grad():  # the default initialisation only ever says <pad>
        for name, weight in model.named_parameters():
            if "layer_norm" not in name:
                weight.normal_(0, 0.2)
        model.lm_head.weight[1] *= 1.2
    folder = tmp_path_factory.mktemp("gen") / "t5"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _run(spec, frame, npartitions=3):
    ddf = dd.from_pandas(frame, npartitions=npartitions)
    return dbi.predict(ddf, spec).compute(scheduler="sync")


def _alone(folder, prompts, seq2seq=False, limit=None):
    """Each prompt (its first ``limit`` tokens) through ``model.generate`` by itself: the new
    text and token count."""
    auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    texts, counts = [], []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")["input_ids"][:, :limit]
        if ids.shape[1] == 0:
            ids = torch.tensor([[tok.bos_token_id]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=N, do_sample=False)
        new = out[0, 1:] if seq2seq else out[0, ids.shape[1] :]
        eos = (new == tok.eos_token_id).nonzero()
        counts.append(int(eos[0, 0]) + 1 if len(eos) else len(new))
        texts.append(tok.decode(new, skip_special_tokens=True))
    return texts, counts


def test_greedy_equals_the_pipeline_and_generate_alone(gpt2):
    spec = dbi.from_transformers(gpt2, task="generate", max_new_tokens=N, batch_size=4)
    out = _run(spec, pd.DataFrame({"text": PROMPTS}))
    pipe = transformers.pipeline("text-generation", model=gpt2)
    expected = [pipe(p, return_full_text=False, max_new_tokens=N, do_sample=False)[0]
                ["generated_text"] for p in PROMPTS]  # fmt: skip
    texts, counts = _alone(gpt2, PROMPTS)
    assert out["generated_text"].tolist() == expected == texts
    assert out["generated_tokens"].tolist() == counts
    assert out["generated_tokens"].dtype == np.int32
    assert str(out["generated_text"].dtype).startswith("string")
    assert 0 < sum(c < N for c in counts) < len(counts)  # some rows stopped at EOS, some ran on
    assert len(set(texts)) > 5


def test_seq2seq_equals_generate_alone(t5):
    spec = dbi.from_transformers(t5, task="generate", max_new_tokens=N, batch_size=3,
                                 output_column="summary")  # fmt: skip
    out = _run(spec, pd.DataFrame({"text": PROMPTS}))
    texts, counts = _alone(t5, PROMPTS, seq2seq=True)
    assert out["summary"].tolist() == texts
    assert out["generated_tokens"].tolist() == counts
    assert 0 < sum(c < N for c in counts) < len(counts) and len(set(texts)) > 5


def test_sampling_is_reproducible_per_row(gpt2):
    frame = pd.DataFrame({"text": PROMPTS[:11]})
    spec = dbi.from_transformers(gpt2, task="generate", max_new_tokens=N, do_sample=True, seed=3)
    one = _run(spec.with_options(batch_size=11), frame, npartitions=1)
    shuffled = frame.sample(frac=1, random_state=1)
    other = _run(spec.with_options(batch_size=2, token_budget=None), shuffled, npartitions=4)
    assert other.loc[frame.index].equals(one)  # other batches, partitions and order: same rows
    greedy = _run(dbi.from_transformers(gpt2, task="generate", max_new_tokens=N), frame)
    assert (one["generated_text"] != greedy["generated_text"]).sum() > 5
    reseeded = dbi.from_transformers(gpt2, task="generate", max_new_tokens=N, do_sample=True,
                                     seed=4)  # fmt: skip
    assert (_run(reseeded, frame)["generated_text"] != one["generated_text"]).sum() > 5
    top1 = dbi.from_transformers(gpt2, task="generate", max_new_tokens=N, do_sample=True,
                                 top_k=1)  # fmt: skip
    assert _run(top1, frame).equals(greedy)  # sampling from one candidate is greedy search


def test_row_sampler_draws_from_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]])
    rows = 6000
    input_ids = torch.arange(rows)[:, None]
    seeds = row_seeds(0, input_ids, torch.ones_like(input_ids))
    assert len(set(seeds)) == rows and seeds == row_seeds(0, input_ids, torch.ones_like(input_ids))
    drawn = RowSampler(seeds)(input_ids, logits.expand(rows, -1)).argmax(dim=1)
    frequencies = np.bincount(drawn.numpy(), minlength=5) / rows
    np.testing.assert_allclose(frequencies, torch.softmax(logits, 1)[0].numpy(), atol=0.02)
    padded = torch.tensor([[7, 8, 0], [7, 8, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[5, 7, 8]])
    assert row_seeds(0, padded, mask)[0] == row_seeds(0, left, torch.tensor([[0, 1, 1]]))[0]
    assert row_seeds(0, padded, mask)[0] != row_seeds(1, padded, mask)[0]


def test_run_job_on_a_cluster_writes_the_pipeline_text(client, tmp_path, gpt2):
    frame = pd.DataFrame({"id": range(len(PROMPTS)), "prompt": PROMPTS})
    (tmp_path / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(tmp_path / "in" / f"part-{i}.parquet", index=False)
    spec = dbi.from_transformers(gpt2, task="generate", text_column="prompt", max_new_tokens=N,
                                 max_length=10, batch_size=5)  # fmt: skip
    result = dbi.run_job(str(tmp_path / "in"), spec, output=str(tmp_path / "out"), keep=["id"],
                         client=client, progress=False)  # fmt: skip
    assert (result.rows_in, result.rows_out) == (len(PROMPTS), len(PROMPTS))
    tok = transformers.AutoTokenizer.from_pretrained(gpt2)
    assert result.rows_truncated == sum(len(tok(p)["input_ids"]) > 10 for p in PROMPTS) > 0
    back = dbi.read_output(str(tmp_path / "out")).compute().sort_values("id")
    texts, counts = _alone(gpt2, PROMPTS, limit=10)  # GPT-2's tokenizer truncates on the right
    assert back["generated_text"].tolist() == texts
    assert back["generated_tokens"].tolist() == counts


def test_bad_options_and_null_prompts_name_the_fix(gpt2, t5):
    def make(**options):
        return dbi.from_transformers(gpt2, task="generate", **options)

    with pytest.raises(dbi.InputError, match=r"max_new_tokens=0: a positive integer"):
        make(max_new_tokens=0)
    with pytest.raises(dbi.InputError, match=r"\{'temperature': 0.7\} only apply when sampling"):
        make(temperature=0.7)
    with pytest.raises(dbi.InputError, match=r"top_p=1.5"):
        make(do_sample=True, top_p=1.5)
    with pytest.raises(dbi.InputError, match=r"reads 64 positions.*max_new_tokens=70"):
        make(max_new_tokens=70)
    with pytest.raises(dbi.InputError, match=r"max_length=60 .*lower max_new_tokens"):
        make(max_length=60, max_new_tokens=10)
    with pytest.raises(dbi.InputError, match=r"output_column='generated_tokens'"):
        make(output_column="generated_tokens")
    assert make(max_new_tokens=N).prepare.limit == 64 - N  # what the positions leave
    assert dbi.from_transformers(t5, task="generate").prepare.limit == 1024  # none in config
    frame = pd.DataFrame({"text": ["fine", "also fine", None, "ok"]})
    with pytest.raises(dbi.PartitionError, match=r"'text'.*null|null.*'text'"):
        _run(make(), frame, npartitions=2)


def test_prompts_run_in_full_batches(gpt2):
    """Generation's cost follows decoding steps, not padding: the token budget alone cuts
    batches, so prompts of growing lengths still fill each batch (pad_slack=None)."""
    from dask_batchinfer.pipeline.batching import BatchStats, run_loaded
    from dask_batchinfer.pipeline.loading import load_model

    spec = dbi.from_transformers(gpt2, task="generate", max_new_tokens=2, batch_size=16)
    prompts = pd.DataFrame({"text": [" ".join(["the cat sat"] * n) for n in range(1, 33)]})
    stats = BatchStats()
    run_loaded(spec, load_model(spec), spec.prepare(prompts), stats, prepared=True)
    assert stats.batches == 2  # 32 prompts, 16 a batch
