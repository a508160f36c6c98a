"""``crosscheck tokenizer train|encode|decode``: the byte-level BPE of ``ref_numpy.bpe``.

    crosscheck tokenizer train --input FILE [FILE ...] --vocab-size N --out PATH
                               [--pattern gpt2|gpt4|none] [--special TEXT ...]
                               [--max-bytes N] [--tokenizer-json PATH]
    crosscheck tokenizer encode --model PATH (--text TEXT | --input FILE) [--out FILE.bin]
                                [--allowed-special all|TEXT ... | --special-as-text]
    crosscheck tokenizer decode --model PATH (--ids ID ... | --input FILE) [--out FILE]

``train`` learns from the files (joined in order, the first ``--max-bytes`` bytes if given) with
a progress bar, writes the model to PATH (``ref_numpy.bpe_io``'s format) and the lossy vocabulary
view beside it (PATH with the suffix ``.vocab``), and with ``--tokenizer-json`` a Hugging Face
tokenizer.json too. ``--vocab-size`` counts the 256 bytes, the merges and the special tokens.

``--model`` reads our format, or a tokenizer.json (by its ``.json`` suffix). ``encode`` prints
the ids on one line, or with ``--out`` writes a token file (``ref_numpy.data``) for the loader;
a special token's text in the input is an error unless ``--allowed-special`` or
``--special-as-text`` says what it is. ``decode`` reads ids from ``--ids``, a token file or a
text file of whitespace-separated ints, and prints the text: bytes that are not valid UTF-8
become U+FFFD, and a note on stderr says so; ``--out`` writes the exact bytes instead.

Bad input (a missing file, a malformed model, an unknown pattern, an id out of range) prints
one line naming the problem and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 but got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands train, encode and decode, added to ``parser``."""
    from ref_numpy.bpe import PATTERNS
    sub = parser.add_subparsers(dest="tokenizer_command", required=True)

    t = sub.add_parser("train", help="learn a tokenizer from text files")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="UTF-8 text files, joined in order")
    t.add_argument("--vocab-size", type=_positive, required=True, metavar="N",
                   help="tokens in all: 256 bytes + merges + special tokens")
    t.add_argument("--out", required=True, metavar="PATH",
                   help="the model file; the vocabulary view goes to PATH with suffix .vocab")
    t.add_argument("--pattern", choices=list(PATTERNS), default="gpt2",
                   help="pre-tokenisation split (default gpt2; gpt4 is cl100k_base's)")
    t.add_argument("--special", nargs="+", default=[], metavar="TEXT",
                   help="special tokens, given the ids after the merges (e.g. '<|endoftext|>')")
    t.add_argument("--max-bytes", type=_positive, metavar="N",
                   help="train on the first N bytes of the input only")
    t.add_argument("--tokenizer-json", metavar="PATH",
                   help="also write a Hugging Face tokenizer.json")

    for name, what in (("encode", "text to token ids"), ("decode", "token ids to text")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--model", required=True, metavar="PATH",
                       help="a model from 'train', or a tokenizer.json")
        source = p.add_mutually_exclusive_group(required=True)
        if name == "encode":
            source.add_argument("--text", help="the text to encode")
            source.add_argument("--input", metavar="FILE", help="a UTF-8 file to encode")
            p.add_argument("--out", metavar="FILE.bin",
                           help="write a token file for ref_numpy.data instead of printing")
            policy = p.add_mutually_exclusive_group()
            policy.add_argument("--allowed-special", nargs="+", metavar="TEXT",
                                help="special tokens to encode as specials ('all' for every "
                                     "one); the others in the text are an error")
            policy.add_argument("--special-as-text", action="store_true",
                                help="encode every special token's text as ordinary text")
        else:
            source.add_argument("--ids", nargs="+", type=int, metavar="ID", help="token ids")
            source.add_argument("--input", metavar="FILE",
                                help="a token file, or a text file of whitespace-separated ids")
            p.add_argument("--out", metavar="FILE", help="write the exact bytes to FILE")


def _read_text(paths, max_bytes: int | None = None) -> str:
    data = b"".join(Path(p).read_bytes() for p in paths)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--input: not UTF-8 text (byte {exc.start} of the joined input: "
                         f"{exc.reason})") from None
    if max_bytes is not None and max_bytes < len(data):
        # the cut may split a character; only that tail is dropped (the rest was checked)
        text = data[:max_bytes].decode("utf-8", errors="ignore")
    return text


