"""The tokenization cache (``--data_cache``): each split is tokenized once, then memory-mapped.

Without it every launch, on every rank, reads and tokenizes the whole jsonl file (about 10
minutes and 1.7 GB per rank for the dialogue task's 3.4M pairs). With it, rank 0 builds a
cache *entry* the first time (a :class:`~diffuseq.tokenizers.word_memo.WordMemo` makes the build about
twice as fast as the uncached path), the other ranks wait for it and every rank maps the same
files read-only; relaunches and resumes find the entry and map it in seconds.

``--data_cache``: ``auto`` (default) = ``$XDG_CACHE_HOME/diffuseq/data``, else
``~/.cache/diffuseq/data``; ``off`` = tokenize every launch (:func:`diffuseq.data.dataset.build_dataset`);
any other value is the cache folder.

An entry is the folder ``{cache}/{split}-{key}`` holding ``token_ids.npy`` (int32 ``[T]``),
``offsets.npy`` (int64 ``[N + 1]``), ``len_x.npy`` (int32 ``[N]``), exactly the arrays of
:class:`~diffuseq.data.dataset.Seq2SeqDataset`, and ``meta.json`` (what the key was computed from, the
unknown-token counts, the build time). ``key`` hashes

* the file's size, modification time and BLAKE2b digest of its bytes (a file changed in place,
  even to the same size, gets a new entry; so does a touched one);
* the tokenizer's identity (:meth:`~diffuseq.tokenizers.base.TextTokenizer.fingerprint`: its
  class, vocabulary, special tokens and library version);
* ``seq_len`` and :data:`FORMAT_VERSION`.

An entry is built in a temporary folder beside it and renamed into place when complete, so an
interrupted build leaves no entry and two concurrent builds of one entry are harmless. An entry
whose files do not match its ``meta.json`` is deleted and rebuilt. Old entries are never
deleted automatically (delete the folder to reclaim the space).

The data order does not depend on the cache: the arrays are identical to the uncached build,
so the sampler, the batches and a resumed run are bit-identical.

Why not Hugging Face ``datasets`` (Arrow files, cached ``map``): the examples are already stored
as three flat numpy arrays, about 200 bytes per pair; ``np.load(mmap_mode="r")`` maps them with
no conversion and no new dependency, and the batch gather of ``Seq2SeqDataset`` works on them
unchanged. ``datasets`` would add a package and its dependencies, a conversion to Arrow and
back for every batch (or a second copy of the arrays), and its cache fingerprints (file paths
and times, a pickle hash of the mapped function) are not the key needed here (content hash,
tokenizer identity, ``seq_len``), which would have to be checked on top. Measured in
``bench/RESULTS.md`` ("Data loading").

Other ranks wait for rank 0's build in a broadcast, within the process group's timeout
(30 minutes, :func:`diffuseq.runtime.dist.init`; the 3.4M-pair build takes about a minute).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffuseq.data.dataset import Seq2SeqDataset, build_dataset, check_seq_len, iter_pairs
from diffuseq.errors import ConfigError, DataError, UserError
from diffuseq.runtime import dist
from diffuseq.runtime.logger import get_logger
from diffuseq.tokenizers.word_memo import flatten, merge_flat, word_memo_for

if TYPE_CHECKING:
    from diffuseq.tokenizers.base import TextTokenizer, UnknownTokens

__all__ = ["FORMAT_VERSION", "cache_root", "entry_key", "load_split", "open_entry", "ensure_entry"]

#: Bumped whenever the entry layout or the build changes what an entry holds.
FORMAT_VERSION = 1
ARRAYS = {"token_ids": np.int32, "offsets": np.int64, "len_x": np.int32}
META = "meta.json"
CHUNK_PAIRS = 20_000  # pairs tokenized per batch while building
_HASH_BLOCK = 1 << 20


def cache_root(setting: str) -> Path | None:
    """The cache folder ``--data_cache`` names (``None`` for ``off``)."""
    if setting == "off":
        return None
    if setting == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "diffuseq" / "data"
    return Path(setting).expanduser()


# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "mtime_ns", "blake2b"}`` of a file (its bytes hashed in 1 MiB blocks)."""
    digest = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as err:
        raise DataError(str(path), None, None, f"cannot read the file ({err.strerror}).") from None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "blake2b": digest.hexdigest()}


