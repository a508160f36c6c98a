"""Byte-level BPE: the known answer, the tie-break, fast = plain trainer, round trips, special
tokens, the chunk cache, the classic word form, and the errors.

Tests that read the shared corpus skip, with the reason, where ../shared is absent. The fast and
plain trainers are compared on the first 100,000 bytes of it with 256 + 60 merges: the plain
trainer recounts the whole text after every merge, and 60 keep it at a few seconds.
"""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ref_numpy import bpe
from ref_numpy.bpe import Tokenizer
from ref_numpy.bpe_train import (apply_word_merges, chunks, merge_loop, train, train_plain,
                                 train_words)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare.txt"
needs_corpus = pytest.mark.skipif(not CORPUS.is_file(),
                                  reason=f"the shared corpus {CORPUS} is absent")
EOT = "<|endoftext|>"
# Text in several scripts, so that merges make multi-byte and partial-character tokens.
MIXED = ("The quick brown fox — jumps over the lazy dog. Ça va? Übermäßig große Straße! "
         "Съешь же ещё этих мягких французских булок. 日本語のテキストと絵文字 😀👍🏽 "
         "ελληνικά γράμματα, עברית, العربية 12345 67890 don't WE'LL\r\n\t  end  ") * 8


@pytest.fixture(scope="module")
def mixed():
    return {p: train(MIXED, 420, pattern=p, special_tokens=[EOT]) for p in bpe.PATTERNS}


# ----------------------------------------------------------------------------- training

def test_known_answer_aaabdaaabac():
    for trainer in (train, train_plain):
        tok = trainer("aaabdaaabac", 259, pattern="none")
        assert tok.merges == [(97, 97), (97, 98), (256, 257)]          # aa, ab, aa+ab
        assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
        assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert train("aaabdaaabac", 256, pattern="none").merges == []


def test_tie_break_is_the_smallest_pair_not_the_first_seen():
    # every pair occurs once: "cd" comes first in the text, "ab" is the smallest pair
    for trainer in (train, train_plain):
        assert trainer("cdab", 257, pattern="none").merges == [(97, 98)]
        # ac, ca and ab all occur twice: the left ids tie at 97, the right id decides
        assert trainer("acab acab", 257, pattern="none").merges == [(97, 98)]
        # a merged token against bytes: the known answer's second merge, (97, 98) before
        # (256, 97), both twice
        assert trainer("aaabdaaabac", 258, pattern="none").merges[1] == (97, 98)


def test_counts_overlaps_and_merges_left_to_right():
    tok = train("aaaa", 258, pattern="none")
    assert tok.merges == [(97, 97), (256, 256)]        # aa counted 3 times, merged to [aa, aa]
    assert tok.encode("aaaaa") == [257, 97]


@needs_corpus
def test_fast_and_plain_trainers_agree_on_the_first_100kb():
    text = CORPUS.read_bytes()[:100_000].decode("utf-8")
    fast = train(text, 256 + 60)
    assert fast.merges == train_plain(text, 256 + 60).merges
    assert len(fast.merges) == 60 and [fast.token_bytes(i) for i in (256, 257)] == [b" t", b"he"]


def test_fast_and_plain_trainers_agree_without_the_corpus():
    for pattern in bpe.PATTERNS:
        text = MIXED if pattern != "none" else MIXED[:300]
        assert train(text, 256 + 40, pattern=pattern).merges == \
            train_plain(text, 256 + 40, pattern=pattern).merges


@settings(max_examples=150, deadline=None)
@given(st.text(st.sampled_from("aab b\n"), max_size=60), st.integers(0, 12),
       st.sampled_from(["none", "gpt2"]))
def test_fast_and_plain_trainers_agree_on_drawn_text(text, merges, pattern):
    # a three-letter alphabet makes runs ("aaaa"), repeats ("abab") and ties everywhere
    assert train(text, 256 + merges, pattern=pattern).merges == \
        train_plain(text, 256 + merges, pattern=pattern).merges


def test_training_stops_when_no_pair_is_left():
    tok = train("ab ab", 300)                           # "ab", " ab": then nothing to merge
    assert tok.merges == [(97, 98), (32, 256)] and tok.vocab_size == 258
    assert train_plain("ab ab", 300).merges == tok.merges


def test_special_tokens_are_cut_out_of_the_training_text():
    assert chunks(f"ab{EOT}ab", "none", [EOT]) == ["ab", "ab"]
    tok = train(f"x{EOT}y" * 50, 258, pattern="none", special_tokens=[EOT])
    assert tok.merges == [(121, 120)]           # "yx" 49 times; "xy" only across the special
    assert tok.special_tokens == {EOT: 257} and tok.vocab_size == 258


