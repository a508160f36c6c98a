"""Token files and batches: a corpus encoded once into a flat file, memory-mapped, cut into windows.

As nanoGPT does (Karpathy, ``data/*/prepare.py`` and ``get_batch`` in ``train.py``): the corpus
is encoded once into one flat array of token ids on disk; training memory-maps it (the OS pages
in what is read, so a file larger than memory works) and takes windows of T + 1 consecutive
tokens, x = the first T and y = the last T, so y[t] is the token after x[t].

File layout, little-endian: a 32-byte header, then the N ids.

    offset  0   8 bytes  magic b"XCTOKENS"
            8   uint32   version, 1
           12   uint32   bytes per id: 2 (uint16) or 4 (uint32)
           16   uint64   N, the number of tokens
           24   uint64   V, the vocabulary size (every id < V)
           32   N ids

The ids are uint16 when V <= 65536 (GPT-2's 50257 tokens fit) and uint32 above: for every
vocabulary up to 65536 tokens that halves the file, the page cache and the reads against a
uint32 file. A file whose magic, version, id width or size disagrees with its header is a
ValueError naming the file.

Batches (:class:`Batches`), seeded and deterministic:

- random (``sample(step)``): B windows at uniform random offsets. Rank r of p draws only from
  shard r, the r-th of p contiguous equal parts of the file, so no two ranks ever read the same
  token. The generator of a step is seeded with (seed, p, r, step): the same seed gives the
  same batches, and any step can be recomputed alone (a resumed run needs no replay).
- sequential (``epoch()``): the windows at offsets 0, T, 2T, ... (each x starts where the last
  one ended), in order. Global batch i is windows i p B ... (i + 1) p B - 1, of which rank r
  takes the r-th block of B; every rank yields the same number of batches, and the windows that
  cannot fill a global batch are dropped.

:func:`works` and :func:`held_out_split` cut the shared Shakespeare corpus by whole works, the
held-out split its README recommends.

>>> b = Batches(np.arange(100), batch_size=2, context=4, seed=0)
>>> x, y = b.sample(0)
>>> bool((y[:, :-1] == x[:, 1:]).all()), x.shape    # y is x shifted by one token
(True, (2, 4))
>>> [x.tolist() for x, _ in b.epoch()][:2]
[[[0, 1, 2, 3], [4, 5, 6, 7]], [[8, 9, 10, 11], [12, 13, 14, 15]]]
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import regex

from ref_numpy._check import check_nonneg_int, check_positive_int

MAGIC = b"XCTOKENS"
VERSION = 1
HEADER = np.dtype([("magic", "S8"), ("version", "<u4"), ("itemsize", "<u4"),
                   ("count", "<u8"), ("vocab_size", "<u8")])           # 32 bytes
ID_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}                   # bytes per id -> dtype


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest id type that holds every id below ``vocab_size``.

    >>> id_dtype(50257), id_dtype(65536), id_dtype(65537)
    (dtype('uint16'), dtype('uint16'), dtype('uint32'))
    """
    vocab_size = check_positive_int("vocab_size", vocab_size)
    if vocab_size > 1 << 32:
        raise ValueError(f"vocab_size: expected at most 2**32 tokens but got {vocab_size}")
    return ID_DTYPES[2 if vocab_size <= 1 << 16 else 4]