def entry_key(
    file: dict[str, Any], tokenizer: TextTokenizer, *, seq_len: int
) -> tuple[str, dict[str, Any]]:
    """``(key, what it hashes)`` of the entry for a file (:func:`file_identity`)."""
    identity = {
        "format": FORMAT_VERSION,
        "file": file,
        "tokenizer": tokenizer.fingerprint(),
        "seq_len": seq_len,
    }
    text = json.dumps(identity, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest(), identity


# ----------------------------------------------------------------------------------------------
# Entries
# ----------------------------------------------------------------------------------------------


class EntryError(Exception):
    """An entry folder that is incomplete or inconsistent (it is rebuilt)."""


def open_entry(
    entry: Path, *, seq_len: int, pad_token_id: int, vocab_size: int | None = None
) -> tuple[Seq2SeqDataset, dict[str, Any]]:
    """Map an entry's arrays read-only; ``(dataset, meta)``.

    Raises:
        EntryError: a file is missing or unreadable, the arrays disagree with ``meta.json``, or
            their contents are impossible (:func:`_check_contents`).
    """
    try:
        meta = json.loads((entry / META).read_text(encoding="utf-8"))
        arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    except (OSError, ValueError) as err:
        raise EntryError(f"{entry}: {err}") from None
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(key), int) and not isinstance(meta.get(key), bool)
        for key in _META_COUNTS
    ):
        raise EntryError(f"{entry}: {META} is not an object with the integer counts {_META_COUNTS}")
    n, total = meta.get("examples"), meta.get("tokens")
    shapes = {name: array.shape for name, array in arrays.items()}
    expected = {
        "token_ids": (total,),
        "offsets": (n + 1,) if n is not None else None,
        "len_x": (n,),
    }
    wrong_type = [name for name, kind in ARRAYS.items() if arrays[name].dtype != kind]
    if meta.get("format") != FORMAT_VERSION or shapes != expected or wrong_type:
        raise EntryError(
            f"{entry}: arrays {shapes} do not match {META} ({n} examples, {total} tokens)"
        )
    offsets = arrays["offsets"]
    if n and (offsets[0] != 0 or offsets[-1] != total):
        raise EntryError(f"{entry}: offsets do not span token_ids")
    _check_contents(entry, arrays, seq_len=seq_len, vocab_size=vocab_size)
    dataset = Seq2SeqDataset(**arrays, seq_len=seq_len, pad_token_id=pad_token_id)
    return dataset, meta


#: The integer counts ``meta.json`` must hold.
_META_COUNTS = ("examples", "tokens", "unknown_tokens", "text_tokens")


def _check_contents(
    entry: Path, arrays: dict[str, np.ndarray], *, seq_len: int, vocab_size: int | None
) -> None:
    """What :func:`build_entry` always writes, checked in one vectorised pass (O(tokens)):
    every example is 1..``seq_len`` ids long (offsets non-decreasing), its source length
    ``len_x`` lies in ``[1, length]``, and every id is in ``[0, vocab_size)``.

    Raises:
        EntryError: naming the first broken rule (the entry is then rebuilt).
    """
    lengths = np.diff(arrays["offsets"])  # [N]
    len_x = arrays["len_x"]  # [N]
    ids = arrays["token_ids"]  # [T]
    problems = [
        (len(lengths) and (lengths < 1).any(), "offsets are not increasing"),
        (
            len(lengths) and (lengths > seq_len).any(),
            f"an example is longer than seq_len {seq_len}",
        ),
        (len(len_x) and ((len_x < 1) | (len_x > lengths)).any(), "a source length is out of range"),
        (len(ids) and int(ids.min()) < 0, "a token id is negative"),
        (
            vocab_size is not None and len(ids) and int(ids.max()) >= vocab_size,
            f"a token id is not below the vocabulary size {vocab_size}",
        ),
    ]
    for broken, what in problems:
        if broken:
            raise EntryError(f"{entry}: {what}")