def test_progress_is_called_after_each_merge():
    seen = []
    train("aaabdaaabac", 259, pattern="none", progress=lambda done, total: seen.append(
        (done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_merge_loop_on_its_own():
    assert merge_loop([[0, 1, 0, 1], [1, 0]], [1, 5], 2, first_id=2) == [(1, 0), (0, 2)]
    assert merge_loop([], [], 5, first_id=2) == []


def test_classic_word_form_of_the_paper():
    vocab = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    merges = train_words(vocab, 10)
    assert merges == [("e", "s"), ("t", "</w>"), ("es", "t</w>"), ("l", "o"), ("lo", "w"),
                      ("e", "w"), ("n", "ew"), ("new", "est</w>"), ("low", "</w>"),
                      ("d", "est</w>")]
    assert apply_word_merges("newest", merges) == ["newest</w>"]
    assert apply_word_merges("lowest", merges) == ["low", "est</w>"]   # never seen whole
    # the end-of-word symbol keeps a suffix apart from the same letters inside a word
    assert apply_word_merges("estate", merges)[0] == "es"


# ----------------------------------------------------------------------------- encode / decode

@pytest.mark.parametrize("text", ["", "a", "😀", "👍🏽", "é", "e\u0301", "\r\n", " " * 7,
                                  "日本語", "Ça va? Привет, мир! 😀 مرحبا", EOT, "\x00\xff",
                                  "don't WE'LL 1234567"])
def test_round_trip_of_small_strings(mixed, text):
    for tok in mixed.values():
        assert tok.decode(tok.encode(text, disallowed_special=())) == text
        assert tok.decode_bytes(tok.encode_ordinary(text)) == text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_round_trip_of_drawn_strings(mixed, text):
    for tok in mixed.values():
        ids = tok.encode(text, disallowed_special=())
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.n_base for i in ids)


def test_encode_merges_by_rank_not_by_length():
    # rank 0 is "bc", so "abc" is a + bc although "ab" + c would also exist
    tok = Tokenizer([(98, 99), (97, 98)], pattern="none")
    assert tok.encode("abc") == [97, 256]
    tok = Tokenizer([(97, 98), (98, 99)], pattern="none")
    assert tok.encode("abc") == [256, 99]


def test_decode_replaces_a_cut_character_and_decode_bytes_is_exact(mixed):
    tok = mixed["gpt2"]
    # byte-level merges learn tokens that hold part of a character (" \xd0" of " и")
    partial = [i for i in range(256, tok.n_base) if _invalid(tok.token_bytes(i))]
    assert partial
    for i in partial[:20]:
        assert "\ufffd" in tok.decode([i])                        # errors="replace"
        assert tok.decode_bytes([i]) == tok.token_bytes(i)        # exact
    assert tok.decode([226, 130]) == "\ufffd"                     # 2 of the 3 bytes of '€'
    assert tok.decode([226, 130, 172]) == "€"


def _invalid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_decode_accepts_lists_tuples_and_integer_arrays(mixed):
    tok = mixed["gpt4"]
    ids = tok.encode("Hello there")
    for form in (ids, tuple(ids), np.array(ids, np.uint16), np.array(ids, np.int64)):
        assert tok.decode(form) == "Hello there"
    assert tok.decode([]) == "" and tok.decode(np.zeros(0, np.int32)) == ""


def test_split_patterns_differ_where_gpt2_and_gpt4_differ():
    text = "I'M here 1234567\n\n  x"
    assert bpe.split(text, "gpt2") == ["I", "'", "M", " here", " 1234567", "\n\n ", " x"]
    assert bpe.split(text, "gpt4") == ["I", "'M", " here", " ", "123", "456", "7", "\n\n",
                                       " ", " x"]
    assert bpe.split(text, "none") == [text] and bpe.split("", "none") == []


def test_chunk_cache_changes_nothing(mixed, monkeypatch):
    tok = mixed["gpt2"]
    text = MIXED[:500]
    first = tok.encode(text)
    assert tok.encode(text) == first                    # from the cache
    tok.clear_cache()
    monkeypatch.setattr(bpe, "CACHE_SIZE", 3)           # emptied again and again
    assert tok.encode(text) == first and len(tok._cache) <= 3


# ----------------------------------------------------------------------------- special tokens

def test_special_token_policies():
    tok = Tokenizer([], special_tokens=[EOT, "<|pad|>"])
    eot, pad = tok.special_tokens[EOT], tok.special_tokens["<|pad|>"]
    text = f"a{EOT}b<|pad|>"
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at index 1"):
        tok.encode(text)                                             # default: raise
    assert tok.encode(text, allowed_special="all") == [97, eot, 98, pad]
    with pytest.raises(ValueError, match=r"'<\|pad\|>' at index 15"):
        tok.encode(text, allowed_special={EOT})                      # a set; the rest raise
    assert tok.encode(text, allowed_special={EOT}, disallowed_special=()) == \
        [97, eot, 98, *b"<|pad|>"]
    assert tok.encode(text, disallowed_special=()) == list(text.encode())   # all as text
    assert tok.encode_ordinary(text) == list(text.encode())
    assert tok.decode([eot, pad]) == EOT + "<|pad|>"


def test_longest_special_token_wins():
    tok = Tokenizer([], special_tokens=["<|a|>", "<|a|>x"])
    assert tok.encode("<|a|>x<|a|>", allowed_special="all") == [257, 256]


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call, error, message", [
    (lambda: train("abc", 255), ValueError,
     r"vocab_size: expected an int >= 256 \(the 256 byte tokens\) but got 255"),
    (lambda: train("abc", 256, special_tokens=[EOT]), ValueError,
     r"vocab_size: expected an int >= 257 \(the 256 byte tokens \+ 1 special tokens\)"),
    (lambda: train_plain("abc", 300.0), TypeError, r"vocab_size: expected an int but got float"),
    (lambda: train("abc", 300, pattern="gpt3"), ValueError,
     r"pattern: expected one of 'gpt2', 'gpt4', 'none' but got 'gpt3'"),
    (lambda: train(b"abc", 300), TypeError, r"text: expected a str but got bytes"),
    (lambda: train("abc", 300, special_tokens=EOT), TypeError, r"special_tokens: expected a list"),
    (lambda: Tokenizer([], special_tokens={EOT: 100}), ValueError,
     r"'<\|endoftext\|>' has id 100, which collides with the byte and merge tokens \(ids 0..255\)"),
    (lambda: Tokenizer([], special_tokens={"<|a|>": 300, "<|b|>": 300}), ValueError,
     r"special_tokens: '<\|a\|>' and '<\|b\|>' both have id 300"),
    (lambda: Tokenizer([], special_tokens=[EOT, EOT]), ValueError, r"appears twice"),
    (lambda: Tokenizer([], special_tokens=[""]), ValueError, r"expected non-empty strings"),
    (lambda: Tokenizer([(97, 256)]), ValueError, r"merges\[0\]: expected ids below 256"),
    (lambda: Tokenizer([(97, 98), (97, 98)]), ValueError,
     r"merges\[1\]: the pair \(97, 98\) is already merges\[0\]"),
    (lambda: Tokenizer([(97, -1)]), ValueError, r"merges\[0\]: expected an int >= 0 but got -1"),
    (lambda: Tokenizer([], pattern="cl100k"), ValueError, r"pattern: expected one of"),
    (lambda: Tokenizer([]).decode([300]), ValueError,
     r"ids\[0\]: 300 is not a token id of this tokenizer \(expected 0 <= id < 256\)"),
    (lambda: Tokenizer([]).decode([65, -1]), ValueError, r"ids\[1\]: -1 is not a token id"),
    (lambda: Tokenizer([], special_tokens={EOT: 300}).decode([299]), ValueError,
     r"ids\[0\]: 299 is not a token id .* and the special ids \[300\]"),
    (lambda: Tokenizer([]).decode([1.0]), TypeError, r"ids\[0\]: expected an int token id"),
    (lambda: Tokenizer([]).decode([True]), TypeError, r"ids\[0\]: expected an int token id"),
    (lambda: Tokenizer([]).decode(np.zeros((2, 2), int)), TypeError,
     r"ids: expected a 1-D integer array but got 2-D"),
    (lambda: Tokenizer([]).decode("abc"), TypeError, r"ids: expected a list of ints"),
    (lambda: Tokenizer([]).encode(b"abc"), TypeError, r"text: expected a str but got bytes"),
    (lambda: Tokenizer([], special_tokens=[EOT]).encode("a", allowed_special={"<|x|>"}),
     ValueError, r"allowed_special: '<\|x\|>' is not a special token of this tokenizer"),
    (lambda: Tokenizer([], special_tokens=[EOT]).encode("a", allowed_special=EOT), TypeError,
     r"allowed_special: expected 'all' or a set of special-token strings"),
    (lambda: train_words({"low": 0}, 3), ValueError, r"the count of 'low' must be an int >= 1"),
    (lambda: train_words({}, 3), TypeError, r"word_counts: expected a non-empty dict"),
    (lambda: train_words({"low": 1}, -1), ValueError, r"num_merges: expected an int >= 0"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
