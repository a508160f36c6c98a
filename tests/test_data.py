"""Token files and batches: the header and its errors, uint16 / uint32, batches against direct
slices, seeds, disjoint ranks, the sequential mode, and a real corpus encoded to a file.

The last test encodes held-out text of the shared corpus and skips, with the reason, where
../shared is absent.
"""
from pathlib import Path

import numpy as np
import pytest

from ref_numpy import data
from ref_numpy.bpe_train import train
from ref_numpy.data import Batches

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare.txt"


@pytest.fixture
def tokens(tmp_path):
    """A token file of 10,000 ids below 50257 (GPT-2's vocabulary), memory-mapped."""
    ids = np.random.default_rng(0).integers(0, 50257, size=10_000)
    data.write_tokens(tmp_path / "t.bin", ids, 50257)
    return ids, data.open_tokens(tmp_path / "t.bin")


# ----------------------------------------------------------------------------- the file

def test_write_and_map_round_trip(tokens, tmp_path):
    ids, tf = tokens
    assert isinstance(tf.tokens, np.memmap) and tf.tokens.dtype == np.uint16
    assert len(tf) == 10_000 and tf.vocab_size == 50257
    assert np.array_equal(tf.tokens, ids)
    assert (tmp_path / "t.bin").stat().st_size == 32 + 2 * 10_000
    header = (tmp_path / "t.bin").read_bytes()[:32]
    assert header[:8] == b"XCTOKENS"
    assert np.frombuffer(header[8:16], "<u4").tolist() == [1, 2]      # version, bytes per id
    assert np.frombuffer(header[16:32], "<u8").tolist() == [10_000, 50257]


def test_uint16_up_to_65536_tokens_then_uint32(tmp_path):
    for vocab, dtype, top in ((65536, np.uint16, 65535), (65537, np.uint32, 65536),
                              (200_000, np.uint32, 199_999)):
        data.write_tokens(tmp_path / "t.bin", [0, top, 7], vocab)
        tf = data.open_tokens(tmp_path / "t.bin")
        assert tf.tokens.dtype == dtype and tf.tokens.tolist() == [0, top, 7]


def test_an_empty_file(tmp_path):
    data.write_tokens(tmp_path / "e.bin", [], 300)
    assert len(data.open_tokens(tmp_path / "e.bin")) == 0


def _corrupt(path, offset, raw):
    blob = bytearray(path.read_bytes())
    blob[offset:offset + len(raw)] = raw
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("change, message", [
    (lambda p: _corrupt(p, 0, b"NOTTOKEN"), r"expected a token file \(magic b'XCTOKENS'\) but "
                                            r"the first 8 bytes are b'NOTTOKEN'"),
    (lambda p: _corrupt(p, 8, np.uint32(2).tobytes()), r"expected token file version 1 but got 2"),
    (lambda p: _corrupt(p, 12, np.uint32(4).tobytes()),
     r"the header's id width 4 bytes does not fit its vocabulary of 50257 tokens"),
    (lambda p: _corrupt(p, 12, np.uint32(3).tobytes()), r"id width 3 bytes"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]),
     r"the header announces 10000 tokens of 2 bytes \(20032 bytes with the header\) but the "
     r"file has 20031 bytes"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), r"but the file has 20034 bytes"),
    (lambda p: p.write_bytes(p.read_bytes()[:20]), r"20 bytes is shorter than the 32-byte header"),
])
def test_a_bad_file_is_a_clear_error(tokens, tmp_path, change, message):
    path = tmp_path / "t.bin"
    change(path)
    with pytest.raises(ValueError, match=message):
        data.open_tokens(path)


@pytest.mark.parametrize("ids, vocab, error, message", [
    ([0, 300], 300, ValueError, r"ids\[1\]: expected an id in \[0, 300\) but got 300"),
    ([-1], 300, ValueError, r"ids\[0\]: expected an id in \[0, 300\) but got -1"),
    ([[1, 2]], 300, TypeError, r"ids: expected a 1-D integer array but got 2-D"),
    ([1.5], 300, TypeError, r"ids: expected a 1-D integer array but got 1-D float64"),
    ([1], 0, ValueError, r"vocab_size: expected a positive int but got 0"),
    ([1], 2 ** 32 + 1, ValueError, r"vocab_size: expected at most 2\*\*32 tokens"),
])
def test_bad_ids_are_refused_before_writing(tmp_path, ids, vocab, error, message):
    with pytest.raises(error, match=message):
        data.write_tokens(tmp_path / "t.bin", ids, vocab)
    assert not (tmp_path / "t.bin").exists()


# ----------------------------------------------------------------------------- batches

def test_random_batches_equal_direct_slices(tokens):
    ids, tf = tokens
    b = Batches(tf.tokens, batch_size=8, context=64, seed=3)
    for step in range(5):
        offsets = b.random_offsets(step)
        x, y = b.sample(step)
        assert x.shape == y.shape == (8, 64) and x.dtype == np.int64
        for row, o in enumerate(offsets):
            assert np.array_equal(x[row], ids[o:o + 64])
            assert np.array_equal(y[row], ids[o + 1:o + 65])
        assert offsets.min() >= 0 and offsets.max() <= len(ids) - 65


