"""``crosscheck tokenizer train|encode|decode`` through a parser built here with the module's
``add_arguments``, as ``equivalence.cli`` builds it: outputs, files, exit statuses, messages."""
import argparse
import json

import pytest
from tokenizers import Tokenizer as HFTokenizer

from equivalence import tokenizer_cli
from ref_numpy import bpe_io, data

TEXT = ("From fairest creatures we desire increase, that thereby beauty's rose might never "
        "die. Ça va? Привет 😀\n") * 30


def cli(argv):
    parser = argparse.ArgumentParser(prog="crosscheck tokenizer")
    tokenizer_cli.add_arguments(parser)
    return tokenizer_cli.main(parser.parse_args(argv))


@pytest.fixture
def model(tmp_path):
    (tmp_path / "in.txt").write_text(TEXT, encoding="utf-8")
    assert cli(["train", "--input", str(tmp_path / "in.txt"), "--vocab-size", "320",
                "--out", str(tmp_path / "tok.bpe"), "--special", "<|endoftext|>",
                "--tokenizer-json", str(tmp_path / "tok.json")]) == 0
    return tmp_path / "tok.bpe"


def test_train_writes_the_model_the_vocab_view_and_tokenizer_json(capsys, model):
    tok = bpe_io.load(model)
    assert tok.vocab_size == 320 and tok.special_tokens == {"<|endoftext|>": 319}
    assert model.with_suffix(".vocab").read_text(encoding="utf-8").startswith("# lossy view")
    hf = HFTokenizer.from_file(str(model.with_suffix(".json")))
    assert hf.encode(TEXT).ids == tok.encode(TEXT)
    assert "trained 63 merges, vocabulary 320, on" in capsys.readouterr().err


def test_train_on_the_first_bytes_of_several_files(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("ab" * 100, encoding="utf-8")
    (tmp_path / "b.txt").write_text("€" * 100, encoding="utf-8")
    assert cli(["train", "--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                "--vocab-size", "300", "--out", str(tmp_path / "t.bpe"), "--pattern", "none",
                "--max-bytes", "201"]) == 0          # 200 bytes of a, one byte of '€' dropped
    assert "on 200 bytes" in capsys.readouterr().err
    assert bpe_io.load(tmp_path / "t.bpe").pattern == "none"


def test_encode_prints_ids_and_decode_prints_text(model, capsys):
    assert cli(["encode", "--model", str(model), "--text", "beauty's rose"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == bpe_io.load(model).encode("beauty's rose")
    assert cli(["decode", "--model", str(model), "--ids", *map(str, ids)]) == 0
    assert capsys.readouterr().out == "beauty's rose"
    # a tokenizer.json model gives the same ids
    assert cli(["encode", "--model", str(model.with_suffix(".json")),
                "--text", "beauty's rose"]) == 0
    assert [int(i) for i in capsys.readouterr().out.split()] == ids


def test_encode_a_file_to_a_token_file_and_decode_it(model, tmp_path, capsys):
    assert cli(["encode", "--model", str(model), "--input", str(tmp_path / "in.txt"),
                "--out", str(tmp_path / "in.bin")]) == 0
    tf = data.open_tokens(tmp_path / "in.bin")
    assert tf.vocab_size == 320 and tf.tokens.tolist() == bpe_io.load(model).encode(TEXT)
    assert f"wrote {len(tf)} tokens (uint16)" in capsys.readouterr().err
    assert cli(["decode", "--model", str(model), "--input", str(tmp_path / "in.bin")]) == 0
    assert capsys.readouterr().out == TEXT
    (tmp_path / "ids.txt").write_text(" ".join(map(str, tf.tokens.tolist()[:5])) + "\n")
    assert cli(["decode", "--model", str(model), "--input", str(tmp_path / "ids.txt")]) == 0
    assert TEXT.startswith(capsys.readouterr().out)


def test_special_token_policy_on_the_command_line(model, capsys):
    assert cli(["encode", "--model", str(model), "--text", "a<|endoftext|>"]) == 2
    assert ("tokenizer encode: text: contains the special token '<|endoftext|>' at index 1"
            in capsys.readouterr().err)
    assert cli(["encode", "--model", str(model), "--text", "a<|endoftext|>",
                "--allowed-special", "all"]) == 0
    assert capsys.readouterr().out.split()[-1] == "319"
    assert cli(["encode", "--model", str(model), "--text", "a<|endoftext|>",
                "--special-as-text"]) == 0
    assert "319" not in capsys.readouterr().out.split()


def test_decode_says_when_bytes_are_not_utf8(model, tmp_path, capsys):
    assert cli(["decode", "--model", str(model), "--ids", "72", "226", "130"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "H\ufffd" and "not valid UTF-8" in captured.err
    assert cli(["decode", "--model", str(model), "--ids", "72", "226", "130",
                "--out", str(tmp_path / "raw")]) == 0
    assert (tmp_path / "raw").read_bytes() == b"H\xe2\x82"


@pytest.mark.parametrize("argv, message", [
    (["train", "--input", "missing.txt", "--vocab-size", "300", "--out", "x.bpe"],
     "tokenizer train: [Errno 2] No such file or directory: 'missing.txt'"),
    (["decode", "--model", "{model}", "--ids", "5000"],
     "tokenizer decode: ids[0]: 5000 is not a token id of this tokenizer"),
    (["decode", "--model", "{model}", "--ids", "-1"], "ids[0]: -1 is not a token id"),
    (["decode", "--model", "{dir}/in.txt", "--ids", "1"],
     "tokenizer decode: {dir}/in.txt:1: expected 'crosscheck-bpe 1' (a crosscheck BPE file)"),
    (["decode", "--model", "{model}", "--input", "{dir}/in.txt"],
     "tokenizer decode: --input: {dir}/in.txt: word 0 is 'From', not a token id"),
    (["train", "--input", "{dir}/in.txt", "--vocab-size", "300", "--out", "{dir}/x.vocab"],
     "--out: expected a path whose suffix is not .vocab"),
    (["train", "--input", "{dir}/latin1.txt", "--vocab-size", "300", "--out", "{dir}/x.bpe"],
     "tokenizer train: --input: not UTF-8 text (byte 1 of the joined input"),
])
def test_bad_input_exits_2_naming_the_problem(model, tmp_path, capsys, argv, message):
    (tmp_path / "latin1.txt").write_bytes(b"a\xe9b")
    fill = {"model": str(model), "dir": str(tmp_path)}
    assert cli([a.format(**fill) for a in argv]) == 2
    assert message.format(**fill) in capsys.readouterr().err


def test_argument_errors_are_argparse_errors(capsys):
    for argv in (["train", "--input", "x", "--vocab-size", "0", "--out", "y"],
                 ["train", "--input", "x", "--vocab-size", "300", "--out", "y",
                  "--pattern", "gpt3"],
                 ["encode", "--model", "m"], ["frobnicate"]):
        with pytest.raises(SystemExit):
            cli(argv)
    assert "invalid choice: 'gpt3'" in capsys.readouterr().err


def test_tokenizer_json_written_by_train_is_valid_json(model):
    doc = json.loads(model.with_suffix(".json").read_text(encoding="utf-8"))
    assert doc["model"]["type"] == "BPE" and doc["pre_tokenizer"]["type"] == "ByteLevel"
