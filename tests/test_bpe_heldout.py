"""The held-out works of the shared corpus: the round trip, and tiktoken and tokenizers giving
our ids on the whole held-out text, for the GPT-2 and the GPT-4 split.

The split is by whole works (../shared/data/README.md): the file holds 42 works, and the last 5
(Titus Andronicus to The Winter's Tale, 645,379 bytes) are held out. Each tokenizer is trained on
the first 300,000 bytes of the other 37 at 1024 tokens, one of them <|endoftext|>. Everything
here skips, with the reason, where ../shared is absent.
"""
import json
from pathlib import Path

import pytest
import tiktoken
from tokenizers import Tokenizer as HFTokenizer

from ref_numpy import bpe_interop, data
from ref_numpy.bpe_train import train

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare.txt"
pytestmark = pytest.mark.skipif(not CORPUS.is_file(),
                                reason=f"the shared corpus {CORPUS} is absent")
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def split():
    return data.held_out_split(CORPUS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def encoded(request, split):
    """(tokenizer, held-out text, our ids) for one pattern."""
    train_text, held_out = split
    tok = train(train_text[:300_000], 1024, pattern=request.param, special_tokens=[EOT])
    return tok, held_out, tok.encode(held_out)


def test_the_split_is_by_whole_works(split):
    works = data.works(CORPUS.read_text(encoding="utf-8"))
    assert len(works) == 42
    titles = [w.split("\n", 1)[0] for w in works]
    assert titles[:2] == ["ALL'S WELL THAT ENDS WELL", "ANTONY AND CLEOPATRA"]
    assert titles[-5:] == ["THE TRAGEDY OF TITUS ANDRONICUS",
                           "THE HISTORY OF TROILUS AND CRESSIDA",
                           "TWELFTH NIGHT; OR, WHAT YOU WILL", "THE TWO GENTLEMEN OF VERONA",
                           "THE WINTER'S TALE"]
    train_text, held_out = split
    assert held_out.startswith("THE TRAGEDY OF TITUS ANDRONICUS\n\nby William Shakespeare")
    assert train_text.endswith("[Exeunt.]") and len(held_out.encode()) == 645_379


def test_round_trip_of_the_held_out_works(encoded):
    tok, held_out, ids = encoded
    assert tok.decode(ids) == held_out
    assert len(ids) < 0.45 * len(held_out)             # 1024 tokens do compress


def test_tiktoken_gives_our_ids_on_the_held_out_works(encoded):
    tok, held_out, ids = encoded
    enc = tiktoken.Encoding("crosscheck", pat_str=bpe_interop.tiktoken_pattern(tok.pattern),
                            mergeable_ranks=bpe_interop.mergeable_ranks(tok),
                            special_tokens=tok.special_tokens)
    assert enc.encode(held_out) == ids


def test_tokenizers_gives_our_ids_on_the_held_out_works(encoded):
    tok, held_out, ids = encoded
    hf = HFTokenizer.from_str(json.dumps(bpe_interop.to_tokenizer_json(tok)))
    assert hf.encode(held_out).ids == ids
    assert hf.decode(ids) == held_out