def test_the_same_seed_gives_the_same_batches(tokens):
    _, tf = tokens
    runs = [[Batches(tf.tokens, 4, 16, seed=s).sample(step) for step in range(4)]
            for s in (7, 7, 8)]
    for (x1, y1), (x2, y2) in zip(runs[0], runs[1]):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not all(np.array_equal(a[0], c[0]) for a, c in zip(runs[0], runs[2]))
    # a step recomputed alone (a resumed run) is the same batch
    assert np.array_equal(Batches(tf.tokens, 4, 16, seed=7).sample(3)[0], runs[0][3][0])
    # steps differ from each other
    assert not np.array_equal(runs[0][0][0], runs[0][1][0])


def test_ranks_read_disjoint_shards(tokens):
    _, tf = tokens
    seen = []
    for rank in range(3):
        b = Batches(tf.tokens, 16, 32, seed=5, rank=rank, world_size=3)
        start, stop = b.shard()
        positions = set()
        for step in range(20):
            o = b.random_offsets(step)
            assert o.min() >= start and o.max() + 33 <= stop
            positions |= {int(p) for off in o for p in range(off, off + 33)}
        seen.append(positions)
        again = Batches(tf.tokens, 16, 32, seed=5, rank=rank, world_size=3)
        assert np.array_equal(again.random_offsets(4), b.random_offsets(4))   # reproducible
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert [Batches(tf.tokens, 1, 1, rank=r, world_size=3).shard() for r in range(3)] == \
        [(0, 3333), (3333, 6666), (6666, 10000)]


def test_sequential_epoch_covers_the_windows_once_across_ranks():
    tokens = np.arange(1000)
    T, B, p = 10, 3, 2
    windows = (len(tokens) - 1) // T                    # 99 windows; 16 global batches of 6
    per_rank = []
    for rank in range(p):
        b = Batches(tokens, B, T, rank=rank, world_size=p)
        assert b.num_epoch_batches() == windows // (p * B) == 16
        batches = list(b.epoch())
        assert len(batches) == 16
        for index, (x, y) in enumerate(batches):
            offsets = b.epoch_offsets(index)
            assert np.array_equal(x, tokens[offsets[:, None] + np.arange(T)])
            assert np.array_equal(y, x + 1)
        per_rank.append([int(o) for i in range(16) for o in b.epoch_offsets(i)])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(0, 96 * T, T))   # in order, no gap
    assert per_rank[0][:4] == [0, 10, 20, 60] and per_rank[1][:4] == [30, 40, 50, 90]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(tokens=[1, 2, 3]), TypeError, r"tokens: expected a 1-D integer array but got list"),
    (dict(tokens=np.zeros((2, 5), int)), TypeError, r"tokens: expected a 1-D integer array"),
    (dict(tokens=np.zeros(9)), TypeError, r"tokens: .* but got 1-D float64"),
    (dict(batch_size=0), ValueError, r"batch_size: expected a positive int but got 0"),
    (dict(context=-1), ValueError, r"context: expected a positive int"),
    (dict(seed=-1), ValueError, r"seed: expected an int >= 0"),
    (dict(rank=2, world_size=2), ValueError, r"rank: expected 0 <= rank < world_size = 2"),
    (dict(world_size=0), ValueError, r"world_size: expected a positive int"),
])
def test_bad_batch_settings_name_the_argument(kwargs, error, message):
    settings = {"tokens": np.arange(100), "batch_size": 2, "context": 4, **kwargs}
    with pytest.raises(error, match=message):
        Batches(**settings)


def test_windows_that_do_not_fit_are_errors():
    b = Batches(np.arange(40), 2, 10, rank=3, world_size=4)           # shards of 10 tokens
    with pytest.raises(ValueError, match=r"context: a window of 11 tokens does not fit in the "
                                         r"10 tokens of rank 3's shard"):
        b.sample(0)
    with pytest.raises(ValueError, match=r"step: expected an int >= 0"):
        Batches(np.arange(40), 2, 4).sample(-1)
    with pytest.raises(ValueError, match=r"batch_size: one global batch of 4 x 2 windows of 10 "
                                         r"\+ 1 tokens needs 81 tokens but there are 40"):
        list(b.epoch())
    with pytest.raises(ValueError, match=r"index: expected a batch below 4"):
        Batches(np.arange(40), 2, 4).epoch_offsets(4)


@pytest.mark.skipif(not CORPUS.is_file(), reason=f"the shared corpus {CORPUS} is absent")
def test_a_corpus_encoded_once_and_mapped(tmp_path):
    text = CORPUS.read_text(encoding="utf-8")
    train_text, held_out = data.held_out_split(text)
    tok = train(train_text[:50_000], 400, special_tokens=["<|endoftext|>"])
    ids = tok.encode(held_out[:100_000])
    data.write_tokens(tmp_path / "heldout.bin", ids, tok.vocab_size)
    tf = data.open_tokens(tmp_path / "heldout.bin")
    assert tf.tokens.dtype == np.uint16 and tf.tokens.tolist() == ids
    b = Batches(tf.tokens, 4, 128, seed=0)
    x, y = b.sample(0)
    for row, o in enumerate(b.random_offsets(0)):
        assert tok.decode(x[row]) == tok.decode(ids[o:o + 128])
    assert tok.decode(next(b.epoch())[0][0]) == tok.decode(ids[:128])
