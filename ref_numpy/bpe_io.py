"""Saving and loading BPE tokenizers: a versioned text format, and a lossy view for people.

Our format (``save`` / ``load``): UTF-8 text, one item per line, versioned. The pattern is named,
merge k is the line "a b" (it makes token 256 + k), a special token is "id JSON-string", and
the counts are announced before the items so that a truncated file is caught:

    crosscheck-bpe 1
    pattern gpt2
    merges 2
    104 105
    256 33
    specials 1
    258 "<|endoftext|>"
    end

A wrong first line, another version, a bad or missing line is a ValueError naming the file and
the line. ``save_vocab`` writes a second, lossy view for people: each token's text (UTF-8, with
invalid bytes and control characters escaped) and the two tokens it merges.

The production formats, tokenizer.json and tiktoken's ranks, are in ``ref_numpy.bpe_interop``.
"""
from __future__ import annotations

import json

from ref_numpy.bpe import N_BYTES, PATTERNS, Tokenizer, check_tokenizer

MAGIC = "crosscheck-bpe"
VERSION = 1


# ----------------------------------------------------------------------------- our format

def dumps(tok: Tokenizer) -> str:
    """The text of the saved form.

    >>> print(dumps(Tokenizer([(104, 105)], "gpt2", ["<|endoftext|>"])), end="")
    crosscheck-bpe 1
    pattern gpt2
    merges 1
    104 105
    specials 1
    257 "<|endoftext|>"
    end
    """
    check_tokenizer(tok)
    lines = [f"{MAGIC} {VERSION}", f"pattern {tok.pattern}", f"merges {len(tok.merges)}"]
    lines += [f"{a} {b}" for a, b in tok.merges]
    lines.append(f"specials {len(tok.special_tokens)}")
    lines += [f"{i} {json.dumps(text, ensure_ascii=False)}"
              for text, i in sorted(tok.special_tokens.items(), key=lambda item: item[1])]
    lines.append("end")
    return "\n".join(lines) + "\n"


class _Lines:
    """The lines of a saved file, read one at a time; every error names the file and line."""

    def __init__(self, text: str, source: str):
        self.lines, self.source, self.number = text.split("\n"), source, 0

    def error(self, message: str, number: int | None = None) -> ValueError:
        return ValueError(f"{self.source}:{self.number if number is None else number}: "
                          f"{message}")

    def next(self, what: str) -> str:
        if self.number >= len(self.lines) or (self.number == len(self.lines) - 1
                                              and self.lines[-1] == ""):
            raise self.error(f"the file ends where {what} was expected (truncated?)",
                             self.number + 1)
        self.number += 1
        return self.lines[self.number - 1]

    def keyword(self, word: str) -> str:
        line = self.next(f"the '{word} ...' line")
        key, _, value = line.partition(" ")
        if key != word or not value:
            raise self.error(f"expected '{word} ...' but got {line!r}")
        return value

    def count(self, word: str) -> int:
        value = self.keyword(word)
        if not value.isdigit():
            raise self.error(f"expected '{word} N' with N an int >= 0 but got {word} {value!r}")
        return int(value)

    def ints(self, what: str) -> tuple[int, int]:
        line = self.next(what)
        parts = line.split(" ")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise self.error(f"expected {what} as two ints 'a b' but got {line!r}")
        return int(parts[0]), int(parts[1])


