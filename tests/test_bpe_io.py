"""Saving and loading BPE tokenizers, and the production tokenizers on the same merges.

Our format: the exact text, round trips, and an error naming the line for a wrong first line,
another version, every truncation and every kind of bad line. tiktoken (built from our
mergeable ranks and pattern) and tokenizers (from our tokenizer.json) must give our ids; here on
text in many scripts and on drawn strings (the held-out corpus is test_bpe_heldout.py's).
"""
import json

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from ref_numpy import bpe, bpe_interop, bpe_io
from ref_numpy.bpe import Tokenizer
from ref_numpy.bpe_train import train

EOT = "<|endoftext|>"
MIXED = ("The quick brown fox — jumps over the lazy dog. Ça va? Übermäßig große Straße! "
         "Съешь же ещё этих мягких французских булок. 日本語のテキストと絵文字 😀👍🏽 "
         "ελληνικά γράμματα, עברית, العربية 12345 67890 don't WE'LL I'M\r\n\t  end  \n") * 8
PATTERNS = ("gpt2", "gpt4", "none")


def tiktoken_of(tok):
    return tiktoken.Encoding("crosscheck", pat_str=bpe_interop.tiktoken_pattern(tok.pattern),
                             mergeable_ranks=bpe_interop.mergeable_ranks(tok),
                             special_tokens=tok.special_tokens)


def tokenizers_of(tok):
    return HFTokenizer.from_str(json.dumps(bpe_interop.to_tokenizer_json(tok)))


@pytest.fixture(scope="module")
def trio():
    """Per pattern: our tokenizer, tiktoken on its ranks, tokenizers on its tokenizer.json."""
    out = {}
    for pattern in PATTERNS:
        tok = train(MIXED if pattern != "none" else MIXED[:400], 500, pattern=pattern,
                    special_tokens=[EOT, "<|pad|>"])
        out[pattern] = tok, tiktoken_of(tok), tokenizers_of(tok)
    return out


# ----------------------------------------------------------------------------- our format

def test_the_saved_text_and_its_round_trip(tmp_path):
    tok = Tokenizer([(104, 105), (256, 33)], "gpt4",
                    {EOT: 300, 'a "quoted"\nspecial ü': 258})
    text = bpe_io.dumps(tok)
    assert text.splitlines() == ["crosscheck-bpe 1", "pattern gpt4", "merges 2", "104 105",
                                 "256 33", "specials 2", '258 "a \\"quoted\\"\\nspecial ü"',
                                 f'300 "{EOT}"', "end"]
    assert bpe_io.loads(text) == tok
    bpe_io.save(tok, tmp_path / "t.bpe")
    back = bpe_io.load(tmp_path / "t.bpe")
    assert back == tok and back.encode("hi!") == tok.encode("hi!") == [256, 33]   # gpt4: hi | !


def test_a_trained_tokenizer_round_trips(trio, tmp_path):
    for tok, _, _ in trio.values():
        bpe_io.save(tok, tmp_path / "t.bpe")
        assert bpe_io.load(tmp_path / "t.bpe") == tok


def test_the_vocab_view_is_readable_and_lossy(tmp_path):
    tok = Tokenizer([(32, 116), (226, 130), (257, 172)], special_tokens=[EOT])
    bpe_io.save_vocab(tok, tmp_path / "t.vocab")
    lines = (tmp_path / "t.vocab").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# lossy view")
    assert lines[1 + 10] == "10 [\\n]" and lines[1 + 97] == "97 [a]"
    assert lines[-4:] == ["256 [ t] = [ ] + [t]", "257 [\\xe2\\x82] = [\\xe2] + [\\x82]",
                          "258 [€] = [\\xe2\\x82] + [\\xac]", f"259 [{EOT}] special"]


GOOD = bpe_io.dumps(Tokenizer([(104, 105), (256, 33)], "gpt2", [EOT]))


