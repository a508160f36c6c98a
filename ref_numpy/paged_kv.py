"""A paged key/value cache's block manager: a shared pool of fixed-size blocks, page tables.

Kwon, Li, Zhuang, Sheng, Zheng, Yu, Gonzalez, Zhang, Stoica 2023, "Efficient Memory Management
for Large Language Model Serving with PagedAttention" (SOSP 2023, arXiv:2309.06180), §4.
A contiguous cache (``ref_numpy.kv_cache``) reserves max_len positions per sequence up front; a
paged one hands out blocks of ``block_size`` positions as a sequence grows, so a sequence holds
at most block_size − 1 unused slots (its last block's), and sequences that share a prefix share
its blocks instead of copying them:

    pools        k_pool, v_pool  (N, Hkv, BS, D): N physical blocks of BS positions each
    page table   block_table(s) = [b_0, b_1, …]: position t of sequence s lives in physical
                 block b_{t // BS} at offset t % BS, i.e. at slot b_{t // BS} · BS + t % BS
    references   ref_counts[b] = how many page tables hold block b; free when it reaches 0

``PagedKVCache`` does: add, append (one token or a chunk), fork (share every block, with
copy-on-write of a shared partial last block on the first append that diverges: parallel
sampling, beam search), free, and usage figures. Every operation is atomic: it checks
everything it needs (ids, shapes, dtypes, free blocks) before it changes anything, so a call
that raises leaves the pools, the free list, the page tables, the lengths, the reference counts
and the prefix index exactly as they were.

Prefix sharing (vLLM's automatic prefix caching): when appends come with their token ids, every
block that fills up gets the hash of (its parent block's hash, its token ids) — a chain, so equal
hashes mean equal prefixes up to the end of the block (sha256, :func:`block_hash`) — and a
prefix index maps each hash to one block that has it, for as long as some table holds one. A
later append whose chunk covers a whole block with a hash in the index takes that block (one
more reference) instead of a new one and writes nothing there; its slots come back as −1, which
the cache-write kernel skips. A block already partly written when an append fills it stays the
sequence's own. This relies on what holds for a model's keys and values: they are a function of
the prefix.

``ref_numpy.paged_attention`` holds what the kernels compute over the pools (write, gather,
decode attention). Shape letters: N blocks, BS block size, Hkv key/value heads, D head dim,
t new tokens of one append; new tokens are token-major, (t, Hkv, D).
"""
from __future__ import annotations

import hashlib

import numpy as np

from ref_numpy._check import check_int, check_positive_int
from ref_numpy.paged_attention import check_new_tokens, gather_kv, write_kv


class BlockPoolExhausted(RuntimeError):
    """The pool has fewer free blocks than an operation needs (nothing was changed)."""


def block_hash(parent: bytes | None, tokens) -> bytes:
    """sha256 of the parent block's hash (None for a sequence's first block) and this block's
    token ids as int64: equal for two blocks iff their whole prefixes are (sha256 collisions
    aside)."""
    h = hashlib.sha256(parent or b"")
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