def loads(text: str, source: str = "<string>") -> Tokenizer:
    """A tokenizer from the text of :func:`dumps`; ``source`` names it in errors.

    >>> loads(dumps(Tokenizer([(104, 105)]))).merges
    [(104, 105)]
    >>> loads("crosscheck-bpe 2\\n", "tok.bpe")
    Traceback (most recent call last):
    ...
    ValueError: tok.bpe:1: expected format version 1 but got 2 (written by another version of ...)
    """
    lines = _Lines(text, source)
    head = lines.next("the first line")
    magic, _, version = head.partition(" ")
    if magic != MAGIC or not version.isdigit():
        raise lines.error(f"expected '{MAGIC} {VERSION}' (a crosscheck BPE file) but got "
                          f"{head[:60]!r}")
    if int(version) != VERSION:
        raise lines.error(f"expected format version {VERSION} but got {version} (written by "
                          f"another version of ref_numpy.bpe_io)")
    pattern = lines.keyword("pattern")
    if pattern not in PATTERNS:
        raise lines.error(f"expected a pattern among {', '.join(PATTERNS)} but got {pattern!r}")
    merges, seen = [], {}
    for k in range(lines.count("merges")):
        a, b = lines.ints(f"merge {k}")
        if max(a, b) >= N_BYTES + k:
            raise lines.error(f"merge {k} uses token {max(a, b)}, which does not exist yet "
                              f"(expected ids below {N_BYTES + k}: the bytes and the earlier "
                              f"merges)")
        if (a, b) in seen:
            raise lines.error(f"merge {k} repeats the pair {a} {b} of line {seen[a, b]}")
        seen[a, b] = lines.number
        merges.append((a, b))
    specials = {}
    for k in range(lines.count("specials")):
        line = lines.next(f"special token {k}")
        token_id, _, quoted = line.partition(" ")
        try:
            token = json.loads(quoted)
        except json.JSONDecodeError:
            token = None
        if not token_id.isdigit() or not isinstance(token, str):
            raise lines.error(f"expected special token {k} as 'id \"text\"' but got {line!r}")
        if token in specials:
            raise lines.error(f"special token {token!r} appears twice")
        specials[token] = int(token_id)
    if lines.next("the 'end' line") != "end":
        raise lines.error(f"expected 'end' but got {lines.lines[lines.number - 1]!r}")
    rest = [n for n in range(lines.number, len(lines.lines)) if lines.lines[n]]
    if rest:
        raise lines.error(f"expected nothing after 'end' but got {lines.lines[rest[0]]!r}",
                          rest[0] + 1)
    try:
        return Tokenizer(merges, pattern, specials)
    except ValueError as exc:                   # a special id colliding with the merges
        raise ValueError(f"{source}: {exc}") from None


def save(tok: Tokenizer, path) -> None:
    """Write ``tok`` to ``path`` in the format of :func:`dumps`."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(dumps(tok))


def load(path) -> Tokenizer:
    """Read a tokenizer written by :func:`save`."""
    with open(path, encoding="utf-8") as f:
        return loads(f.read(), str(path))


def _show(data: bytes) -> str:
    """Bytes as readable text in brackets: UTF-8, with invalid bytes and control characters
    escaped.

    >>> print(_show(b" a\\n\\xe2\\x82"))
    [ a\\n\\xe2\\x82]
    """
    text = data.decode("utf-8", errors="backslashreplace")
    return "[" + "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                         for ch in text) + "]"


def vocab_view(tok: Tokenizer) -> str:
    """One line per token for reading (lossy: not a format to load).

    >>> view = vocab_view(Tokenizer([(104, 105)], special_tokens=["<|endoftext|>"]))
    >>> view.splitlines()[-2:]
    ['256 [hi] = [h] + [i]', '257 [<|endoftext|>] special']
    """
    check_tokenizer(tok)
    lines = ["# lossy view: UTF-8 text, invalid bytes as \\x escapes; load the model file instead"]
    lines += [f"{i} {_show(tok.token_bytes(i))}" for i in range(N_BYTES)]
    lines += [f"{N_BYTES + k} {_show(tok.token_bytes(N_BYTES + k))} = "
              f"{_show(tok.token_bytes(a))} + {_show(tok.token_bytes(b))}"
              for k, (a, b) in enumerate(tok.merges)]
    lines += [f"{i} {_show(text.encode('utf-8'))} special"
              for text, i in sorted(tok.special_tokens.items(), key=lambda item: item[1])]
    return "\n".join(lines) + "\n"


def save_vocab(tok: Tokenizer, path) -> None:
    """Write :func:`vocab_view` to ``path``."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(vocab_view(tok))
