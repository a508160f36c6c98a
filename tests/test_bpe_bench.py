"""``crosscheck bench tokenizer`` end to end at a tiny size, on text written here (no corpus).

As tests/test_bench.py does for the other benches, the figures are not asserted; the tables
are: every side ran in a child with the thread setting asked for, the ratios come from the
medians of the same invocation, and tiktoken and tokenizers gave our ids.
"""
import pytest

from equivalence.bench import tokenizer as bench
from equivalence.cli import build_parser

TEXT = ("Shall I compare thee to a summer's day? Thou art more lovely and more temperate. "
        "Rough winds do shake the darling buds of May, 1609.\n") * 150


def _run(tmp_path, *extra):
    (tmp_path / "in.txt").write_text(TEXT, encoding="utf-8")
    argv = ["bench", "tokenizer", "--input", str(tmp_path / "in.txt"),
            "--heldout", str(tmp_path / "in.txt"), "--train-bytes", "8000",
            "--plain-vocab-size", "270", "--hf-vocab-size", "300", "--encode-vocab-size", "300",
            "--repeats", "2", "--warmup", "0", "--min-time", "0", "--train-repeats", "1",
            *extra]
    return bench.run(build_parser(argv).parse_args(argv))


def test_bench_tokenizer_tables(tmp_path):
    tables = _run(tmp_path)
    assert list(tables) == ["ratios", "timings", "corpus"]
    timings, ratios = tables["timings"], tables["ratios"]
    assert [(r["task"], r["vocab"], r["side"]) for r in timings] == [
        ("train", 270, "ours (incremental)"), ("train", 270, "plain trainer (recount every merge)"),
        ("train", 300, "ours (incremental)"), ("train", 300, "tokenizers BpeTrainer"),
        ("encode", 300, "ours (chunk cache, cold)"), ("encode", 300, "tiktoken, our ranks"),
        ("encode", 300, "tokenizers, our tokenizer.json")]
    assert all(r["threads"] == 1 and "x1" in r["libraries"] for r in timings)   # default: 1
    assert [r["repeats x calls"] for r in timings] == ["1 x 1"] * 4 + ["2 x 1"] * 3
    median = {(r["task"], r["vocab"], r["side"]): r["median s"] for r in timings}
    for r in ratios:
        cand, peer = median[r["task"], r["vocab"], r["candidate"]], median[
            r["task"], r["vocab"], r["peer"]]
        assert (r["candidate s"], r["peer s"]) == (cand, peer)
        assert r["ratio"] == pytest.approx(cand / peer)
        assert r["speedup"] == pytest.approx(peer / cand)
    assert [(r["comparison"], r["target"]) for r in ratios] == [
        ("ours vs the plain trainer", "<= 0.05"), ("ours vs tokenizers", "-"),
        ("ours vs tiktoken", "<= 20"), ("ours vs tokenizers", "-")]
    assert [r["ids identical"] for r in ratios] == [None, None, "yes", "yes"]
    encode_rows = [r for r in timings if r["task"] == "encode"]
    assert all(r["MB/s"] == pytest.approx(len(TEXT) / r["median s"] / 1e6) for r in encode_rows)
    assert tables["corpus"] == [{"train bytes": 8000, "heldout bytes": len(TEXT),
                                 "heldout": str(tmp_path / "in.txt")}]


def test_bench_tokenizer_one_part_and_its_errors(tmp_path):
    tables = _run(tmp_path, "--part", "encode", "--pattern", "gpt4")
    assert {r["task"] for r in tables["timings"]} == {"encode"}
    assert all(r["pattern"] == "gpt4" for r in tables["ratios"])
    for bad, message in ((["--plain-vocab-size", "256"], r"--plain-vocab-size: expected an int "
                                                          r">= 257"),
                         (["--train-repeats", "0"], r"--train-repeats: expected an int >= 1"),
                         (["--heldout", str(tmp_path / "nope.txt")], r"--heldout: expected a "
                                                                      r"text file")):
        with pytest.raises(ValueError, match=message):
            _run(tmp_path, *bad)
    argv = ["bench", "tokenizer", "--input", str(tmp_path / "nope.txt")]
    with pytest.raises(ValueError, match=r"--input: expected a text file"):
        bench.run(build_parser(argv).parse_args(argv))


def test_the_default_input_is_the_shipped_excerpt():
    argv = ["bench", "tokenizer"]
    args = build_parser(argv).parse_args(argv)
    assert args.input == str(bench.CORPUS) and bench.CORPUS.is_file()
    assert bench.CORPUS.parts[-3:] == ("ref_numpy", "corpus", "excerpt.txt")
    assert args.heldout is None and args.heldout_works == 1


def test_without_heldout_the_last_works_are_held_out_of_training(tmp_path):
    works = [f"WORK {n}\nby William Shakespeare\n" + f"line of work {n}\n" * 40 for n in "ABC"]
    (tmp_path / "in.txt").write_text("".join(works), encoding="utf-8")
    argv = ["bench", "tokenizer", "--input", str(tmp_path / "in.txt"), "--train-bytes", "10000",
            "--heldout-works", "1"]
    args = build_parser(argv).parse_args(argv)
    corpus = bench._prepare(args, tmp_path)
    train = open(corpus["paths"]["train"], encoding="utf-8").read()
    heldout = open(corpus["paths"]["heldout"], encoding="utf-8").read()
    assert train == works[0] + works[1] and heldout == works[2]
    assert corpus["heldout"] == f"the last 1 works of {tmp_path / 'in.txt'}"
