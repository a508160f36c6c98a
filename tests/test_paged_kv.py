"""The paged KV cache in NumPy (ref_numpy.paged_kv, ref_numpy.paged_attention).

Block manager: allocation when a block fills, fork with shared blocks and copy-on-write of a
shared partial block, free by reference count, prefix sharing of full blocks by hash, usage
figures; every failing call leaves all state as it was (checked against a snapshot); a
hypothesis state machine drives random add / append / fork / free and prompts with common
prefixes against a model. References: write and gather index exactly,
paged decode equals dense attention over the gathered cache (<= 1e-12 in float64), and a
64-step generation through the paged cache reproduces the contiguous KVCache decode token for
token, with the NumPy decode and with the kernels (v1 and v2; opencl here, cupy on a GPU).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from equivalence.cases.paged_kv import naive_decode, poisoned_problem
from gpu_cupy import paged_kv as gk
from gpu_cupy import runtime
from ref_numpy import kv_cache, paged_attention
from ref_numpy.paged_kv import BlockPoolExhausted, PagedKVCache

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
CUPY_OK, CUPY_WHY = runtime.available("cupy")


def tokens(t, Hkv=1, D=2, start=0.0, dtype=np.float64):
    """t distinct tokens (t, Hkv, D): token i holds start + i + a fraction per element."""
    frac = np.arange(Hkv * D).reshape(Hkv, D) / (2 * Hkv * D)
    return (start + np.arange(t)[:, None, None] + frac[None]).astype(dtype)


def snapshot(c: PagedKVCache):
    """Everything a failing call must leave alone."""
    return (c.k_pool.copy(), c.v_pool.copy(), list(c.free_blocks), c.ref_counts.copy(),
            {s: (c.block_table(s), c.length(s)) for s in c.sequences}, c.prefix_index)


def assert_unchanged(c: PagedKVCache, before) -> None:
    k, v, free, refs, seqs, prefix = before
    assert np.array_equal(c.k_pool, k) and np.array_equal(c.v_pool, v)
    assert c.free_blocks == free and np.array_equal(c.ref_counts, refs)
    assert {s: (c.block_table(s), c.length(s)) for s in c.sequences} == seqs
    assert c.prefix_index == prefix


# ----------------------------------------------------------------------------- block manager

def test_append_takes_a_block_only_when_the_last_one_is_full():
    c = PagedKVCache(num_blocks=8, block_size=4, n_kv_head=1, head_dim=2)
    s = c.add_sequence()
    assert c.block_table(s) == [] and c.length(s) == 0
    c.append(s, tokens(3), tokens(3))
    assert c.block_table(s) == [0] and c.length(s) == 3
    c.append(s, tokens(1, start=3), tokens(1, start=3))        # fills block 0 exactly
    assert c.block_table(s) == [0]
    c.append(s, tokens(1, start=4), tokens(1, start=4))        # the fifth token: block 1
    c.append(s, tokens(6, start=5), tokens(6, start=5))        # a chunk across a boundary
    assert c.block_table(s) == [0, 1, 2] and c.length(s) == 11
    k, v = c.gather(s)
    assert np.array_equal(k, tokens(11).transpose(1, 0, 2)) and np.array_equal(k, v)
    u = c.usage()
    assert (u["blocks_used"], u["blocks_free"], u["tokens"], u["tokens_stored"],
            u["slots_unused"]) == (3, 5, 11, 11, 1)
    assert u["fragmentation"] == pytest.approx(1 / 12)


def test_fork_shares_blocks_and_copies_a_shared_partial_block_on_the_first_append():
    c = PagedKVCache(num_blocks=8, block_size=4, n_kv_head=2, head_dim=3)
    a = c.add_sequence()
    c.append(a, tokens(6, 2, 3), -tokens(6, 2, 3))             # blocks [0, 1], block 1 half
    b = c.fork(a)
    assert c.block_table(b) == [0, 1] and c.ref_counts[:2].tolist() == [2, 2]
    assert c.usage()["blocks_shared"] == 2 and c.usage()["tokens_stored"] == 6
    c.append(b, tokens(1, 2, 3, start=50), -tokens(1, 2, 3, start=50))
    # b got its own copy of block 1 with the two tokens already there; a keeps the original
    assert c.block_table(a) == [0, 1] and c.block_table(b) == [0, 2]
    assert c.ref_counts[:3].tolist() == [2, 1, 1]
    ka, _ = c.gather(a)
    kb, vb = c.gather(b)
    assert np.array_equal(ka, tokens(6, 2, 3).transpose(1, 0, 2))
    assert np.array_equal(kb[:, :6], ka) and np.array_equal(kb[:, 6], tokens(1, 2, 3, 50)[0])
    assert np.array_equal(vb, -kb)
    # the parent diverges too: block 1 is now its alone, so it is written in place
    c.append(a, tokens(1, 2, 3, start=70), -tokens(1, 2, 3, start=70))
    assert c.block_table(a) == [0, 1] and c.ref_counts[:3].tolist() == [2, 1, 1]
    assert np.array_equal(c.gather(b)[0], kb)


def test_fork_of_a_full_last_block_needs_no_copy():
    c = PagedKVCache(num_blocks=4, block_size=2, n_kv_head=1, head_dim=1)
    a = c.add_sequence()
    c.append(a, tokens(4, D=1), tokens(4, D=1))
    b = c.fork(a)
    c.append(b, tokens(1, D=1, start=9), tokens(1, D=1, start=9))
    assert c.block_table(a) == [0, 1] and c.block_table(b) == [0, 1, 2]
    assert c.ref_counts.tolist() == [2, 2, 1, 0]


def test_free_returns_blocks_when_their_count_reaches_zero():
    c = PagedKVCache(num_blocks=6, block_size=2, n_kv_head=1, head_dim=1)
    a = c.add_sequence()
    c.append(a, tokens(3, D=1), tokens(3, D=1))
    b = c.fork(a)
    c.free(a)                                                  # b still holds both blocks
    assert c.usage()["blocks_used"] == 2 and c.ref_counts[:2].tolist() == [1, 1]
    assert np.array_equal(c.gather(b)[0], tokens(3, D=1).transpose(1, 0, 2))
    c.free(b)
    assert c.usage()["blocks_used"] == 0 and sorted(c.free_blocks) == list(range(6))
    assert c.ref_counts.tolist() == [0] * 6 and c.sequences == []
    assert c.usage()["fragmentation"] == 0.0


def test_batch_gives_padded_int32_tables_and_lengths():
    c = PagedKVCache(num_blocks=6, block_size=2, n_kv_head=1, head_dim=1)
    a, b = c.add_sequence(), c.add_sequence()
    c.append(b, tokens(1, D=1), tokens(1, D=1))
    c.append(a, tokens(5, D=1), tokens(5, D=1))
    tables, lengths = c.batch([a, b])
    assert tables.dtype == lengths.dtype == np.int32
    assert tables.tolist() == [[1, 2, 3], [0, -1, -1]] and lengths.tolist() == [5, 1]


# ----------------------------------------------------------------------------- atomic failures

def _cache_with_two_sequences():
    c = PagedKVCache(num_blocks=5, block_size=3, n_kv_head=2, head_dim=2)
    a = c.add_sequence()
    c.append(a, tokens(7, 2, 2), tokens(7, 2, 2))              # 3 blocks, the last one 1/3 full
    b = c.fork(a)
    c.free(c.fork(a))                                          # a freed id to misuse
    return c, a, b


@pytest.mark.parametrize("call, error, message", [
    # 2 free blocks; b's shared partial block needs a copy, then 2 more blocks for 6 more tokens
    (lambda c, a, b: c.append(b, tokens(6, 2, 2), tokens(6, 2, 2)), BlockPoolExhausted,
     r"cannot append 6 token\(s\) to sequence 1: that takes 3 free block\(s\) \(one of them to "
     r"copy a shared partial block\) but the pool has 2 of 5 free; nothing was changed"),
    (lambda c, a, b: c.append(a, tokens(9, 2, 2), tokens(9, 2, 2)), BlockPoolExhausted,
     r"that takes 4 free block\(s\)"),
    (lambda c, a, b: c.append(99, tokens(1, 2, 2), tokens(1, 2, 2)), ValueError,
     r"seq_id: cannot append to sequence 99: no such sequence \(the live ones are \[0, 1\]\)"),
    (lambda c, a, b: c.append(2, tokens(1, 2, 2), tokens(1, 2, 2)), ValueError,
     r"seq_id: cannot append to sequence 2: it was freed"),
    (lambda c, a, b: c.free(2), ValueError, r"seq_id: cannot free sequence 2: it was freed"),
    (lambda c, a, b: c.free(7), ValueError, r"cannot free sequence 7: no such sequence"),
    (lambda c, a, b: c.fork(2), ValueError, r"cannot fork sequence 2: it was freed"),
    (lambda c, a, b: c.append("a", tokens(1, 2, 2), tokens(1, 2, 2)), TypeError,
     r"seq_id: expected an int but got str \('a'\)"),
    (lambda c, a, b: c.append(a, tokens(1, 2, 3), tokens(1, 2, 3)), ValueError,
     r"k_new: expected shape \(T, Hkv, D\) = \(\*, 2, 2\) but got \(1, 2, 3\)"),
    (lambda c, a, b: c.append(a, tokens(2, 2, 2), tokens(1, 2, 2)), ValueError,
     r"v_new: expected shape \(2, 2, 2\) \(that of k_new\) but got \(1, 2, 2\)"),
    (lambda c, a, b: c.append(a, tokens(1, 2, 2, dtype=np.float32), tokens(1, 2, 2)),
     TypeError, r"k_new: expected dtype float64 \(the pools'\) but got float32"),
    (lambda c, a, b: c.append(a, tokens(0, 2, 2), tokens(0, 2, 2)), ValueError,
     r"k_new: expected at least one new token but got t = 0"),
    (lambda c, a, b: c.append(a, np.full((1, 2, 2), np.nan), tokens(1, 2, 2)), ValueError,
     r"k_new: contains NaN"),
    (lambda c, a, b: c.reserve_slots(a, 0), ValueError, r"t: expected a positive int"),
    (lambda c, a, b: c.append(a, tokens(1, 2, 2), tokens(1, 2, 2), tokens=np.array([1, 2])),
     ValueError, r"tokens: expected shape \(t,\) = \(1,\) \(one id per new token\) but got "
                 r"\(2,\)"),
    (lambda c, a, b: c.append(a, tokens(1, 2, 2), tokens(1, 2, 2), tokens=[1]), TypeError,
     r"tokens: expected a numpy.ndarray but got list"),
    (lambda c, a, b: c.append(a, tokens(1, 2, 2), tokens(1, 2, 2), tokens=np.array([0.5])),
     TypeError, r"tokens: expected an integer dtype but got float64"),
])
def test_a_failing_call_changes_nothing(call, error, message):
    c, a, b = _cache_with_two_sequences()
    before = snapshot(c)
    with pytest.raises(error, match=message):
        call(c, a, b)
    assert_unchanged(c, before)


def test_the_pool_can_be_filled_exactly_after_a_refused_append():
    c, a, b = _cache_with_two_sequences()
    with pytest.raises(BlockPoolExhausted):
        c.append(b, tokens(6, 2, 2), tokens(6, 2, 2))
    c.append(b, tokens(5, 2, 2), tokens(5, 2, 2))              # copy + 1 block: fits
    assert c.usage()["blocks_free"] == 0 and c.length(b) == 12


def test_constructor_rejects_bad_sizes_and_dtypes():
    with pytest.raises(ValueError, match="block_size: expected a positive int but got 0"):
        PagedKVCache(4, 0, 1, 1)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64 but got float16"):
        PagedKVCache(4, 2, 1, 1, dtype=np.float16)


# ----------------------------------------------------------------------------- prefix sharing

PROMPT = np.arange(100, 110)          # 10 token ids: two full blocks of 4 and two more


def test_a_repeated_prompt_shares_its_full_blocks_instead_of_writing_them():
    c = PagedKVCache(num_blocks=8, block_size=4, n_kv_head=1, head_dim=2)
    a = c.add_sequence()
    c.append(a, tokens(10), -tokens(10), tokens=PROMPT)
    assert c.usage()["blocks_indexed"] == 2                    # the two full blocks
    b = c.add_sequence()
    slots = c.reserve_slots(b, 10, tokens=PROMPT)
    assert slots[:8].tolist() == [-1] * 8 and (slots[8:] >= 0).all()   # nothing to write
    assert c.block_table(b)[:2] == c.block_table(a)[:2]
    assert c.block_table(b)[2] != c.block_table(a)[2]        # the partial block is its own
    assert c.ref_counts[c.block_table(a)].tolist() == [2, 2, 1]
    # appended with other values, the shared blocks keep what was written first
    c2 = PagedKVCache(num_blocks=8, block_size=4, n_kv_head=1, head_dim=2)
    for values in (tokens(10), tokens(10, start=50)):
        c2.append(c2.add_sequence(), values, -values, tokens=PROMPT)
    k0, _ = c2.gather(0)
    k1, v1 = c2.gather(1)
    assert np.array_equal(k1[:, :8], k0[:, :8]) and np.array_equal(v1[:, :8], -k0[:, :8])
    assert np.array_equal(k1[:, 8:], tokens(10, start=50).transpose(1, 0, 2)[:, 8:])
    assert c2.usage()["blocks_used"] == 4 and c2.usage()["blocks_shared"] == 2


def test_only_an_identical_prefix_is_shared():
    c = PagedKVCache(num_blocks=12, block_size=4, n_kv_head=1, head_dim=2)
    a = c.add_sequence()
    c.append(a, tokens(10), tokens(10), tokens=PROMPT)
    other = PROMPT.copy()
    other[5] = 7                                               # differs in the second block
    b = c.add_sequence()
    c.append(b, tokens(10), tokens(10), tokens=other)
    assert c.block_table(b)[0] == c.block_table(a)[0]
    assert c.block_table(b)[1] != c.block_table(a)[1]
    shifted = np.concatenate([[1, 2, 3, 4], PROMPT[:4]])       # block 0 of a, but second
    d = c.add_sequence()
    c.append(d, tokens(8), tokens(8), tokens=shifted)
    assert not set(c.block_table(d)) & set(c.block_table(a))
    e = c.add_sequence()                                       # no token ids: no sharing
    c.append(e, tokens(10), tokens(10))
    assert not set(c.block_table(e)) & set(c.block_table(a))


def test_a_prompt_appended_in_pieces_and_a_fork_take_part():
    c = PagedKVCache(num_blocks=12, block_size=4, n_kv_head=1, head_dim=2)
    a = c.add_sequence()
    c.append(a, tokens(3), tokens(3), tokens=PROMPT[:3])      # blocks fill over two appends
    c.append(a, tokens(7, start=3), tokens(7, start=3), tokens=PROMPT[3:])
    f = c.fork(a)
    c.append(f, tokens(2, start=10), tokens(2, start=10), tokens=np.array([110, 111]))
    g = c.add_sequence()                                       # the fork's 3 full blocks
    c.append(g, tokens(12), tokens(12), tokens=np.arange(100, 112))
    assert c.block_table(g)[:2] == c.block_table(a)[:2] and c.block_table(g) == c.block_table(f)


def test_a_block_completed_in_pieces_stays_its_own():
    # b's block 0 holds 3 tokens when the next append completes it with a's prefix: it is not
    # swapped for a's (its tokens are written already); block 1, covered whole, is shared.
    for num_blocks in (6, 4):
        c = PagedKVCache(num_blocks=num_blocks, block_size=4, n_kv_head=1, head_dim=2)
        a, b = c.add_sequence(), c.add_sequence()
        c.append(a, tokens(10), tokens(10), tokens=PROMPT)
        c.append(b, tokens(3), tokens(3), tokens=PROMPT[:3])
        if num_blocks == 4:   # no block left for b's third block: refused, nothing changed
            before = snapshot(c)
            with pytest.raises(BlockPoolExhausted, match=r"that takes 1 free block\(s\)"):
                c.append(b, tokens(7, start=3), tokens(7, start=3), tokens=PROMPT[3:])
            assert_unchanged(c, before)
            continue
        c.append(b, tokens(7, start=3), tokens(7, start=3), tokens=PROMPT[3:])
        ta, tb = c.block_table(a), c.block_table(b)
        assert tb[0] != ta[0] and tb[1] == ta[1] and tb[2] != ta[2]


def test_the_index_forgets_a_block_with_its_last_holder():
    c = PagedKVCache(num_blocks=8, block_size=4, n_kv_head=1, head_dim=2)
    a, b = c.add_sequence(), c.add_sequence()
    for s in (a, b):
        c.append(s, tokens(10), tokens(10), tokens=PROMPT)
    shared = c.block_table(a)[:2]
    c.free(a)
    assert c.usage()["blocks_indexed"] == 2 and c.ref_counts[shared].tolist() == [1, 1]
    c.free(b)
    assert c.prefix_index == {} and sorted(c.free_blocks) == list(range(8))
    d = c.add_sequence()                                       # nothing left to find
    assert (c.reserve_slots(d, 10, tokens=PROMPT) >= 0).all()


def test_the_index_moves_to_another_block_of_the_same_prefix():
    c = PagedKVCache(num_blocks=12, block_size=4, n_kv_head=1, head_dim=2)
    a, b = c.add_sequence(), c.add_sequence()
    for s in (a, b):                                           # block 0 filled in pieces
        c.append(s, tokens(1), tokens(1), tokens=PROMPT[:1])
        c.append(s, tokens(9, start=1), tokens(9, start=1), tokens=PROMPT[1:])
    assert c.block_table(a)[0] != c.block_table(b)[0]          # each its own, a's indexed
    c.free(a)
    d = c.add_sequence()
    c.append(d, tokens(10), tokens(10), tokens=PROMPT)
    assert c.block_table(d)[:2] == c.block_table(b)[:2]


def test_a_found_prefix_needs_fewer_free_blocks():
    c = PagedKVCache(num_blocks=4, block_size=4, n_kv_head=1, head_dim=2)
    a = c.add_sequence()
    c.append(a, tokens(10), tokens(10), tokens=PROMPT)         # 3 blocks, 1 free
    b = c.add_sequence()
    before = snapshot(c)
    with pytest.raises(BlockPoolExhausted, match=r"that takes 3 free block\(s\)"):
        c.append(b, tokens(10), tokens(10))                    # without ids: 3 blocks
    assert_unchanged(c, before)
    c.append(b, tokens(10), tokens(10), tokens=PROMPT)         # with them: 1 block
    assert c.usage()["blocks_free"] == 0


# ----------------------------------------------------------------------------- state machine

PROMPT_BASE = 10**6
# Prompts with common prefixes (BS = 3): the second shares one block with the first, the third
# two.
PROMPTS = [PROMPT_BASE + np.array(p) for p in ([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 9, 9, 9],
                                               [0, 1, 2, 3, 4, 5, 8, 8, 8, 8])]


class PagedCacheMachine(RuleBasedStateMachine):
    """Random add / append / fork / free and prompts with common prefixes (and calls that must
    fail) against a model: a list of ids per sequence, from which K and V follow (id i gives
    ``tokens(1, start=i)`` and its negative). A random append's ids are new and are its token
    ids too; a prompt position's id is that of its prefix, so that equal prefixes have equal K
    and V, as with a model."""

    HKV, D, BS, BLOCKS = 2, 2, 3, 14

    def __init__(self):
        super().__init__()
        self.cache = PagedKVCache(self.BLOCKS, self.BS, self.HKV, self.D)
        self.model: dict[int, list[int]] = {}    # live sequence -> its K/V ids
        self.family: dict[int, int] = {}          # sequence -> the sequence its fork tree began
        self.freed: list[int] = []
        self.next_token = 0
        self.prefix_ids: dict[tuple, int] = {}

    def _kv(self, ids):
        k = np.concatenate([tokens(1, self.HKV, self.D, start=i) for i in ids])
        return k, -k

    def _new(self, t):
        ids = list(range(self.next_token, self.next_token + t))
        self.next_token += t
        return (ids, *self._kv(ids))

    @initialize()
    def two_sequences(self):
        self.add()
        self.add()

    @rule()
    def add(self):
        s = self.cache.add_sequence()
        self.model[s], self.family[s] = [], s

    @precondition(lambda self: self.model)
    @rule(data=st.data(), t=st.integers(1, 8))
    def append(self, data, t):
        self._append(data.draw(st.sampled_from(sorted(self.model))), t)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def sample(self, data):
        """Parallel sampling: fork a sequence and give the fork one token of its own."""
        self.fork(data)
        self._append(max(self.model), 1)

    def _append(self, s, t):
        ids, k, v = self._new(t)
        before = snapshot(self.cache)
        n = len(self.model[s])
        fresh = -(-(n + t) // self.BS) - -(-n // self.BS)
        try:
            self.cache.append(s, k, v, tokens=np.array(ids))
        except BlockPoolExhausted:
            assert_unchanged(self.cache, before)
            assert len(before[2]) < fresh + 1      # short even of the blocks it needed
            return
        self.model[s] += ids

    @rule(p=st.sampled_from(range(len(PROMPTS))), data=st.data())
    def add_prompt(self, p, data):
        """A new sequence with a prompt, in one or two appends: every full block of it that
        one append covers whole, and that a live sequence holds with the same prefix, is
        shared, not taken."""
        prompt = PROMPTS[p]
        cut = data.draw(st.integers(1, len(prompt)))
        self.add()
        s = max(self.model)
        ids = [self.prefix_ids.setdefault(tuple(prompt[:i + 1]),
                                          PROMPT_BASE + len(self.prefix_ids))
               for i in range(len(prompt))]
        for lo, hi in ((0, cut), (cut, len(prompt))):
            if lo == hi:
                continue
            before = snapshot(self.cache)
            try:
                self.cache.append(s, *self._kv(ids[lo:hi]), tokens=prompt[lo:hi])
            except BlockPoolExhausted:
                assert_unchanged(self.cache, before)
                return
            self.model[s] = ids[:hi]
        table = self.cache.block_table(s)
        for j in range(len(prompt) // self.BS):
            start, end = j * self.BS, (j + 1) * self.BS
            if start < cut < end:          # written in part by the first append: its own
                continue
            same = [q for q, other in self.model.items()
                    if q != s and len(other) >= end and other[:end] == ids[:end]]
            if same:   # one of their blocks (two may hold it, each filled in pieces)
                assert table[j] in {self.cache.block_table(q)[j] for q in same}, (j, same)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def fork(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        child = self.cache.fork(s)
        self.model[child], self.family[child] = list(self.model[s]), self.family[s]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        self.cache.free(s)
        del self.model[s]
        self.freed.append(s)

    @rule(data=st.data(), op=st.sampled_from(["append", "free", "fork"]))
    def misuse(self, data, op):
        """An unknown or freed id: a ValueError, and nothing changes."""
        s = data.draw(st.sampled_from(self.freed + [10_000]))
        before = snapshot(self.cache)
        with pytest.raises(ValueError, match=f"sequence {s}"):
            if op == "append":
                self.cache.append(s, *self._new(1)[1:])
            else:
                getattr(self.cache, op)(s)
        assert_unchanged(self.cache, before)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def wrong_shape(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        before = snapshot(self.cache)
        with pytest.raises(ValueError, match="k_new: expected shape"):
            self.cache.append(s, np.zeros((1, self.HKV + 1, self.D)),
                              np.zeros((1, self.HKV + 1, self.D)))
        assert_unchanged(self.cache, before)

    @invariant()
    def every_sequence_gathers_what_was_appended(self):
        for s, ids in self.model.items():
            k, v = self.cache.gather(s)
            want = (np.concatenate([tokens(1, self.HKV, self.D, start=i) for i in ids])
                    if ids else np.zeros((0, self.HKV, self.D))).transpose(1, 0, 2)
            assert self.cache.length(s) == len(ids)
            assert np.array_equal(k, want) and np.array_equal(v, -want)

    @invariant()
    def no_block_is_leaked_and_counts_are_exact(self):
        held = [b for s in self.model for b in self.cache.block_table(s)]
        free = self.cache.free_blocks
        assert len(set(free)) == len(free) and not set(free) & set(held)
        assert set(free) | set(held) == set(range(self.BLOCKS))
        counts = np.bincount(held, minlength=self.BLOCKS) if held else np.zeros(self.BLOCKS)
        assert np.array_equal(self.cache.ref_counts, counts)
        for s in self.model:   # a table holds each block once, and just enough of them
            table = self.cache.block_table(s)
            assert len(set(table)) == len(table) == -(-len(self.model[s]) // self.BS)
        u = self.cache.usage()
        assert u["blocks_used"] == len(set(held)) and u["blocks_free"] == len(free)
        assert u["tokens"] == sum(len(ids) for ids in self.model.values())
        assert u["slots_unused"] == u["blocks_used"] * self.BS - u["tokens_stored"]

    @invariant()
    def blocks_are_shared_only_by_fork_or_an_identical_prefix(self):
        holders: dict[int, list[tuple[int, int]]] = {}
        for s in self.model:
            for j, b in enumerate(self.cache.block_table(s)):
                holders.setdefault(b, []).append((s, j))
        for b, hs in holders.items():
            if len(hs) < 2:
                continue
            assert len({j for _, j in hs}) == 1, (b, hs)                 # the same place
            j = hs[0][1]
            # the same ids up to the block's end: one append before a fork, or one prefix
            prefixes = {tuple(self.model[s][:(j + 1) * self.BS]) for s, _ in hs}
            assert len(prefixes) == 1, (b, hs, prefixes)
            if len({self.family[s] for s, _ in hs}) > 1:                 # not one fork tree:
                block = prefixes.pop()[j * self.BS:]                     # a full prompt block
                assert len(block) == self.BS and min(block) >= PROMPT_BASE, (b, hs)
        indexed = self.cache.prefix_index.values()
        assert set(indexed) <= set(holders) and len(set(indexed)) == len(indexed)


PagedCacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                               deadline=None)
test_paged_cache_state_machine = PagedCacheMachine.TestCase


# ----------------------------------------------------------------------------- write and gather

def test_write_kv_scatters_and_skips_negative_slots():
    k_pool, v_pool = np.zeros((2, 1, 2, 3)), np.zeros((2, 1, 2, 3))     # N = 2, BS = 2
    new = tokens(3, 1, 3, start=1.0)
    paged_attention.write_kv(k_pool, v_pool, new, -new, np.array([3, -1, 0], np.int32))
    assert np.array_equal(k_pool[1, :, 1], new[0]) and np.array_equal(k_pool[0, :, 0], new[2])
    assert np.array_equal(v_pool[1, :, 1], -new[0]) and np.array_equal(v_pool[0, :, 0], -new[2])
    assert np.count_nonzero(k_pool) == 6                       # token 1 was skipped


def test_gather_kv_follows_the_tables_and_zeros_past_each_length():
    rng = np.random.default_rng(0)
    k_pool, v_pool = rng.standard_normal((2, 5, 2, 3, 4))
    tables = np.array([[4, 0, -1], [2, -1, -1], [-7, -7, -7]], np.int32)
    lengths = np.array([5, 2, 0], np.int32)
    k, v = paged_attention.gather_kv(k_pool, v_pool, tables, lengths, max_len=7)
    assert k.shape == (3, 2, 7, 4)
    assert np.array_equal(k[0, :, :3], k_pool[4]) and np.array_equal(k[0, :, 3:5], k_pool[0, :, :2])
    assert np.array_equal(v[1, :, :2], v_pool[2, :, :2])
    assert not k[0, :, 5:].any() and not k[1, :, 2:].any() and not k[2].any()


@pytest.mark.parametrize("tables, lengths, message", [
    ([[0, 5]], [4], r"block_tables\[0, 1\]: expected a block id in \[0, 5\) but got 5 "
                    r"\(sequence 0 has length 4, so its first 2 entries are read\)"),
    ([[0, -1]], [3], r"block_tables\[0, 1\]: expected a block id in \[0, 5\) but got -1"),
    ([[0, 1]], [5], r"lengths\[0\]: expected a length in \[0, 4\] \(2 table entries of "
                    r"block_size 2\) but got 5"),
    ([[0, 1]], [-1], r"lengths\[0\]: expected a length in \[0, 4\]"),
    ([[0, 1]], [1, 1], r"lengths: expected shape \(S,\) = \(1,\)"),
])
def test_check_block_tables_names_the_bad_entry(tables, lengths, message):
    with pytest.raises(ValueError, match=message):
        paged_attention.check_block_tables(np.array(tables, np.int32), np.array(lengths, np.int32),
                                    5, 2)


def test_check_block_tables_and_slots_want_int32():
    with pytest.raises(TypeError, match="block_tables: expected dtype int32 but got int64"):
        paged_attention.check_block_tables(np.zeros((1, 1), np.int64), np.zeros(1, np.int32), 1, 1)
    with pytest.raises(TypeError, match="lengths: expected an integer dtype but got float64"):
        paged_attention.check_block_tables(np.zeros((1, 1), np.int32), np.zeros(1), 1, 1)
    with pytest.raises(TypeError, match="slot_mapping: expected dtype int32 but got int16"):
        paged_attention.check_slot_mapping(np.zeros(1, np.int16), 1, 4)


@pytest.mark.parametrize("slots, n_tokens, message", [
    ([0, 8], 2, r"slot_mapping\[1\]: expected a slot in \[0, 8\) \(N · BS\) or a negative "
                r"value \(skip\) but got 8"),
    ([3, -1, 3], 3, r"slot_mapping: slot 3 appears at indices 0 and 2"),
    ([1, 2], 3, r"slot_mapping: expected shape \(T,\) = \(3,\)"),
])
def test_check_slot_mapping(slots, n_tokens, message):
    with pytest.raises(ValueError, match=message):
        paged_attention.check_slot_mapping(np.array(slots, np.int32), n_tokens, 8)


# ----------------------------------------------------------------------------- decode reference

@pytest.mark.parametrize("H, Hkv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("BS", [16, 32, 24])
@pytest.mark.parametrize("kw", [{}, {"alibi": True}, {"window": 37}, {"alibi": True, "window": 9}],
                         ids=["plain", "alibi", "window", "alibi+window"])
def test_paged_decode_equals_dense_attention_on_the_gathered_cache(H, Hkv, BS, kw):
    q, k_pool, v_pool, tables, lengths = poisoned_problem(BS + 10 * Hkv, 4, H, Hkv, BS, 16, 150)
    dense = naive_decode(q, k_pool, v_pool, tables, lengths, alibi=kw.get("alibi", False),
                         window=kw.get("window"))
    for partition in (None, BS, 2 * BS, 50, 1000):   # 50: not a whole number of blocks
        out = paged_attention.paged_attention_decode(q, k_pool, v_pool, tables, lengths,
                                                     partition_size=partition, **kw)
        assert np.isfinite(out).all()                 # the NaN slots were never read
        assert np.abs(out - dense).max() <= 1e-12, partition


def test_paged_decode_known_answer():
    # One head, D = 1, keys (0, log 3), scale 1: P = (1/4, 3/4), O = 1/4 * 1 + 3/4 * 5 = 4.
    k_pool = np.array([0.0, np.log(3.0)]).reshape(2, 1, 1, 1)
    v_pool = np.array([1.0, 5.0]).reshape(2, 1, 1, 1)
    out = paged_attention.paged_attention_decode(
        np.ones((1, 1, 1)), k_pool, v_pool, np.array([[1, 0]], np.int32),
        np.array([2], np.int32), scale=1.0, partition_size=1)
    assert out.ravel().tolist() == pytest.approx([4.0], abs=1e-15)


def test_paged_decode_float32_is_close_to_float64():
    q, k_pool, v_pool, tables, lengths = poisoned_problem(3, 3, 4, 2, 16, 32, 70, np.float32)
    out = paged_attention.paged_attention_decode(q, k_pool, v_pool, tables, lengths, alibi=True,
                                                 partition_size=32)
    ref = paged_attention.paged_attention_decode(*(x.astype(np.float64) for x in
                                                   (q, k_pool, v_pool)), tables, lengths,
                                                 alibi=True)
    assert out.dtype == np.float32 and np.abs(out - ref).max() <= 1e-5


@pytest.mark.parametrize("change, error, message", [
    (dict(q=np.zeros((2, 3, 4))), ValueError, r"q: expected a number of heads H divisible by "
                                              r"Hkv = 2 but got H = 3"),
    (dict(q=np.zeros((2, 2, 5))), ValueError, r"q: expected shape \(S, H, D\) with D = 4"),
    (dict(lengths=np.array([0, 1], np.int32)), ValueError,
     r"lengths\[0\]: expected a length in \[1, 4\]"),
    (dict(block_tables=np.zeros((3, 2), np.int32)), ValueError,
     r"lengths: expected shape \(S,\) = \(3,\)"),
    (dict(window=0), ValueError, r"window: expected an int >= 1 but got 0"),
    (dict(partition_size=0), ValueError, r"partition_size: expected a positive int"),
    (dict(scale=float("inf")), ValueError, r"scale: expected a finite float"),
    (dict(k_pool=np.zeros((3, 2, 2, 4), np.float32)), TypeError,
     r"v_pool: expected dtype float32 \(the dtype of k_pool\) but got float64"),
])
def test_paged_decode_rejects_bad_input(change, error, message):
    args = dict(q=np.zeros((2, 2, 4)), k_pool=np.zeros((3, 2, 2, 4)),
                v_pool=np.zeros((3, 2, 2, 4)), block_tables=np.array([[0, 1], [2, 0]], np.int32),
                lengths=np.array([4, 1], np.int32))
    args.update(change)
    with pytest.raises(error, match=message):
        paged_attention.paged_attention_decode(**args)


# ----------------------------------------------------------------------------- generation

class TinyDecoder:
    """A one-layer decoder just big enough to make each token depend on the cache: token ->
    embedding -> q, k, v (H, Hkv heads of D) -> attention -> logits -> argmax."""

    def __init__(self, rng, vocab=61, H=4, Hkv=2, D=16):
        C = 24
        self.H, self.Hkv, self.D = H, Hkv, D
        self.embed = rng.standard_normal((vocab, C))
        self.w_q, self.w_k, self.w_v = (rng.standard_normal((C, n * D)) / np.sqrt(C)
                                        for n in (H, Hkv, Hkv))
        self.w_out = rng.standard_normal((H * D, vocab))

    def qkv(self, token: int):
        x = self.embed[token]
        return ((x @ self.w_q).reshape(self.H, self.D), (x @ self.w_k).reshape(self.Hkv, self.D),
                (x @ self.w_v).reshape(self.Hkv, self.D))

    def next_token(self, out):                         # out (H, D)
        return int(np.argmax(out.reshape(-1) @ self.w_out))


def generate(model, prompts, steps, decode_step):
    """Greedy generation for each prompt; ``decode_step(qs, ks, vs) -> outs`` appends the new
    tokens' (k, v) to its cache and attends. Returns the tokens and the outputs per step."""
    seqs = [list(p) for p in prompts]
    outs = []
    for _ in range(steps):
        q, k, v = zip(*(model.qkv(s[-1]) for s in seqs))
        out = decode_step(np.stack(q), np.stack(k), np.stack(v))       # (S, H, D)
        outs.append(out)
        for s, o in zip(seqs, out):
            s.append(model.next_token(o))
    return seqs, np.stack(outs)