class PagedKVCache:
    """Pools, free list, page tables, lengths, reference counts and prefix index.

    >>> c = PagedKVCache(num_blocks=4, block_size=2, n_kv_head=1, head_dim=1)
    >>> a = c.add_sequence()
    >>> c.append(a, np.ones((3, 1, 1)), np.ones((3, 1, 1)))      # 3 tokens: 2 blocks
    >>> b = c.fork(a)                                              # shares both blocks
    >>> c.append(b, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))    # copy-on-write of block 1
    >>> c.block_table(a), c.block_table(b), c.ref_counts.tolist()
    ([0, 1], [0, 2], [2, 1, 1, 0])
    >>> c.usage()["blocks_free"]
    1

    Attributes:
        k_pool, v_pool: (N, Hkv, BS, D) arrays; a slot that holds no token is never read.
        free_blocks: ids of the free blocks; ``pop()`` takes the next one (freed blocks are
            reused first).
        ref_counts: (N,) int64, how many page tables hold each block.
    Sequence ids are ints handed out by :meth:`add_sequence` and :meth:`fork`, never reused.
    """

    def __init__(self, num_blocks: int, block_size: int, n_kv_head: int, head_dim: int,
                 dtype=np.float64):
        for name, n in (("num_blocks", num_blocks), ("block_size", block_size),
                        ("n_kv_head", n_kv_head), ("head_dim", head_dim)):
            check_positive_int(name, n)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64 but got {dtype}")
        self.block_size = int(block_size)
        self.k_pool = np.zeros((num_blocks, n_kv_head, block_size, head_dim), dtype=dtype)
        self.v_pool = np.zeros_like(self.k_pool)
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))
        self.ref_counts = np.zeros(num_blocks, dtype=np.int64)
        self._tables: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._tokens: dict[int, list[int] | None] = {}   # token ids, None once one is unknown
        self._hashes: dict[int, list[bytes]] = {}        # hashes of the full blocks, in order
        self._prefix: dict[bytes, int] = {}              # hash -> block, for held full blocks
        self._freed: set[int] = set()
        self._next_id = 0

    # --- lookups

    @property
    def num_blocks(self) -> int:
        return self.k_pool.shape[0]

    @property
    def sequences(self) -> list[int]:
        """Ids of the live sequences, in the order they were added."""
        return list(self._tables)

    @property
    def prefix_index(self) -> dict[bytes, int]:
        """The prefix index, hash -> block (a copy)."""
        return dict(self._prefix)

    def _live(self, seq_id, op: str) -> int:
        if isinstance(seq_id, bool) or not isinstance(seq_id, (int, np.integer)):
            raise TypeError(f"seq_id: expected an int but got {type(seq_id).__name__} "
                            f"({seq_id!r})")
        if seq_id in self._freed:
            raise ValueError(f"seq_id: cannot {op} sequence {seq_id}: it was freed")
        if seq_id not in self._tables:
            raise ValueError(f"seq_id: cannot {op} sequence {seq_id}: no such sequence (the "
                             f"live ones are {self.sequences})")
        return int(seq_id)

    def block_table(self, seq_id: int) -> list[int]:
        """The physical block ids of the sequence, in order (a copy)."""
        return list(self._tables[self._live(seq_id, "read")])

    def length(self, seq_id: int) -> int:
        """Tokens stored for the sequence."""
        return self._lengths[self._live(seq_id, "read")]

    def batch(self, seq_ids) -> tuple[np.ndarray, np.ndarray]:
        """The kernels' view of some sequences: block_tables (S, M) int32 padded with -1,
        M = the longest table (at least 1), and lengths (S,) int32."""
        ids = [self._live(s, "read") for s in seq_ids]
        M = max([len(self._tables[s]) for s in ids] + [1])
        tables = np.full((len(ids), M), -1, dtype=np.int32)
        for row, s in enumerate(ids):
            tables[row, :len(self._tables[s])] = self._tables[s]
        return tables, np.array([self._lengths[s] for s in ids], dtype=np.int32)

    def gather(self, seq_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The sequence's keys and values as contiguous (Hkv, length, D) arrays."""
        tables, lengths = self.batch([seq_id])
        k, v = gather_kv(self.k_pool, self.v_pool, tables, lengths)
        return k[0], v[0]

    # --- operations

    def add_sequence(self) -> int:
        """Start an empty sequence (it takes a block at its first append); return its id."""
        seq_id = self._next_id
        self._next_id += 1
        self._tables[seq_id] = []
        self._lengths[seq_id] = 0
        self._tokens[seq_id] = []
        self._hashes[seq_id] = []
        return seq_id

    def _plan(self, seq_id: int, t: int, tokens):
        """What appending t tokens does, computed without changing anything: (new blocks it
        takes, whether the last block is copied first, {block index: (hash, cached block or
        None)} for every block that it fills)."""
        n, BS = self._lengths[seq_id], self.block_size
        table = self._tables[seq_id]
        copy = n % BS != 0 and self.ref_counts[table[-1]] > 1   # a shared, partly filled block
        full = {}
        if tokens is not None and self._tokens[seq_id] is not None:
            ids = self._tokens[seq_id] + tokens
            parent = self._hashes[seq_id][-1] if self._hashes[seq_id] else None
            for j in range(n // BS, (n + t) // BS):              # blocks this append fills
                parent = block_hash(parent, ids[j * BS:(j + 1) * BS])
                whole = j * BS >= n                              # no token of it stored yet
                full[j] = (parent, self._prefix.get(parent) if whole else None)
        fresh = -(-(n + t) // BS) - -(-n // BS)
        found = sum(block is not None for _, block in full.values())
        return fresh - found + int(copy), copy, full

    def reserve_slots(self, seq_id: int, t: int, tokens=None) -> np.ndarray:
        """Make room for t more tokens of a sequence and return their slots (t,) int32, which
        the cache-write kernel (or ``ref_numpy.paged_attention.write_kv``) then fills before
        the next call; a slot of -1 needs no write (its block was found by prefix).

        Takes a block from the free list whenever the last one is full. If the last block is
        partly filled and shared with a fork, it is first copied to a block of this sequence's
        own (copy-on-write: the tokens already in it are copied, the other holders keep the
        original). With ``tokens`` (t token ids), a block that the t tokens cover whole and
        whose prefix hash is in the prefix index is shared instead of taken; every block they
        fill enters the index. Raises :class:`BlockPoolExhausted` and changes nothing if the
        free list has fewer blocks than that takes.
        """
        seq_id = self._live(seq_id, "append to")
        t = check_positive_int("t", t)
        if tokens is not None:
            check_int("tokens", tokens, ndim=1)
            if tokens.shape != (t,):
                raise ValueError(f"tokens: expected shape (t,) = ({t},) (one id per new token) "
                                 f"but got {tokens.shape}")
            tokens = [int(x) for x in tokens]
        need, copy, full = self._plan(seq_id, t, tokens)
        if need > len(self.free_blocks):
            why = " (one of them to copy a shared partial block)" if copy else ""
            raise BlockPoolExhausted(
                f"cannot append {t} token(s) to sequence {seq_id}: that takes {need} free "
                f"block(s){why} but the pool has {len(self.free_blocks)} of {self.num_blocks} "
                f"free; nothing was changed")
        table, n, BS = self._tables[seq_id], self._lengths[seq_id], self.block_size
        if copy:
            old, new = table[-1], self.free_blocks.pop()
            self.k_pool[new, :, :n % BS] = self.k_pool[old, :, :n % BS]
            self.v_pool[new, :, :n % BS] = self.v_pool[old, :, :n % BS]
            self.ref_counts[old] -= 1
            self.ref_counts[new] = 1
            table[-1] = new
        shared = []
        while len(table) * BS < n + t:
            cached = full.get(len(table), (None, None))[1]
            block = self.free_blocks.pop() if cached is None else cached
            if cached is not None:
                shared.append(len(table))
            self.ref_counts[block] += 1
            table.append(block)
        for j, (h, _) in full.items():
            self._prefix.setdefault(h, table[j])
            self._hashes[seq_id].append(h)
        if tokens is None:
            self._tokens[seq_id] = None
        elif self._tokens[seq_id] is not None:
            self._tokens[seq_id] += tokens
        self._lengths[seq_id] = n + t
        pos = np.arange(n, n + t)
        slots = np.asarray(table)[pos // BS] * BS + pos % BS
        slots[np.isin(pos // BS, shared)] = -1
        return slots.astype(np.int32)

    def append(self, seq_id: int, k_new, v_new, tokens=None) -> None:
        """Store t new tokens of a sequence after its current ones.

        Args:
            seq_id: a live sequence.
            k_new, v_new: (t, Hkv, D), the cache's dtype, t >= 1 (one token or a chunk).
            tokens: (t,) int token ids, for prefix sharing (see :meth:`reserve_slots`); a
                sequence appended to without them takes no further part in it.

        Raises ValueError/TypeError for an unknown or freed sequence or a wrong shape or dtype,
        and :class:`BlockPoolExhausted` when the pool is short of blocks; in every case the
        cache is left as it was.
        """
        seq_id = self._live(seq_id, "append to")
        t = check_new_tokens(k_new, v_new, self.k_pool.shape, self.k_pool.dtype)
        if t == 0:
            raise ValueError("k_new: expected at least one new token but got t = 0")
        slots = self.reserve_slots(seq_id, t, tokens)
        write_kv(self.k_pool, self.v_pool, k_new, v_new, slots)

    def fork(self, seq_id: int) -> int:
        """A new sequence with the same tokens, sharing every block (no copy); return its id.
        The shared partial last block is copied by whichever holder appends to it first."""
        seq_id = self._live(seq_id, "fork")
        child = self.add_sequence()
        self._tables[child] = list(self._tables[seq_id])
        self._lengths[child] = self._lengths[seq_id]
        known = self._tokens[seq_id]
        self._tokens[child] = None if known is None else list(known)
        self._hashes[child] = list(self._hashes[seq_id])
        for block in self._tables[child]:
            self.ref_counts[block] += 1
        return child

    def free(self, seq_id: int) -> None:
        """Drop a sequence; each of its blocks returns to the free list when no other page
        table holds it, and leaves the prefix index for another live block of the same prefix
        if there is one. Freeing it again is an error (and changes nothing)."""
        seq_id = self._live(seq_id, "free")
        for block in reversed(self._tables.pop(seq_id)):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks.append(block)
        for j, h in enumerate(self._hashes.pop(seq_id)):
            block = self._prefix.get(h)
            if block is None or self.ref_counts[block] > 0:
                continue
            # another live block with this prefix (one filled in pieces) takes its place
            others = [self._tables[q][j] for q in self._tables if self._hashes[q][j:j + 1] == [h]]
            if others:
                self._prefix[h] = others[0]
            else:
                del self._prefix[h]
        del self._lengths[seq_id], self._tokens[seq_id]
        self._freed.add(seq_id)

    def usage(self) -> dict:
        """Usage figures:

        blocks_total, blocks_used, blocks_free, blocks_shared (held by more than one table),
        blocks_indexed (in the prefix index);
        tokens: the live sequences' lengths summed (a shared token counts once per holder);
        tokens_stored: slots that hold a token (a shared block counts once);
        slots_unused: blocks_used · BS − tokens_stored, the slots of partly filled last blocks;
        fragmentation: slots_unused / (blocks_used · BS), the share of held slots that is idle
        (internal fragmentation; 0 with no block used).
        """
        BS = self.block_size
        fill = {}
        for s, table in self._tables.items():
            for j, block in enumerate(table):
                fill[block] = min(BS, self._lengths[s] - j * BS)
        used = self.num_blocks - len(self.free_blocks)
        stored = sum(fill.values())
        return {"blocks_total": self.num_blocks, "blocks_used": used,
                "blocks_free": len(self.free_blocks),
                "blocks_shared": int((self.ref_counts > 1).sum()),
                "blocks_indexed": len(self._prefix),
                "tokens": sum(self._lengths.values()), "tokens_stored": stored,
                "slots_unused": used * BS - stored,
                "fragmentation": (used * BS - stored) / (used * BS) if used else 0.0}
