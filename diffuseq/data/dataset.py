"""Sequence-to-sequence data: jsonl pairs → ``input_ids`` / ``input_mask`` batches.

Reimplements DiffuSeq's ``text_datasets.py`` (docs/original.md §3.1, §3.3–§3.5): reading
``{data_dir}/{train,valid,test}.jsonl``, tokenising, the "merge and mask" layout

    ids  = [CLS] x… [SEP] [SEP] [CLS] y… [SEP] [PAD]…     (word-level: [START] … [END])
    mask =   0   0…   0     0     1   1…   1     1…

and the ``DistributedSampler`` loader.

Differences from the original (deliberate):

* Bad input is reported as :class:`~diffuseq.errors.DataError` naming file, line and field
  (the original crashes with ``KeyError``/``JSONDecodeError``, also on blank lines).
* Examples are stored unpadded in one flat ``int32`` array (plus offsets and source lengths)
  and padded in ``__getitem__``; the original keeps padded Python lists, tokenises with four
  processes on every run, and builds a random "model_emb" array per example that nothing uses
  (docs/original.md §3.5, §10.1 item 8). Items are ``{"input_ids", "input_mask"}`` dicts, not
  ``(emb, cond)`` tuples.
* The training iterator calls ``sampler.set_epoch(epoch)`` (the original never does, so every
  epoch repeats one order, docs/original.md §10.1 item 6) and the sampler is seeded with the run's seed
  (the original always uses 0). It can fast-forward to an exact position for resume.
* It does not discard a first batch (the original's ``train.py`` drops one, §10.1 item 7).
* ``shuffle=False`` gives file order for every split (the original shuffles ``valid`` even
  when ``deterministic=True``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from diffuseq.data.jsonl import iter_records
from diffuseq.data.splits import SPLITS, split_file  # noqa: F401 (re-exported)
from diffuseq.errors import ConfigError

if TYPE_CHECKING:
    from diffuseq.tokenizers.base import TextTokenizer, UnknownTokens

FIELDS = ("src", "trg")
# [CLS] [SEP] [SEP] [CLS] [SEP]: the layout with empty source and target.
MIN_SEQ_LEN = 5


# ----------------------------------------------------------------------------------------------
# Reading jsonl files
# ----------------------------------------------------------------------------------------------


def iter_pairs(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """Yield ``(src, trg)`` from a jsonl file, each ``.strip()``ped, validating every line
    (other fields of a line are ignored).

    Raises:
        DataError: see :func:`diffuseq.data.jsonl.iter_records` (1-based line numbers).
    """
    path = Path(path)
    hint = f"the '{path.stem}' split is read from {path.name} in folder {path.parent}"
    for _, record in iter_records(path, FIELDS, missing_hint=hint):
        yield record["src"].strip(), record["trg"].strip()


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """All ``(src, trg)`` pairs of a jsonl file (see :func:`iter_pairs` for validation)."""
    return list(iter_pairs(path))


# ----------------------------------------------------------------------------------------------
# One example: merge and mask (docs/original.md §3.3)
# ----------------------------------------------------------------------------------------------


def check_seq_len(seq_len: int) -> None:
    """Raise :class:`ConfigError` if ``seq_len`` cannot hold the special-token layout."""
    if seq_len < MIN_SEQ_LEN:
        raise ConfigError(
            f"--seq_len {seq_len} is too small: the layout [CLS] x… [SEP] [SEP] [CLS] y… [SEP] "
            f"needs {MIN_SEQ_LEN} positions even with empty texts. Pass --seq_len "
            f"{MIN_SEQ_LEN} or more (the paper uses 128)."
        )


def truncated_lengths(src_len: int, trg_len: int, *, budget: int) -> tuple[int, int]:
    """Closed form of the original's truncation loop.

    The loop: while ``src_len + trg_len > budget``, drop one token from the longer side, or from
    both sides if they are equal. So the longer side first shrinks towards the shorter one, then
    both shrink together (which can end one below ``budget``).

    Args:
        src_len, trg_len: lengths of ``[CLS] x…`` and ``[CLS] y…`` (end tokens removed).
        budget: ``seq_len - 3`` (room left for two end tokens and the separator), ≥ 0.

    Returns:
        The kept lengths ``(a, b)``.
    """
    a, b = src_len, trg_len
    if a + b <= budget:
        return a, b
    if a > b:
        a = max(b, budget - b)
    elif b > a:
        b = max(a, budget - a)
    if a + b <= budget:
        return a, b
    half = budget // 2  # here a == b
    return half, half


def merge_example(
    src_ids: Sequence[int], trg_ids: Sequence[int], *, seq_len: int, sep_token_id: int
) -> tuple[list[int], int]:
    """Unpadded merged ids and ``len_x`` (the number of source-side positions).

    Args:
        src_ids, trg_ids: ``encode`` outputs with specials (``[CLS] … [SEP]``), non-empty.

    Returns:
        ``(ids, len_x)`` with ``ids = src' + [end, sep] + trg' + [end]`` (length ≤ ``seq_len``),
        where ``end = src_ids[-1]``, ``src'``/``trg'`` are the truncated inputs without their
        last id, and ``len_x = len(src') + 2``.
    """
    if not src_ids or not trg_ids:
        raise ValueError("the tokenizer returned no ids; it must add [CLS]/[SEP]-style specials")
    end = src_ids[-1]
    a, b = truncated_lengths(len(src_ids) - 1, len(trg_ids) - 1, budget=seq_len - 3)
    ids = [*src_ids[:a], end, sep_token_id, *trg_ids[:b], end]
    return ids, a + 2


def merge_and_mask(
    src_ids: Sequence[int],
    trg_ids: Sequence[int],
    *,
    seq_len: int,
    sep_token_id: int,
    pad_token_id: int,
) -> tuple[list[int], list[int]]:
    """Spec §3.3 for one pair: truncate, merge, mask and pad.

    Returns:
        ``(input_ids, input_mask)``, both of length ``seq_len``: ids right-padded with
        ``pad_token_id``; mask ``0`` on the ``len_x`` source positions ``[CLS] x… [SEP] [SEP]``
        and ``1`` on the target ``[CLS] y… [SEP]`` and on every padding position.
    """
    check_seq_len(seq_len)
    ids, len_x = merge_example(src_ids, trg_ids, seq_len=seq_len, sep_token_id=sep_token_id)
    input_ids = ids + [pad_token_id] * (seq_len - len(ids))
    input_mask = [0] * len_x + [1] * (seq_len - len_x)
    return input_ids, input_mask


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


class Seq2SeqDataset(Dataset):
    """Merged examples stored compactly; padded to ``seq_len`` on access.

    Storage: ``token_ids`` int32 ``[total_tokens]`` (all unpadded merged examples back to back),
    ``offsets`` int64 ``[N + 1]`` (example ``i`` is ``token_ids[offsets[i]:offsets[i + 1]]``) and
    ``len_x`` int32 ``[N]``. Built by :func:`build_dataset`. Indexing with an int gives one
    example; indexing with a list of ints gives a batch (one vectorised gather), which is how
    :func:`make_loader` reads it.
    """

    def __init__(
        self,
        *,
        token_ids: np.ndarray,
        offsets: np.ndarray,
        len_x: np.ndarray,
        seq_len: int,
        pad_token_id: int,
    ) -> None:
        self.token_ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.len_x = np.ascontiguousarray(len_x, dtype=np.int32)
        assert self.offsets.ndim == 1 and len(self.offsets) == len(self.len_x) + 1
        assert self.offsets[-1] == len(self.token_ids)
        assert (np.diff(self.offsets) <= seq_len).all()
        self.seq_len = seq_len
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return len(self.len_x)

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, torch.Tensor]:
        """One example, or a whole batch when ``index`` is a list of indices.

        Returns:
            ``{"input_ids", "input_mask"}``, int64 ``[L]`` for an int index and ``[B, L]`` for a
            list of ``B`` indices (``L = seq_len``; ids right-padded with ``pad_token_id``, mask
            0 on the ``len_x`` source positions and 1 elsewhere).
        """
        if isinstance(index, (int, np.integer)):
            batch = self[[int(index)]]
            return {key: value[0] for key, value in batch.items()}
        rows = np.asarray(index, dtype=np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)
        starts = self.offsets[rows]  # [B]
        lengths = self.offsets[rows + 1] - starts  # [B]
        positions = np.arange(self.seq_len)  # [L]
        filled = positions < lengths[:, None]  # [B, L]
        ids = np.full((len(rows), self.seq_len), self.pad_token_id, dtype=np.int64)
        ids[filled] = self.token_ids[(starts[:, None] + positions)[filled]]
        mask = (positions >= self.len_x[rows][:, None]).astype(np.int64)  # [B, L]
        return {"input_ids": torch.from_numpy(ids), "input_mask": torch.from_numpy(mask)}

    def memory_bytes(self) -> int:
        """Bytes held by the stored arrays."""
        return self.token_ids.nbytes + self.offsets.nbytes + self.len_x.nbytes


def build_dataset(
    path: str | os.PathLike,
    tokenizer: TextTokenizer,
    *,
    seq_len: int,
    batch_tokenize: int = 10000,
    unknown: UnknownTokens | None = None,
) -> Seq2SeqDataset:
    """Read, tokenise and merge a jsonl file chunk by chunk into a :class:`Seq2SeqDataset`.

    Only one chunk of ``batch_tokenize`` pairs is held as Python objects at a time. ``unknown``
    (if given) counts the sources' and targets' tokens that became the unknown token.
    """
    check_seq_len(seq_len)
    if batch_tokenize < 1:
        raise ConfigError(f"batch_tokenize must be ≥ 1, got {batch_tokenize}.")
    sep = tokenizer.sep_token_id
    id_chunks: list[np.ndarray] = []
    length_chunks: list[np.ndarray] = []
    len_x_chunks: list[np.ndarray] = []
    pairs = iter_pairs(path)
    while chunk := list(itertools.islice(pairs, batch_tokenize)):
        sources = tokenizer.encode([src for src, _ in chunk])
        targets = tokenizer.encode([trg for _, trg in chunk])
        if unknown is not None:
            unknown.add(itertools.chain(sources, targets))
        merged = [
            merge_example(x, y, seq_len=seq_len, sep_token_id=sep) for x, y in zip(sources, targets)
        ]
        lengths = np.fromiter((len(ids) for ids, _ in merged), dtype=np.int64, count=len(merged))
        flat = itertools.chain.from_iterable(ids for ids, _ in merged)
        id_chunks.append(np.fromiter(flat, dtype=np.int32, count=int(lengths.sum())))
        length_chunks.append(lengths)
        len_x_chunks.append(np.fromiter((n for _, n in merged), dtype=np.int32, count=len(merged)))
    lengths = np.concatenate(length_chunks)
    return Seq2SeqDataset(
        token_ids=np.concatenate(id_chunks),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        len_x=np.concatenate(len_x_chunks),
        seq_len=seq_len,
        pad_token_id=tokenizer.pad_token_id,
    )


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------


class ShardedBatchSampler(DistributedSampler):
    """Batches of this rank's indices in ``DistributedSampler`` order, resumable mid-epoch.

    The order is exactly ``DistributedSampler``'s: a permutation seeded with ``seed + epoch``
    (the same on every rank) when shuffling, else file order; padded by repeating its head to
    a multiple of ``num_replicas`` unless ``drop_last``; rank ``r`` takes positions
    ``r::num_replicas``. That list is cut into consecutive batches of ``batch_size`` (the last
    one may be smaller). Each item this sampler yields is a list of indices, which
    :class:`Seq2SeqDataset` turns into a batch in one vectorised gather.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        if batch_size < 1:
            raise ConfigError(f"--batch_size must be ≥ 1, got {batch_size}.")
        self.batch_size = batch_size
        self.start_batch = 0

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Select the epoch's order; the next pass skips its first ``start_batch`` batches."""
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(super().__iter__())
        for start in range(self.start_batch * self.batch_size, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]

    def __len__(self) -> int:
        """Batches left in the current pass."""
        return max(0, -(-self.num_samples // self.batch_size) - self.start_batch)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over this rank's shard (``batch_size`` is per process, docs/original.md §3.4).

    ``loader.sampler`` is a :class:`ShardedBatchSampler` (the ``DistributedSampler`` order, cut
    into batches); the loader itself has ``batch_size=None`` because the dataset builds each
    batch in one vectorised gather.

    Args:
        shuffle: ``True`` for training; ``False`` gives file order (decoding, evaluation).
        seed: sampler seed (the run's ``--seed``; the original always used 0).
        drop_last: passed to the sampler: drop the tail instead of padding it to a multiple of
            ``world_size``. The last batch of a pass may be smaller either way.

    Yields (when iterated):
        ``{"input_ids": int64 [B, L], "input_mask": int64 [B, L]}``.
    """
    kwargs = dict(num_replicas=world_size, rank=rank, shuffle=shuffle, drop_last=drop_last)
    sampler = ShardedBatchSampler(dataset, batch_size=batch_size, seed=seed, **kwargs)
    workers = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    return DataLoader(dataset, batch_size=None, sampler=sampler, **workers)


class InfiniteBatches:
    """Endless training batches, epoch after epoch, with a resumable position.

    Each epoch calls ``loader.sampler.set_epoch(epoch)`` so the order changes per epoch,
    deterministically. ``state_dict()`` records ``{"epoch", "batch_in_epoch"}`` (batches already
    yielded in the current epoch); building a new one from it continues with exactly the batch
    an uninterrupted iteration would have yielded next. With a :class:`ShardedBatchSampler`
    (what :func:`make_loader` builds) the skipped batches are never loaded; with any other
    sampler they are loaded and discarded.
    """

    def __init__(
        self,
        loader: DataLoader,
        *,
        start_epoch: int = 0,
        skip_batches: int = 0,
        fixed_order: bool = False,
    ) -> None:
        self.loader = loader
        self.fixed_order = fixed_order  # the original: same permutation every epoch
        self.epoch = start_epoch
        self.batch_in_epoch = skip_batches
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> InfiniteBatches:
        return self

    def __next__(self) -> Any:
        while True:
            if self._iterator is None:
                self._iterator = self._start_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self.batch_in_epoch == 0:
                    raise RuntimeError("the data loader yields no batches") from None
                self.epoch += 1
                self.batch_in_epoch = 0
                self._iterator = None
                continue
            self.batch_in_epoch += 1
            return batch

    def _start_epoch(self) -> Iterator[Any]:
        sampler = self.loader.sampler
        order_epoch = 0 if self.fixed_order else self.epoch
        if isinstance(sampler, ShardedBatchSampler):
            sampler.set_epoch(order_epoch, start_batch=self.batch_in_epoch)
            return iter(self.loader)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(order_epoch)
        iterator = iter(self.loader)
        for _ in range(self.batch_in_epoch):  # any other sampler: load and discard
            next(iterator, None)
        return iterator

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batch_in_epoch": k}``: the position after the last yielded batch."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict` (restarts the underlying iterator)."""
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._iterator = None


def infinite_batches(
    loader: DataLoader, *, start_epoch: int = 0, skip_batches: int = 0, fixed_order: bool = False
) -> InfiniteBatches:
    """Endless iterator over ``loader`` for training (see :class:`InfiniteBatches`).

    ``fixed_order=True`` reproduces the original, which never called ``set_epoch``: every epoch
    visits the data in the same order.
    """
    return InfiniteBatches(
        loader, start_epoch=start_epoch, skip_batches=skip_batches, fixed_order=fixed_order
    )