def prefill(model, prompt):
    """K, V (t, Hkv, D) of a prompt's tokens but the last (the first decode step's query)."""
    if len(prompt) == 1:
        return None
    _, k, v = zip(*(model.qkv(t) for t in prompt[:-1]))
    return np.stack(k), np.stack(v)


def contiguous_generation(model, prompts, steps):
    caches = [kv_cache.KVCache(1, model.Hkv, len(p) + steps, model.D) for p in prompts]
    for cache, p in zip(caches, prompts):
        kv = prefill(model, p)
        if kv is not None:
            cache.append(*(x.transpose(1, 0, 2)[None] for x in kv))

    def step(q, k, v):
        return np.stack([kv_cache.cached_attention(q[s][None, :, None], k[s][None, :, None],
                                                   v[s][None, :, None], c)[0, :, 0]
                         for s, c in enumerate(caches)])
    return generate(model, prompts, steps, step)


def paged_generation(model, prompts, steps, block_size=16, num_blocks=20, decode=None):
    cache = PagedKVCache(num_blocks, block_size, model.Hkv, model.D)
    ids = [cache.add_sequence() for _ in prompts]
    for s, p in zip(ids, prompts):
        kv = prefill(model, p)
        if kv is not None:
            cache.append(s, *kv)
    decode = decode or paged_attention.paged_attention_decode

    def step(q, k, v):
        for row, s in enumerate(ids):       # interleaved appends: tables are not contiguous
            cache.append(s, k[row][None], v[row][None])
        tables, lengths = cache.batch(ids)
        return decode(q, cache.k_pool, cache.v_pool, tables, lengths)
    seqs, outs = generate(model, prompts, steps, step)
    return seqs, outs, cache


