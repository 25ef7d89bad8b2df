"""Token ids as compact arrays: made on the CPU pool, padded per batch on the model worker.

A text model's ``prepare`` step (see ``ModelSpec.prepare``) tokenises a partition
once, where preprocessing runs, into a frame of two columns:

- ``input_ids``: each row's token ids, an Arrow ``list<int32>`` column (one
  flat int32 buffer and its offsets: a few bytes per token on the wire, no
  Python lists or strings);
- ``tokens``: each row's length before truncation, counted up to the model's
  limit + 1 (so truncated rows can be counted), int32.

On the model worker :func:`collate_tokens` views that column as
:class:`TokenIds` without copying; batching sorts and slices it like any
other input, and :meth:`TokenIds.padded` builds each batch's padded block
(``input_ids`` and ``attention_mask``, trimmed to the batch's longest row)
with a few vectorised numpy operations: no tokenizer, no per-row Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "IDS",
    "LENGTHS",
    "TYPES",
    "TokenIds",
    "collate_tokens",
    "full_lengths",
    "token_frame",
]

#: The prepared frame's columns (``token_type_ids`` only for text pairs).
IDS, LENGTHS, TYPES = "input_ids", "tokens", "token_type_ids"


def token_frame(
    ids: Sequence[Sequence[int]],
    lengths: np.ndarray,
    index: pd.Index,
    types: Sequence[Sequence[int]] | None = None,
) -> pd.DataFrame:
    """The prepared frame for token ids ``ids`` (truncated) and full ``lengths``; ``types``:
    each token's segment (0 or 1) for models that read text pairs."""
    columns: dict[str, Any] = {
        IDS: pd.arrays.ArrowExtensionArray(pa.array(ids, type=pa.list_(pa.int32()))),
        LENGTHS: np.asarray(lengths, dtype=np.int32),
    }
    if types is not None:
        columns[TYPES] = pd.arrays.ArrowExtensionArray(pa.array(types, type=pa.list_(pa.int8())))
    return pd.DataFrame(columns, index=index)


def full_lengths(
    tokenizer: Any, texts: Sequence[str], ids: Sequence[Sequence[int]], limit: int
) -> np.ndarray:
    """Each row's length in tokens before truncation to ``limit``, counted up to ``limit + 1``:
    ``ids`` are the rows tokenised with ``max_length=limit``; only the rows at the limit are
    tokenised again (with ``limit + 1``) to learn whether they were longer."""
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    full = np.flatnonzero(lengths >= limit)
    if len(full):
        longer = tokenizer(
            [texts[int(i)] for i in full],
            truncation=True,
            max_length=limit + 1,
            return_attention_mask=False,
        )["input_ids"]
        lengths[full] = [len(row) for row in longer]
    return lengths


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """Rows of token ids: row ``i`` is ``values[starts[i]:stops[i]]``.

    ``lengths`` are the rows' lengths before truncation (see the module docstring).
    Slicing (``ids[a:b]``) and :meth:`take` reorder the row bounds only.
    """

    values: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    lengths: np.ndarray
    #: Each token's segment (text pairs), aligned with ``values``; None for single texts.
    types: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, rows: slice) -> TokenIds:
        return dataclasses.replace(
            self, starts=self.starts[rows], stops=self.stops[rows], lengths=self.lengths[rows]
        )

    def take(self, order: np.ndarray) -> TokenIds:
        """These rows in ``order``."""
        return dataclasses.replace(
            self, starts=self.starts[order], stops=self.stops[order], lengths=self.lengths[order]
        )

    def padded(self) -> dict[str, Any]:
        """``input_ids`` (int64) and ``attention_mask`` (int64) tensors, as wide as the longest row.

        Padding positions hold 0 and are masked; a model whose padding id is
        not 0 sets it from the mask (see ``sentence_encoder``).
        """
        import torch

        sizes = self.stops - self.starts
        width = int(sizes.max()) if len(sizes) else 0
        mask = np.arange(width) < sizes[:, None]
        ids = np.zeros((len(sizes), width), dtype=np.int64)
        # the flat positions of every real token, row after row (row-major, as ``mask``)
        firsts = np.cumsum(sizes) - sizes
        positions = np.arange(int(sizes.sum())) + np.repeat(self.starts - firsts, sizes)
        ids[mask] = self.values[positions]
        padded = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }
        if self.types is not None:
            types = np.zeros((len(sizes), width), dtype=np.int64)
            types[mask] = self.types[positions]
            padded["token_type_ids"] = torch.from_numpy(types)
        return padded


def collate_tokens(frame: pd.DataFrame) -> TokenIds:
    """A prepared frame (see :func:`token_frame`) as :class:`TokenIds`, without copying the ids."""
    chunked = frame[IDS].array.__arrow_array__()
    array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    lengths = frame[LENGTHS].to_numpy(dtype=np.int64)
    types = None
    if TYPES in frame.columns:  # the same offsets as the ids
        chunked = frame[TYPES].array.__arrow_array__()
        typed = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        if typed.offsets.to_numpy().astype(np.int64).tolist() != offsets.tolist():
            types = np.zeros(len(values), dtype=np.int8)  # laid out apart: place row by row
            for start, segment in zip(offsets[:-1], typed.to_pylist(), strict=True):
                types[start : start + len(segment)] = segment
        else:
            types = typed.values.to_numpy(zero_copy_only=False)
    return TokenIds(values, offsets[:-1], offsets[1:], lengths, types)