@pytest.mark.parametrize("text, message", [
    ("hello\n", r"t.bpe:1: expected 'crosscheck-bpe 1' \(a crosscheck BPE file\) but got 'hello'"),
    (GOOD.replace("crosscheck-bpe 1", "crosscheck-bpe 2"),
     r"t.bpe:1: expected format version 1 but got 2"),
    (GOOD.replace("pattern gpt2", "pattern gpt3"),
     r"t.bpe:2: expected a pattern among gpt2, gpt4, none but got 'gpt3'"),
    (GOOD.replace("pattern gpt2", "patern gpt2"), r"t.bpe:2: expected 'pattern \.\.\.'"),
    (GOOD.replace("merges 2", "merges two"), r"t.bpe:3: expected 'merges N' with N an int"),
    (GOOD.replace("256 33", "256 x"), r"t.bpe:5: expected merge 1 as two ints 'a b'"),
    (GOOD.replace("256 33", "257 33"), r"t.bpe:5: merge 1 uses token 257, which does not exist"),
    (GOOD.replace("256 33", "104 105"), r"t.bpe:5: merge 1 repeats the pair 104 105 of line 4"),
    (GOOD.replace("merges 2", "merges 3"),
     r"t.bpe:6: expected merge 2 as two ints 'a b' but got 'specials 1'"),
    (GOOD.replace(f'258 "{EOT}"', f"258 {EOT}"), r"t.bpe:7: expected special token 0 as 'id"),
    (GOOD.replace(f'258 "{EOT}"', f'200 "{EOT}"'),
     r"t.bpe: special_tokens: '<\|endoftext\|>' has id 200, which collides"),
    (GOOD.replace("end", "fin"), r"t.bpe:8: expected 'end' but got 'fin'"),
    (GOOD + "more\n", r"t.bpe:9: expected nothing after 'end' but got 'more'"),
])
def test_a_bad_file_is_an_error_naming_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        bpe_io.loads(text, "t.bpe")


def test_every_truncation_is_an_error():
    for cut in range(len(GOOD) - 1):        # all but the final newline is missing something
        with pytest.raises(ValueError, match=r"t\.bpe:\d+: "):
            bpe_io.loads(GOOD[:cut], "t.bpe")
    assert bpe_io.loads(GOOD[:-1], "t.bpe") == bpe_io.loads(GOOD)
    with pytest.raises(ValueError, match=r"t.bpe:8: the file ends where the 'end' line was "
                                         r"expected \(truncated\?\)"):
        bpe_io.loads(GOOD[:GOOD.rindex("end")], "t.bpe")


# ----------------------------------------------------------------------------- tiktoken, tokenizers

@pytest.mark.parametrize("pattern", PATTERNS)
def test_tiktoken_and_tokenizers_give_our_ids(trio, pattern):
    tok, tt, hf = trio[pattern]
    text = MIXED if pattern != "none" else MIXED[:400]
    ours = tok.encode(text)
    assert len(ours) < len(text.encode()) / 2          # the merges do apply
    assert tt.encode(text) == ours
    assert hf.encode(text).ids == ours
    with_special = f"a{EOT}b <|pad|>"
    assert tt.encode(with_special, allowed_special="all") == \
        tok.encode(with_special, allowed_special="all") == hf.encode(with_special).ids


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000aA1'sStTdDlLmM"
                                    "ve!.ſK\u212a²٣😀é日")) | st.characters(codec="utf-8"),
               max_size=40))
def test_tiktoken_and_tokenizers_give_our_ids_on_drawn_strings(trio, text):
    # whitespace of every kind, contractions in both cases, digits of other scripts, and case
    # folding (ſ and the Kelvin sign fold to s and k): where the three regex engines could part
    for pattern in ("gpt2", "gpt4"):
        tok, tt, hf = trio[pattern]
        ours = tok.encode(text, disallowed_special=())
        assert tt.encode(text, disallowed_special=()) == ours
        if EOT not in text and "<|pad|>" not in text:
            assert hf.encode(text).ids == ours


def test_tokenizers_splits_like_ours_with_the_oniguruma_pattern():
    # where tiktoken's regex read by Oniguruma would part from ours: "{1,3}+" is a repeated
    # repeat there (all digits in one chunk), and "$" an end of line (tiktoken's "\s++$" keeps
    # trailing whitespace whole)
    for text in ("1234567 89", "x \n ", "a  \nb", "x\n  \n", "12345 \n\n  ", "end\n"):
        ours = bpe.split(text, "gpt4")
        pre = tokenizers_of(Tokenizer([], "gpt4")).pre_tokenizer.pre_tokenize_str(text)
        spell = bpe_interop.bytes_to_unicode()
        assert [piece for piece, _ in pre] == [
            "".join(spell[b] for b in chunk.encode()) for chunk in ours], text