PROMPT_LENGTHS = (5, 17, 40)


def prompts_and_model(seed=0):
    rng = np.random.default_rng(seed)
    model = TinyDecoder(rng)
    return model, [list(rng.integers(0, 61, n)) for n in PROMPT_LENGTHS]


def kernel_decoder(backend: str, version: int):
    """Decode through gpu_cupy.paged_kv on ``backend`` (NumPy in and out)."""
    part = {"partition_size": 32} if version == 2 else {}

    def decode(q, k_pool, v_pool, tables, lengths):
        arrays = (q, k_pool, v_pool, tables, lengths)
        if backend == "cupy":
            import cupy
            arrays = tuple(cupy.asarray(x) for x in arrays)
        return runtime.to_host(gk.paged_attention_decode(*arrays, version=version,
                                                         backend=backend, **part))
    return decode


DECODERS = [pytest.param(None, id="numpy"),
            *[pytest.param((b, v), id=f"{b}-v{v}",
                           marks=[pytest.mark.skipif(not ok, reason=why)]
                           + ([pytest.mark.gpu] if b == "cupy" else []))
              for b, ok, why in (("opencl", OPENCL_OK, OPENCL_WHY), ("cupy", CUPY_OK, CUPY_WHY))
              for v in (1, 2)]]


@pytest.mark.parametrize("decoder", DECODERS)
def test_paged_generation_reproduces_the_contiguous_kv_cache_token_for_token(decoder):
    model, prompts = prompts_and_model()
    want_tokens, want_outs = contiguous_generation(model, prompts, 64)
    decode = kernel_decoder(*decoder) if decoder else None
    got_tokens, got_outs, cache = paged_generation(model, prompts, 64, decode=decode)
    assert got_tokens == want_tokens
    assert np.abs(got_outs - want_outs).max() <= 1e-12
    # the interleaved appends gave every sequence non-contiguous blocks
    assert all(np.any(np.diff(cache.block_table(s)) != 1) for s in cache.sequences)
    assert cache.usage()["tokens"] == sum(n - 1 + 64 for n in PROMPT_LENGTHS)


