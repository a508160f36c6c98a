"""``crosscheck bench tokenizer``: BPE training and encoding against the plain trainer and the
production tokenizers.

Every side runs in its own fresh child of the shared layer (``equivalence.bench.common``), with
the same thread setting (default one thread: our trainer and encoder are single-threaded; with
``--threads 2`` tokenizers' Rust pool gets two as well, through RAYON_NUM_THREADS).

1. Training on the first ``--train-bytes`` (1,000,000) bytes of ``--input`` (default the
   Shakespeare excerpt shipped as ``ref_numpy/corpus/excerpt.txt``; without ``--heldout``, of
   the works before the held-out ones), split by ``--pattern`` (gpt2):
   - ``ref_numpy.bpe_train.train`` against ``train_plain`` (recount every merge) at
     ``--plain-vocab-size`` (1024): target at least 20x faster, i.e. a ratio <= 0.05. The plain
     trainer takes about 9 minutes a call there; ``--plain-vocab-size 300`` times both at 44
     merges instead (half a minute a call).
   - ``train`` against tokenizers' ``BpeTrainer`` behind the same ByteLevel split, given the
     slice as one text as ours is, at ``--hf-vocab-size`` (4096): the ratio is reported,
     without a target.
   A training side is called ``--train-repeats`` (3) times, the plain one ``--plain-repeats``
   (1) times, each after one untimed calibration call of the layer.
2. Encoding the held-out text (the last ``--heldout-works`` works of ``--input``, default 1, or
   ``--heldout FILE``) with the
   tokenizer ``train`` learns at ``--encode-vocab-size`` (4096), in MB/s: ours (chunk cache
   emptied before every call, so each call is one cold encode) against tiktoken built from our
   mergeable ranks and pattern (target: at most 20x slower) and against tokenizers loaded from
   our tokenizer.json. The ids of all three are compared (untimed), and the rows say whether
   they are identical.

Measured on the 5 MB file of Shakespeare's 42 works (``--input shakespeare.txt
--heldout-works 5``, otherwise the defaults: gpt2, one thread) on two cores that other jobs
shared, in about 20 minutes, nearly all of them the plain trainer's two calls (the layer's
calibration and the timed one):

    train 1 MB, 1024 tokens    ours 0.56 s    plain 535 s                 957x faster
    train 1 MB, 4096 tokens    ours 0.88 s    tokenizers 0.74 s           ratio 1.2
    encode 645 KB, 4096        ours 0.39 s    tiktoken 0.10 s             ratio 3.9
                               (1.6 MB/s)     (6.4 MB/s); tokenizers 0.62 s (1.0 MB/s)

Quick smoke run: ``crosscheck bench tokenizer --train-bytes 20000 --plain-vocab-size 270
--hf-vocab-size 300 --encode-vocab-size 300 --min-time 0 --repeats 2 --train-repeats 1``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      measure, ratio_row, thread_settings, timing_row)

HERE = "equivalence.bench.tokenizer"
CORPUS = Path(__file__).resolve().parents[2] / "ref_numpy" / "corpus" / "excerpt.txt"
PLAIN_TARGET = 0.05         # ours / plain: at least 20x faster
TIKTOKEN_TARGET = 20.0      # ours / tiktoken: at most 20x slower


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", metavar="FILE", default=str(CORPUS),
                        help="UTF-8 training text (default: the shipped Shakespeare excerpt)")
    parser.add_argument("--heldout", metavar="FILE",
                        help="text to encode (default: the last --heldout-works works of "
                             "--input)")
    parser.add_argument("--heldout-works", type=int, default=1, metavar="N",
                        help="works held out of --input when no --heldout is given (default 1)")
    parser.add_argument("--train-bytes", type=int, default=1_000_000, metavar="N",
                        help="train on the first N bytes (default 1000000)")
    parser.add_argument("--pattern", choices=("gpt2", "gpt4"), default="gpt2")
    parser.add_argument("--plain-vocab-size", type=int, default=1024, metavar="N",
                        help="vocabulary of ours vs the plain trainer (default 1024)")
    parser.add_argument("--hf-vocab-size", type=int, default=4096, metavar="N",
                        help="vocabulary of ours vs tokenizers' BpeTrainer (default 4096)")
    parser.add_argument("--encode-vocab-size", type=int, default=4096, metavar="N",
                        help="vocabulary of the tokenizer that encodes (default 4096)")
    parser.add_argument("--train-repeats", type=int, default=3, metavar="N",
                        help="timed calls of a fast training side (default 3)")
    parser.add_argument("--plain-repeats", type=int, default=1, metavar="N",
                        help="timed calls of the plain trainer (default 1)")
    parser.add_argument("--part", choices=("train", "encode", "all"), default="all")
    add_timing_arguments(parser, default_threads=[1])


# ----------------------------------------------------------------------------- builders
# Each runs in a bench child: it reads its inputs (untimed) and returns the callable to time.

def _text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def ours_train(path, vocab_size, pattern):
    from ref_numpy.bpe_train import train
    text = _text(path)
    return lambda: train(text, vocab_size, pattern=pattern)


def plain_train(path, vocab_size, pattern):
    from ref_numpy.bpe_train import train_plain
    text = _text(path)
    return lambda: train_plain(text, vocab_size, pattern=pattern)


def _threads_for_rayon() -> None:
    """tokenizers' Rust pool reads RAYON_NUM_THREADS when it starts: give it the child's count."""
    if "OMP_NUM_THREADS" in os.environ:
        os.environ["RAYON_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]


def hf_train(path, vocab_size, pattern):
    _threads_for_rayon()
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    from ref_numpy import bpe, bpe_interop
    text = _text(path)
    # an empty BPE behind the same pre-tokenizer as our export for ``pattern``
    empty = json.dumps(bpe_interop.to_tokenizer_json(bpe.Tokenizer([], pattern)))

    def run():
        tok = Tokenizer.from_str(empty)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text], trainer)
        return tok
    return run


def ours_encode(model, path):
    from ref_numpy import bpe_io
    tok, text = bpe_io.load(model), _text(path)

    def run():
        tok.clear_cache()
        return tok.encode(text)
    return run


def _tiktoken(model):
    import tiktoken

    from ref_numpy import bpe_interop, bpe_io
    tok = bpe_io.load(model)
    return tiktoken.Encoding("crosscheck", pat_str=bpe_interop.tiktoken_pattern(tok.pattern),
                             mergeable_ranks=bpe_interop.mergeable_ranks(tok),
                             special_tokens=tok.special_tokens)


def tiktoken_encode(model, path):
    enc, text = _tiktoken(model), _text(path)
    return lambda: enc.encode(text)


def _tokenizers(model):
    _threads_for_rayon()
    from tokenizers import Tokenizer

    from ref_numpy import bpe_interop, bpe_io
    return Tokenizer.from_str(json.dumps(bpe_interop.to_tokenizer_json(bpe_io.load(model))))


def tokenizers_encode(model, path):
    tok, text = _tokenizers(model), _text(path)
    return lambda: tok.encode(text).ids


# ----------------------------------------------------------------------------- the bench

def _check(args) -> None:
    check_timing_arguments(args)
    for name in ("train_bytes", "train_repeats", "plain_repeats", "heldout_works"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 1 but got "
                             f"{getattr(args, name)}")
    for name in ("plain_vocab_size", "hf_vocab_size", "encode_vocab_size"):
        if getattr(args, name) < 257:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 257 (256 bytes "
                             f"and at least one merge) but got {getattr(args, name)}")
    if not Path(args.input).is_file():
        hint = " (the default corpus is absent here)" if args.input == str(CORPUS) else ""
        raise ValueError(f"--input: expected a text file but {args.input!r} is not one{hint}; "
                         f"pass --input FILE and --heldout FILE")
    if args.heldout is not None and not Path(args.heldout).is_file():
        raise ValueError(f"--heldout: expected a text file but {args.heldout!r} is not one")


def _prepare(args, workdir: Path) -> dict:
    """The training slice and held-out text as files the children read, and the corpus row."""
    from ref_numpy import data
    raw = Path(args.input).read_bytes()
    if args.heldout is not None:
        heldout = _text(args.heldout)
        where = args.heldout
    else:                   # train only on the works before the held-out ones
        before, heldout = data.held_out_split(raw.decode("utf-8"), args.heldout_works)
        raw = before.encode("utf-8")
        where = f"the last {args.heldout_works} works of {args.input}"
    train_text = raw[:args.train_bytes].decode("utf-8", errors="ignore")
    paths = {"train": workdir / "train.txt", "heldout": workdir / "heldout.txt"}
    paths["train"].write_text(train_text, encoding="utf-8")
    paths["heldout"].write_text(heldout, encoding="utf-8")
    return {"paths": {k: str(v) for k, v in paths.items()},
            "train bytes": len(train_text.encode("utf-8")),
            "heldout bytes": len(heldout.encode("utf-8")), "heldout": where}


def _variant(args, repeats: int) -> argparse.Namespace:
    """The timing settings of a training side: one call is long enough to time alone."""
    return argparse.Namespace(**{**vars(args), "repeats": repeats, "warmup": 0, "min_time": 0})


def _row(candidate, peer, comparison, target, same_ids=None, **context) -> dict:
    """ratio_row with both medians and the speedup (peer / candidate) beside the ratio."""
    row = ratio_row(candidate, peer, comparison, target, **context)
    ratio, target, met = row.pop("ratio"), row.pop("target"), row.pop("met")
    return {**row, "candidate s": candidate.median, "peer s": peer.median, "ratio": ratio,
            "speedup": peer.median / candidate.median, "target": target, "met": met,
            "ids identical": same_ids}


def _train(args, corpus, threads, timings, ratios) -> None:
    path = corpus["paths"]["train"]
    data = f"first {corpus['train bytes']} bytes"
    for vocab, peer_label, peer_builder, repeats, comparison, target in (
            (args.plain_vocab_size, "plain trainer (recount every merge)", "plain_train",
             args.plain_repeats, "ours vs the plain trainer", PLAIN_TARGET),
            (args.hf_vocab_size, "tokenizers BpeTrainer", "hf_train", args.train_repeats,
             "ours vs tokenizers", None)):
        kwargs = {"path": path, "vocab_size": vocab, "pattern": args.pattern}
        (ours,) = measure([Side("ours (incremental)", f"{HERE}:ours_train", kwargs)],
                          _variant(args, args.train_repeats), threads)
        (peer,) = measure([Side(peer_label, f"{HERE}:{peer_builder}", kwargs)],
                          _variant(args, repeats), threads)
        ctx = dict(task="train", data=data, vocab=vocab, pattern=args.pattern)
        timings += [{**timing_row(t, **ctx), "MB/s": None} for t in (ours, peer)]
        ratios.append(_row(ours, peer, comparison, target, **ctx))


def _same_ids(model: str, heldout: str) -> dict[str, str]:
    """Whether tiktoken and tokenizers give our ids on the held-out text."""
    ours = ours_encode(model, heldout)()
    return {"tiktoken": "yes" if _tiktoken(model).encode(_text(heldout)) == ours else "NO",
            "tokenizers": "yes" if _tokenizers(model).encode(_text(heldout)).ids == ours
            else "NO"}


def _encode(args, corpus, model, threads, timings, ratios) -> None:
    from ref_numpy import bpe_io
    kwargs = {"model": model, "path": corpus["paths"]["heldout"]}
    same = _same_ids(model, corpus["paths"]["heldout"])
    n_bytes = corpus["heldout bytes"]
    ctx = dict(task="encode", data=f"held-out {n_bytes} bytes",
               vocab=bpe_io.load(model).vocab_size, pattern=args.pattern)
    sides = [measure([Side(label, f"{HERE}:{builder}", kwargs)], args, threads)[0]
             for label, builder in (("ours (chunk cache, cold)", "ours_encode"),
                                    ("tiktoken, our ranks", "tiktoken_encode"),
                                    ("tokenizers, our tokenizer.json", "tokenizers_encode"))]
    timings += [{**timing_row(t, **ctx), "MB/s": n_bytes / t.median / 1e6} for t in sides]
    ours, tiktoken, tokenizers = sides
    for peer, name, target in ((tiktoken, "tiktoken", TIKTOKEN_TARGET),
                               (tokenizers, "tokenizers", None)):
        ratios.append(_row(ours, peer, f"ours vs {name}", target, same[name], **ctx))


def run(args) -> dict[str, list[dict]]:
    """Tables ``ratios`` (ours / peer, both medians), ``timings`` and ``corpus``."""
    from ref_numpy import bpe_io
    from ref_numpy.bpe_train import train
    _check(args)
    timings, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="bench-tokenizer-") as tmp:
        corpus = _prepare(args, Path(tmp))
        model = str(Path(tmp) / "encode.bpe")
        if args.part in ("encode", "all"):
            tok = train(_text(corpus["paths"]["train"]), args.encode_vocab_size,
                        pattern=args.pattern, special_tokens=["<|endoftext|>"])
            bpe_io.save(tok, model)
        for threads in thread_settings(args):
            if args.part in ("train", "all"):
                _train(args, corpus, threads, timings, ratios)
            if args.part in ("encode", "all"):
                _encode(args, corpus, model, threads, timings, ratios)
    info = {k: v for k, v in corpus.items() if k != "paths"}
    return {"ratios": ratios, "timings": timings, "corpus": [info]}