def test_import_from_tokenizer_json_and_mergeable_ranks(trio, tmp_path):
    for tok, _, hf in trio.values():
        assert bpe_interop.from_tokenizer_json(bpe_interop.to_tokenizer_json(tok)) == tok
        # what tokenizers itself writes back loads too
        (tmp_path / "hf.json").write_text(hf.to_str(), encoding="utf-8")
        assert bpe_interop.load_tokenizer_json(tmp_path / "hf.json") == tok
        back = bpe_interop.from_mergeable_ranks(bpe_interop.mergeable_ranks(tok), tok.pattern,
                                           tok.special_tokens)
        assert back == tok


def test_mergeable_ranks_follow_merge_order(trio):
    tok = trio["gpt2"][0]
    ranks = bpe_interop.mergeable_ranks(tok)
    assert list(ranks.values()) == list(range(tok.n_base))
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert all(ranks[tok.token_bytes(a) + tok.token_bytes(b)] == 256 + k
               for k, (a, b) in enumerate(tok.merges))


def test_tiktoken_joins_by_bytes_so_hand_made_merges_can_part():
    # bc before ab, and abc made from ab + c: merging by rank stops at [a, bc]; tiktoken sees
    # that a + bc spells abc, a token, and joins them (no trainer learns this order: once bc
    # is merged, no ab is ever followed by c)
    tok = Tokenizer([(98, 99), (97, 98), (257, 99)], pattern="none")
    assert tok.encode("abc") == tokenizers_of(tok).encode("abc").ids == [97, 256]
    assert tiktoken_of(tok).encode("abc") == [258]


def test_a_vocabulary_with_repeated_bytes_cannot_be_exported():
    # ab, then ab + c, then bc, then a + bc: "abc" twice
    tok = Tokenizer([(97, 98), (256, 99), (98, 99), (97, 258)], pattern="none")
    for export in (bpe_interop.mergeable_ranks, bpe_interop.to_tokenizer_json):
        with pytest.raises(ValueError, match=r"tokenizer: tokens 257 and 259 have the same "
                                             r"bytes b'abc'"):
            export(tok)


def _doc(**changes):
    doc = bpe_interop.to_tokenizer_json(Tokenizer([(104, 105)], special_tokens=[EOT]))
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value
    return doc


@pytest.mark.parametrize("doc, message", [
    (_doc(model__type="WordPiece"), r"model.type: expected 'BPE' but got 'WordPiece'"),
    (_doc(model__ignore_merges=True), r"model.ignore_merges: expected False"),
    (_doc(normalizer={"type": "NFC"}), r"normalizer: expected none"),
    (_doc(pre_tokenizer={"type": "Whitespace"}), r"pre_tokenizer: expected ByteLevel"),
    (_doc(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": bpe.GPT4_PATTERN}, "behavior": "Isolated",
         "invert": False}, {"type": "ByteLevel", "use_regex": False}]}),
     r"pre_tokenizer: expected ByteLevel"),              # tiktoken's regex, not Oniguruma's
    (_doc(model__vocab={**_doc()["model"]["vocab"], "!": 5}),      # GPT-2's own layout
     r"model.vocab: expected the byte 33 \('!'\) at id 33 but got 5"),
    (_doc(model__merges=[["h", "xyz"]]),
     r"model.merges\[0\]: expected two tokens of the vocab but got \['h', 'xyz'\]"),
    (_doc(model__merges=[["i", "h"]]), r"model.merges\[0\]: 'ih' has id None, expected 256"),
    (_doc(added_tokens=[{"id": 257, "content": "x", "special": False}]),
     r"added_tokens\[0\]: expected a special token"),
])
def test_a_tokenizer_json_of_another_form_is_refused(doc, message):
    with pytest.raises(ValueError, match=message):
        bpe_interop.from_tokenizer_json(doc, "t.json")


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{\n "model":\n  [1, 2,,]\n}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"t.json:3: not valid JSON"):
        bpe_interop.load_tokenizer_json(path)


def test_bad_ranks_and_arguments():
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match=r"ranks: expected byte b at rank b"):
        bpe_interop.from_mergeable_ranks({**ranks, b"a": 7, b"\x07": 97})
    with pytest.raises(ValueError, match=r"ranks: token b'abc' \(rank 256\) is not the merge"):
        bpe_interop.from_mergeable_ranks({**ranks, b"abc": 256})
    with pytest.raises(TypeError, match=r"tokenizer: expected a ref_numpy.bpe.Tokenizer"):
        bpe_io.dumps("not a tokenizer")
    with pytest.raises(ValueError, match=r"pattern: expected one of"):
        bpe_interop.tiktoken_pattern("gpt3")