# ----------------------------------------------------------------------------- bench

SMOKE = ["--sequences", "4", "--max-len", "64", "--heads", "2,1,8", "--block-size", "4",
         "--repeats", "2", "--warmup", "0", "--min-time", "0"]


def run_bench(argv):
    import argparse
    from equivalence.bench import paged
    parser = argparse.ArgumentParser()
    paged.add_arguments(parser)
    return paged.run(parser.parse_args(argv))


def test_bench_paged_on_the_cpu_at_a_tiny_size():
    tables = run_bench(SMOKE)
    assert list(tables) == ["ratios", "timings", "memory", "usage"]
    paged_t, dense_t = tables["timings"]
    assert [paged_t["side"], dense_t["side"]] == ["numpy paged decode",
                                                  "numpy dense decode on the gathered cache"]
    assert 0 < paged_t["min s"] <= paged_t["median s"] <= paged_t["max s"]
    (ratio,) = tables["ratios"]
    assert ratio["ratio"] == pytest.approx(paged_t["median s"] / dense_t["median s"])
    (usage,) = tables["usage"]
    paged_m, contiguous, alone = tables["memory"]
    per_position = 2 * 1 * 8 * 4                                     # K and V, float32
    assert contiguous["MiB"] * 2**20 == 4 * 64 * per_position and contiguous["vs contiguous"] == 1
    assert paged_m["MiB"] * 2**20 == usage["blocks used"] * 4 * per_position
    assert alone["MiB"] * 2**20 == usage["tokens"] * per_position <= paged_m["MiB"] * 2**20
    # at most block_size - 1 idle slots per sequence
    assert usage["slots unused"] == usage["blocks used"] * 4 - usage["tokens"] <= 4 * 3


def test_bench_paged_rejects_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="--heads: expected H divisible by Hkv but got H = 3"):
        run_bench(["--heads", "3,2,8"])