def write_tokens(path, ids, vocab_size: int) -> None:
    """Write ``ids`` (a 1-D integer array or list, every id in [0, vocab_size)) to ``path``."""
    dtype = id_dtype(vocab_size)
    ids = np.asarray(ids)
    if ids.size == 0:
        ids = ids.astype(np.int64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids: expected a 1-D integer array but got {ids.ndim}-D {ids.dtype}")
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
        raise ValueError(f"ids[{bad[0]}]: expected an id in [0, {vocab_size}) but got "
                         f"{ids[bad[0]]}")
    header = np.array([(MAGIC, VERSION, dtype.itemsize, ids.size, vocab_size)], dtype=HEADER)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(ids.astype(dtype).tobytes())


@dataclass(frozen=True)
class TokenFile:
    """A token file opened by :func:`open_tokens`; ``tokens`` is a read-only memory map."""
    path: str
    tokens: np.ndarray      # (N,) uint16 or uint32, mapped from the file
    vocab_size: int         # every id is below it

    def __len__(self) -> int:
        return len(self.tokens)


def open_tokens(path) -> TokenFile:
    """Memory-map a file written by :func:`write_tokens`, after checking its header."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < HEADER.itemsize:
        raise ValueError(f"{path}: {size} bytes is shorter than the {HEADER.itemsize}-byte "
                         f"header of a token file (truncated, or not a token file)")
    header = np.fromfile(path, dtype=HEADER, count=1)[0]
    if header["magic"] != MAGIC:
        raise ValueError(f"{path}: expected a token file (magic {MAGIC!r}) but the first 8 "
                         f"bytes are {bytes(header['magic'])!r}")
    if header["version"] != VERSION:
        raise ValueError(f"{path}: expected token file version {VERSION} but got "
                         f"{header['version']}")
    itemsize, count, vocab_size = (int(header[k]) for k in ("itemsize", "count", "vocab_size"))
    if itemsize not in ID_DTYPES or vocab_size < 1 or id_dtype(vocab_size).itemsize != itemsize:
        raise ValueError(f"{path}: the header's id width {itemsize} bytes does not fit its "
                         f"vocabulary of {vocab_size} tokens (expected 2 up to 65536, else 4)")
    expected = HEADER.itemsize + count * itemsize
    if size != expected:
        raise ValueError(f"{path}: the header announces {count} tokens of {itemsize} bytes "
                         f"({expected} bytes with the header) but the file has {size} bytes")
    tokens = (np.memmap(path, dtype=ID_DTYPES[itemsize], mode="r", offset=HEADER.itemsize,
                        shape=(count,)) if count else np.zeros(0, ID_DTYPES[itemsize]))
    return TokenFile(path, tokens, vocab_size)


@dataclass(frozen=True)
class Batches:
    """(x, y) batches of windows from one flat token array; see the module docstring."""
    tokens: np.ndarray      # (N,) ids: TokenFile.tokens, or any 1-D integer array
    batch_size: int         # B windows per batch (per rank)
    context: int            # T tokens in x and in y; a window reads T + 1
    seed: int = 0           # the same seed gives the same random batches
    rank: int = 0           # this process, 0 <= rank < world_size
    world_size: int = 1     # p processes, each with its own shard and blocks

    def __post_init__(self):
        tokens = self.tokens
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or not np.issubdtype(
                tokens.dtype, np.integer):
            got = (f"{tokens.ndim}-D {tokens.dtype}" if isinstance(tokens, np.ndarray)
                   else type(tokens).__name__)
            raise TypeError(f"tokens: expected a 1-D integer array but got {got}")
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("context", self.context)
        check_nonneg_int("seed", self.seed)
        check_positive_int("world_size", self.world_size)
        check_nonneg_int("rank", self.rank)
        if self.rank >= self.world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size = {self.world_size} but "
                             f"got {self.rank}")

    def shard(self) -> tuple[int, int]:
        """[start, stop) of this rank's part of the tokens, for random batches.

        >>> Batches(np.arange(10), 1, 2, rank=1, world_size=3).shard()
        (3, 6)
        """
        n, p, r = len(self.tokens), self.world_size, self.rank
        return r * n // p, (r + 1) * n // p

    def windows(self, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x, y of shape (len(offsets), T), int64, for o = offsets[i]:
        x[i] = tokens[o : o + T],  y[i] = tokens[o + 1 : o + T + 1]."""
        rows = self.tokens[offsets[:, None] + np.arange(self.context + 1)].astype(np.int64)
        return rows[:, :-1], rows[:, 1:]

    def random_offsets(self, step: int) -> np.ndarray:
        """The B window offsets of random batch ``step``, inside this rank's shard.

        >>> Batches(np.arange(100), 3, 8, seed=1).random_offsets(0).tolist()
        [47, 30, 33]
        """
        step = check_nonneg_int("step", step)
        start, stop = self.shard()
        room = stop - start - self.context          # offsets start .. stop - T - 1
        if room < 1:
            raise ValueError(f"context: a window of {self.context + 1} tokens does not fit in "
                             f"the {stop - start} tokens of rank {self.rank}'s shard (of "
                             f"{len(self.tokens)} tokens over {self.world_size} ranks)")
        rng = np.random.default_rng([self.seed, self.world_size, self.rank, step])
        return start + rng.integers(0, room, size=self.batch_size)

    def sample(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Random batch ``step``: x, y of shape (B, T), int64."""
        return self.windows(self.random_offsets(step))

    def num_epoch_batches(self) -> int:
        """Batches per rank in one sequential pass.

        >>> Batches(np.arange(100), 2, 4, world_size=2).num_epoch_batches()   # 24 windows
        6
        """
        windows = (len(self.tokens) - 1) // self.context
        return windows // (self.world_size * self.batch_size)

    def epoch_offsets(self, index: int) -> np.ndarray:
        """The B window offsets of this rank's sequential batch ``index``."""
        index = check_nonneg_int("index", index)
        if index >= self.num_epoch_batches():
            raise ValueError(f"index: expected a batch below {self.num_epoch_batches()} (the "
                             f"batches per rank in one pass) but got {index}")
        first = (index * self.world_size + self.rank) * self.batch_size
        return (first + np.arange(self.batch_size)) * self.context

    def epoch(self):
        """One sequential pass: this rank's batches (x, y) in order."""
        if self.num_epoch_batches() == 0:
            need = self.world_size * self.batch_size * self.context + 1
            raise ValueError(f"batch_size: one global batch of {self.world_size} x "
                             f"{self.batch_size} windows of {self.context} + 1 tokens needs "
                             f"{need} tokens but there are {len(self.tokens)}")
        for index in range(self.num_epoch_batches()):
            yield self.windows(self.epoch_offsets(index))


# ----------------------------------------------------------------------------- the corpus

_BYLINE = regex.compile(r"^by William Shakespeare$", regex.MULTILINE)
# The title at the end of the line before the by-line: the works were concatenated without
# final newlines, so a title may follow the last line of the work before ("[Exeunt.]MACBETH"),
# including a closing "THE END" ("THE ENDKING JOHN").
_TITLE = regex.compile(r"(?:THE END)?([A-Z][A-Z ,;']*)$")


def works(text: str) -> list[str]:
    """Cut the shared Shakespeare corpus into its works: each starts at its title, the line
    (or the end of the line) before "by William Shakespeare". Text before the first title
    belongs to the first work. The file holds 42 works (its README counts 43; Venus and Adonis
    is not in it), from All's Well That Ends Well to The Winter's Tale.

    >>> [w[:9] for w in works("HAMLET\\n\\nby William Shakespeare\\nAct 1.[Exit.]MACBETH\\n"
    ...                       "\\nby William Shakespeare\\nAct 1.")]
    ['HAMLET\\n\\nb', 'MACBETH\\n\\n']
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str but got {type(text).__name__}")
    starts = []
    for byline in _BYLINE.finditer(text):
        before = text[:byline.start()].rstrip("\n")
        line_start = before.rfind("\n") + 1
        title = _TITLE.search(before, line_start)
        if title is not None:
            starts.append(title.start(1))
    if starts and starts[0] != 0:
        starts[0] = 0
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def held_out_split(text: str, held_out: int = 5) -> tuple[str, str]:
    """(train, held-out): the corpus split by whole works, the last ``held_out`` works held out
    (whole works, so that no held-out line was seen in training).

    >>> text = "A\\nby William Shakespeare\\nx\\nB\\nby William Shakespeare\\ny"
    >>> held_out_split(text, 1)
    ('A\\nby William Shakespeare\\nx\\n', 'B\\nby William Shakespeare\\ny')
    """
    held_out = check_positive_int("held_out", held_out)
    parts = works(text)
    if len(parts) <= held_out:
        raise ValueError(f"text: expected more than {held_out} works (titles followed by "
                         f"'by William Shakespeare') but found {len(parts)}")
    return "".join(parts[:-held_out]), "".join(parts[-held_out:])