class _NpyWriter:
    """A 1-D ``.npy`` file written chunk by chunk (its header rewritten with the final length;
    numpy pads the header so that the length always fits)."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self.handle = open(path, "wb")
        self._header(0)
        self.header_bytes = self.handle.tell()

    def _header(self, count: int) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self.handle, {**header, "shape": (count,)})

    def write(self, values: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.count += len(values)

    def close(self) -> None:
        self.handle.seek(0)
        self._header(self.count)
        assert self.handle.tell() == self.header_bytes, "the .npy header changed its length"
        self.handle.close()


def build_entry(
    path: Path, tokenizer: TextTokenizer, folder: Path, *, seq_len: int, identity: dict[str, Any]
) -> None:
    """Tokenize ``path`` into the (new, empty) folder ``folder``: the three arrays, then
    ``meta.json``. Only one chunk of :data:`CHUNK_PAIRS` pairs is in memory at a time."""
    start = time.monotonic()
    memo = word_memo_for(tokenizer)
    specials = np.array(sorted(tokenizer.special_token_ids - {tokenizer.unk_token_id}), np.int32)
    unk = tokenizer.unk_token_id
    writers = {name: _NpyWriter(folder / f"{name}.npy", kind) for name, kind in ARRAYS.items()}
    unknown = total = 0
    offset = 0
    writers["offsets"].write(np.zeros(1, dtype=np.int64))
    pairs = iter_pairs(path)
    try:
        while chunk := list(itertools.islice(pairs, CHUNK_PAIRS)):
            sides = ([src for src, _ in chunk], [trg for _, trg in chunk])
            if memo is not None:
                src, trg = (memo.encode_flat(texts) for texts in sides)
            else:
                src, trg = (flatten(tokenizer.encode(texts)) for texts in sides)
            for ids, _ in (src, trg):
                total += len(ids) - int(np.isin(ids, specials).sum())
                unknown += 0 if unk is None else int((ids == unk).sum())
            ids, lengths, len_x = merge_flat(
                src, trg, seq_len=seq_len, sep_token_id=tokenizer.sep_token_id
            )
            writers["token_ids"].write(ids)
            writers["offsets"].write(offset + np.cumsum(lengths))
            writers["len_x"].write(len_x)
            offset += int(lengths.sum())
    finally:
        for writer in writers.values():
            writer.close()
    meta = {
        **identity,
        "source": str(path),
        "examples": writers["len_x"].count,
        "tokens": writers["token_ids"].count,
        "unknown_tokens": unknown,
        "text_tokens": total,
        "memo_words": memo.words if memo is not None else None,
        "build_seconds": round(time.monotonic() - start, 3),
        "tokenizer_description": tokenizer.describe(),
    }
    (folder / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def ensure_entry(root: Path, path: Path, tokenizer: TextTokenizer, *, seq_len: int) -> Path:
    """The entry of ``path`` in ``root``, built (or rebuilt, if corrupt) when needed.

    Raises:
        ConfigError: the cache folder cannot be created or written (names the folder).
    """
    log = get_logger("data")
    key, identity = entry_key(file_identity(path), tokenizer, seq_len=seq_len)
    entry = root / f"{path.stem}-{key}"
    if entry.is_dir():
        try:
            open_entry(
                entry,
                seq_len=seq_len,
                pad_token_id=tokenizer.pad_token_id,
                vocab_size=tokenizer.vocab_size,
            )
            log.info("tokenization cache: reusing %s for %s", entry, path)
            return entry
        except EntryError as err:
            log.warning("tokenization cache: rebuilding a damaged entry (%s)", err)
            _remove(entry, root)
    tmp = root / f".tmp-{entry.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(root, entry.name)
        tmp.mkdir()
    except OSError as err:
        raise _unwritable(root, err) from None
    try:
        log.info("tokenization cache: tokenizing %s into %s", path, entry)
        build_entry(path, tokenizer, tmp, seq_len=seq_len, identity=identity)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            log.info("tokenization cache: %s was built concurrently; using it", entry)
    except OSError as err:
        raise _unwritable(root, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _unwritable(root: Path, err: OSError) -> ConfigError:
    return ConfigError(
        f"--data_cache {root}: cannot write the tokenization cache there "
        f"({err.strerror or err}). Pass a writable folder (--data_cache DIR), or --data_cache "
        "off to tokenize on every launch."
    )


def _remove(entry: Path, root: Path) -> None:
    try:
        shutil.rmtree(entry)
    except OSError as err:
        raise _unwritable(root, err) from None


def _remove_stale_builds(root: Path, name: str) -> None:
    """Delete temporary folders of ``name`` left by builds whose process is gone."""
    for tmp in root.glob(f".tmp-{name}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# What training calls
# ----------------------------------------------------------------------------------------------


def load_split(
    path: str | os.PathLike,
    tokenizer: TextTokenizer,
    *,
    seq_len: int,
    cache: str = "auto",
    unknown: UnknownTokens | None = None,
) -> Seq2SeqDataset:
    """The dataset of one split, through the cache named by ``cache`` (``--data_cache``).

    With ``off``, :func:`~diffuseq.data.dataset.build_dataset`. Otherwise rank 0 finds or builds the
    entry and tells the other ranks where it is (or that it failed: then every rank raises);
    each rank maps it. A rank that cannot see rank 0's entry (a cache folder that is not shared
    between machines) builds its own. ``unknown`` gets the counts recorded in the entry.
    """
    path = Path(path)
    root = cache_root(cache)
    if root is None:
        return build_dataset(path, tokenizer, seq_len=seq_len, unknown=unknown)
    check_seq_len(seq_len)
    entry, failure = None, None
    if dist.is_main():
        try:
            entry = ensure_entry(root, path, tokenizer, seq_len=seq_len)
        except UserError as err:
            failure = err
        except Exception as err:  # tell the others before raising; they would wait otherwise
            dist.broadcast_object(("error", f"{type(err).__name__}: {err}"))
            raise
    message = dist.broadcast_object(("error", str(failure)) if failure else ("ok", str(entry)))
    if failure is not None:
        raise failure
    if message[0] == "error":
        raise UserError(f"rank 0 failed to prepare the data: {message[1]}")
    entry = Path(message[1])
    try:
        dataset, meta = open_entry(
            entry,
            seq_len=seq_len,
            pad_token_id=tokenizer.pad_token_id,
            vocab_size=tokenizer.vocab_size,
        )
    except EntryError:
        if dist.is_main():
            raise
        entry = ensure_entry(root, path, tokenizer, seq_len=seq_len)
        dataset, meta = open_entry(
            entry,
            seq_len=seq_len,
            pad_token_id=tokenizer.pad_token_id,
            vocab_size=tokenizer.vocab_size,
        )
    if unknown is not None:
        unknown.add_counts(unknown=meta["unknown_tokens"], total=meta["text_tokens"])
    return dataset