def load_model(path):
    """A tokenizer from our format, or from a tokenizer.json (by the suffix)."""
    from ref_numpy import bpe_interop, bpe_io
    if str(path).endswith(".json"):
        return bpe_interop.load_tokenizer_json(path)
    return bpe_io.load(path)


def _train(args, err: Console) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ref_numpy import bpe_interop, bpe_io
    from ref_numpy.bpe_train import train

    out = Path(args.out)
    vocab_path = out.with_suffix(".vocab")
    if vocab_path == out:
        raise ValueError(f"--out: expected a path whose suffix is not .vocab (the vocabulary "
                         f"view goes there) but got {args.out!r}")
    text = _read_text(args.input, args.max_bytes)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} merges"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("splitting and counting", total=None)

        def report(done, total):
            progress.update(task, description="merging", completed=done, total=total)
        tok = train(text, args.vocab_size, pattern=args.pattern, special_tokens=args.special,
                    progress=report)
    bpe_io.save(tok, out)
    bpe_io.save_vocab(tok, vocab_path)
    wrote = [str(out), str(vocab_path)]
    if args.tokenizer_json:
        bpe_interop.save_tokenizer_json(tok, args.tokenizer_json)
        wrote.append(args.tokenizer_json)
    err.print(f"trained {len(tok.merges)} merges, vocabulary {tok.vocab_size}, on "
              f"{len(text.encode('utf-8'))} bytes; wrote {', '.join(wrote)}",
              highlight=False, markup=False)
    return 0


def _encode(args, err: Console) -> int:
    from ref_numpy import data
    tok = load_model(args.model)
    text = args.text if args.text is not None else _read_text([args.input])
    if args.special_as_text:
        ids = tok.encode(text, disallowed_special=())
    elif args.allowed_special:
        allowed = "all" if args.allowed_special == ["all"] else set(args.allowed_special)
        ids = tok.encode(text, allowed_special=allowed)
    else:
        try:
            ids = tok.encode(text)
        except ValueError as exc:       # a special token's text: say how to allow it here
            raise ValueError(f"{exc} (here: --allowed-special TEXT or --special-as-text)") \
                from None
    if args.out:
        data.write_tokens(args.out, ids, tok.vocab_size)
        err.print(f"wrote {len(ids)} tokens ({data.id_dtype(tok.vocab_size)}) to {args.out}",
                  highlight=False, markup=False)
    else:
        sys.stdout.write(" ".join(map(str, ids)) + "\n")
    return 0


def _read_ids(path: str) -> list[int]:
    from ref_numpy import data
    with open(path, "rb") as f:
        head = f.read(len(data.MAGIC))
    if head == data.MAGIC:
        return data.open_tokens(path).tokens.tolist()
    words = Path(path).read_text(encoding="utf-8").split()
    for k, word in enumerate(words):
        if not word.isdigit():
            raise ValueError(f"--input: {path}: word {k} is {word[:40]!r}, not a token id "
                             f"(expected a token file or whitespace-separated ints)")
    return [int(w) for w in words]


def _decode(args, err: Console) -> int:
    tok = load_model(args.model)
    ids = args.ids if args.ids is not None else _read_ids(args.input)
    raw = tok.decode_bytes(ids)
    if args.out:
        Path(args.out).write_bytes(raw)
        err.print(f"wrote {len(raw)} bytes to {args.out}", highlight=False, markup=False)
        return 0
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        err.print("note: these ids decode to bytes that are not valid UTF-8; each invalid "
                  "sequence is shown as U+FFFD (--out FILE writes the exact bytes)",
                  highlight=False, markup=False)
    sys.stdout.write(tok.decode(ids))
    sys.stdout.flush()
    return 0


def main(args) -> int:
    """Run the parsed ``crosscheck tokenizer ...`` command; returns the exit status."""
    err = Console(stderr=True, soft_wrap=True)
    command = args.tokenizer_command
    try:
        return {"train": _train, "encode": _encode, "decode": _decode}[command](args, err)
    except (OSError, ValueError, TypeError) as exc:
        err.print(f"tokenizer {command}: {exc}", highlight=False, markup=False)
        return 2
