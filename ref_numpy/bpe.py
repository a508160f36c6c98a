"""Byte-level byte-pair encoding (BPE): the tokenizer, its split patterns and special tokens.

Sennrich, Haddow & Birch 2016, "Neural Machine Translation of Rare Words with Subword Units"
(ACL), Algorithm 1, applied to bytes instead of characters as in Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners" (GPT-2), section 2.2.

The vocabulary starts as the 256 byte values: token i < 256 is the single byte i, so every
string has an encoding and no id is ever unknown. Training (``ref_numpy.bpe_train``) then adds
merges: merge k replaces the adjacent pair (a, b) by the new token 256 + k, whose bytes are
bytes(a) + bytes(b). Special tokens such as ``<|endoftext|>`` come after the merges, with ids of
their own; they are never produced by merging, only by the special-token policy of
:meth:`Tokenizer.encode`.

Encoding a string:

    1. special tokens are cut out of the text, or refused, as the policy says;
    2. the rest is split into chunks by the pre-tokenisation pattern (GPT-2's or GPT-4's regex,
       or none), so that no merge ever crosses a chunk boundary: " dog" and "." stay apart;
    3. each chunk's UTF-8 bytes are merged by rank: while some adjacent pair is a merge, the
       pair with the lowest rank (the earliest learned) is replaced by its token at every
       occurrence, left to right, without overlap ("aaa" with merge a+a gives [aa, a]);
    4. the chunks' ids are concatenated. A chunk seen before is looked up in a cache.

Decoding maps every id to its bytes and joins them. Those bytes need not be valid UTF-8 (a
token may hold half of a character), so :meth:`Tokenizer.decode` turns them into text with
``errors="replace"`` (U+FFFD for each invalid sequence) and :meth:`Tokenizer.decode_bytes`
returns them exactly.

Worked example: three merges, the ones that ``bpe_train.train`` learns from this very text.

>>> tok = Tokenizer([(97, 97), (97, 98), (256, 257)], pattern="none")
>>> [tok.decode_bytes([i]) for i in (256, 257, 258)]
[b'aa', b'ab', b'aaab']
>>> tok.encode("aaabdaaabac")       # aa first (rank 0), then ab (rank 1), then aa+ab (rank 2)
[258, 100, 258, 97, 99]
>>> tok.decode([258, 100])
'aaabd'
"""
from __future__ import annotations

import numpy as np
import regex

from ref_numpy._check import check_nonneg_int

N_BYTES = 256          # token i < 256 is the byte i

# GPT-2's split, as released with its encoder (openai/gpt-2 src/encoder.py): contractions,
# letters, digits and other symbols (each optionally after one space), then whitespace;
# "\s+(?!\S)" leaves a run's last space to start the next word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's split: tiktoken's cl100k_base pat_str, character for character. It differs from
# GPT-2's: case-insensitive contractions, a letter run may start with any one non-letter,
# non-digit, non-newline character, digits come in runs of at most 3, newlines stick to the
# symbols before them, and trailing whitespace at the end of the text stays in one chunk.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "none": None}   # name -> regex
CACHE_SIZE = 1 << 16   # chunks remembered by one tokenizer; the cache is emptied when full


def check_pattern(pattern) -> str:
    """Require the name of a split pattern.

    >>> check_pattern("gpt4")
    'gpt4'
    """
    if not isinstance(pattern, str) or pattern not in PATTERNS:
        raise ValueError(f"pattern: expected one of {', '.join(map(repr, PATTERNS))} but got "
                         f"{pattern!r}")
    return pattern


def split(text: str, pattern: str) -> list[str]:
    """Cut ``text`` into the chunks that BPE merges within; ``pattern`` names the regex.

    "none" keeps the text whole, so training and encoding then work on one chunk as long as
    the text: it suits short texts and worked examples, not a corpus.

    >>> split("Hello world's  end!!", "gpt2")
    ['Hello', ' world', "'s", ' ', ' end', '!!']
    >>> split("Hello world's  end!!", "none")
    ["Hello world's  end!!"]
    """
    check_pattern(pattern)
    if PATTERNS[pattern] is None:
        return [text] if text else []
    return regex.findall(PATTERNS[pattern], text)


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right, without
    overlap.

    >>> merge_pair([97, 97, 97, 98], (97, 97), 256)
    [256, 97, 98]
    """
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def check_special_tokens(special_tokens, first_id: int) -> dict[str, int]:
    """Special tokens as {text: id}; a list of texts gets the ids first_id, first_id + 1, ...

    Each text is a non-empty str, each id an int >= first_id (below it lie the byte and merge
    tokens), and no two share an id.

    >>> check_special_tokens(["<|endoftext|>"], 300)
    {'<|endoftext|>': 300}
    >>> check_special_tokens({"<|endoftext|>": 299}, 300)
    Traceback (most recent call last):
    ...
    ValueError: special_tokens: '<|endoftext|>' has id 299, which collides with the byte and ...
    """
    if special_tokens is None:
        return {}
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens: expected a list of strings or a dict {{text: id}} but "
                        f"got the str {special_tokens!r} (wrap one token in a list)")
    if isinstance(special_tokens, dict):
        items = list(special_tokens.items())
    elif isinstance(special_tokens, (list, tuple)):
        items = [(text, first_id + k) for k, text in enumerate(special_tokens)]
    else:
        raise TypeError(f"special_tokens: expected a list of strings or a dict {{text: id}} but "
                        f"got {type(special_tokens).__name__}")
    out, owner = {}, {}
    for text, token_id in items:
        if not isinstance(text, str) or not text:
            raise ValueError(f"special_tokens: expected non-empty strings but got {text!r}")
        if text in out:
            raise ValueError(f"special_tokens: {text!r} appears twice")
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
            raise TypeError(f"special_tokens: the id of {text!r} must be an int but got "
                            f"{token_id!r}")
        if token_id < first_id:
            raise ValueError(f"special_tokens: {text!r} has id {token_id}, which collides with "
                             f"the byte and merge tokens (ids 0..{first_id - 1}); expected an "
                             f"id >= {first_id}")
        if token_id in owner:
            raise ValueError(f"special_tokens: {owner[token_id]!r} and {text!r} both have id "
                             f"{token_id}")
        out[text], owner[token_id] = int(token_id), text
    return out


def check_merges(merges) -> list[tuple[int, int]]:
    """Merges as a list of id pairs; merge k may use only ids below 256 + k (the bytes and the
    earlier merges), and no pair may repeat (the repeat could never apply).

    >>> check_merges([(97, 97), (256, 98)])
    [(97, 97), (256, 98)]
    """
    if not isinstance(merges, (list, tuple)):
        raise TypeError(f"merges: expected a list of (int, int) pairs but got "
                        f"{type(merges).__name__}")
    out, seen = [], {}
    for k, pair in enumerate(merges):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"merges[{k}]: expected a pair of token ids but got {pair!r}")
        a, b = (check_nonneg_int(f"merges[{k}]", v) for v in pair)
        if max(a, b) >= N_BYTES + k:
            raise ValueError(f"merges[{k}]: expected ids below {N_BYTES + k} (the bytes and the "
                             f"{k} earlier merges) but got ({a}, {b})")
        if (a, b) in seen:
            raise ValueError(f"merges[{k}]: the pair ({a}, {b}) is already merges[{seen[a, b]}]")
        seen[a, b] = k
        out.append((a, b))
    return out


def _token_set(name: str, value, special_tokens: dict[str, int]) -> set[str]:
    if value == "all":
        return set(special_tokens)
    if isinstance(value, str) or not isinstance(value, (set, frozenset, list, tuple)):
        raise TypeError(f"{name}: expected 'all' or a set of special-token strings but got "
                        f"{value!r}")
    unknown = [t for t in value if t not in special_tokens]
    if unknown:
        known = ", ".join(map(repr, special_tokens)) or "none"
        raise ValueError(f"{name}: {unknown[0]!r} is not a special token of this tokenizer "
                         f"(its special tokens: {known})")
    return set(value)


def _alternation(tokens) -> regex.Pattern:
    """A regex matching any of ``tokens``; the longest wins where one is a prefix of another."""
    longest_first = sorted(tokens, key=lambda t: (-len(t), t))
    return regex.compile("|".join(regex.escape(t) for t in longest_first))


class Tokenizer:
    """A byte-level BPE tokenizer: merges, a split pattern and special tokens.

    Args:
        merges: [(a, b), ...]; merge k makes token 256 + k from the tokens a and b.
        pattern: "gpt2", "gpt4" (tiktoken's cl100k_base split) or "none" (no split).
        special_tokens: a list of texts (ids follow the merges) or a dict {text: id}.

    >>> tok = Tokenizer([(104, 105)], pattern="gpt2", special_tokens=["<|endoftext|>"])
    >>> tok.vocab_size, tok.special_tokens
    (258, {'<|endoftext|>': 257})
    """

    def __init__(self, merges, pattern: str = "gpt2", special_tokens=None):
        self.merges = check_merges(merges)
        self.pattern = check_pattern(pattern)
        self.n_base = N_BYTES + len(self.merges)            # bytes and merges: ids below this
        self.special_tokens = check_special_tokens(special_tokens, self.n_base)
        self._merge_id = {pair: N_BYTES + k for k, pair in enumerate(self.merges)}
        table = [bytes([i]) for i in range(N_BYTES)]
        for a, b in self.merges:
            table.append(table[a] + table[b])
        self.vocab_size = max([self.n_base, *(i + 1 for i in self.special_tokens.values())])
        table += [None] * (self.vocab_size - self.n_base)
        for text, token_id in self.special_tokens.items():
            table[token_id] = text.encode("utf-8")
        self._bytes = table                                  # id -> bytes (None: no such id)
        self._cache: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return (f"Tokenizer({len(self.merges)} merges, pattern={self.pattern!r}, "
                f"special_tokens={self.special_tokens})")

    def __eq__(self, other) -> bool:
        return (isinstance(other, Tokenizer) and self.merges == other.merges
                and self.pattern == other.pattern and self.special_tokens == other.special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's are its UTF-8 text)."""
        return self.decode_bytes([token_id])

    # ------------------------------------------------------------------------- encode

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        ids = list(chunk)
        merge_id = self._merge_id
        while len(ids) >= 2:
            # the lowest-ranked merge present; a merge's id grows with its rank
            pair = min(zip(ids, ids[1:]), key=lambda p: merge_id.get(p, self.n_base))
            if pair not in merge_id:
                break
            ids = merge_pair(ids, pair, merge_id[pair])
        return ids

    def clear_cache(self) -> None:
        """Forget the chunks encoded so far (they are remembered to encode repeats fast)."""
        self._cache.clear()

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with every special token's text treated as ordinary text.

        >>> Tokenizer([], special_tokens=["<|x|>"]).encode_ordinary("<|x|>")[:3]
        [60, 124, 120]
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str but got {type(text).__name__}")
        cache, ids = self._cache, []
        for chunk in split(text, self.pattern):
            got = cache.get(chunk)
            if got is None:
                if len(cache) >= CACHE_SIZE:
                    cache.clear()
                got = cache[chunk] = self._encode_chunk(chunk.encode("utf-8"))
            ids.extend(got)
        return ids

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all",
               ) -> list[int]:
        """Encode ``text`` to token ids; special tokens follow tiktoken's policy.

        ``allowed_special``: the special tokens whose text becomes the special id ("all" or a
        set). ``disallowed_special``: the ones whose text in ``text`` raises ValueError ("all"
        means every special token not allowed). What is in neither set is encoded as text.
        So: the default raises on any special token; ``allowed_special="all"`` encodes them
        all as specials; ``allowed_special={"<|endoftext|>"}`` allows that set (the others
        still raise); ``disallowed_special=()`` treats every one as text.

        >>> tok = Tokenizer([], special_tokens=["<|endoftext|>"])
        >>> tok.encode("a<|endoftext|>", allowed_special="all")
        [97, 256]
        >>> len(tok.encode("a<|endoftext|>", disallowed_special=()))    # 14 bytes as text
        14
        >>> tok.encode("a<|endoftext|>")
        Traceback (most recent call last):
        ...
        ValueError: text: contains the special token '<|endoftext|>' at index 1, which is ...
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str but got {type(text).__name__}")
        allowed = _token_set("allowed_special", allowed_special, self.special_tokens)
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = _token_set("disallowed_special", disallowed_special,
                                    self.special_tokens)
        if disallowed:
            found = _alternation(disallowed).search(text)
            if found:
                raise ValueError(f"text: contains the special token {found.group()!r} at index "
                                 f"{found.start()}, which is disallowed; pass allowed_special="
                                 f"{{{found.group()!r}}} (or \"all\") to encode it as a special "
                                 f"token, or disallowed_special=() to encode it as text")
        if not allowed:
            return self.encode_ordinary(text)
        ids, start = [], 0
        for found in _alternation(allowed).finditer(text):
            ids += self.encode_ordinary(text[start:found.start()])
            ids.append(self.special_tokens[found.group()])
            start = found.end()
        return ids + self.encode_ordinary(text[start:])

    # ------------------------------------------------------------------------- decode

    def _check_ids(self, ids) -> list[int]:
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"ids: expected a 1-D integer array but got {ids.ndim}-D "
                                f"{ids.dtype}")
            values = ids.tolist()
        elif isinstance(ids, (list, tuple)):
            values = list(ids)
            for k, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"ids[{k}]: expected an int token id but got "
                                    f"{type(v).__name__} ({v!r})")
        else:
            raise TypeError(f"ids: expected a list of ints or a 1-D integer array but got "
                            f"{type(ids).__name__}")
        table = self._bytes
        for k, v in enumerate(values):
            if not 0 <= v < self.vocab_size or table[v] is None:
                specials = sorted(self.special_tokens.values())
                extra = f" and the special ids {specials}" if specials else ""
                raise ValueError(f"ids[{k}]: {v} is not a token id of this tokenizer (expected "
                                 f"0 <= id < {self.n_base}{extra})")
        return values

    def decode_bytes(self, ids) -> bytes:
        """The exact bytes of ``ids`` (a list of ints or a 1-D integer array).

        >>> Tokenizer([]).decode_bytes([226, 130])       # two of the three bytes of '€'
        b'\\xe2\\x82'
        """
        table = self._bytes
        return b"".join([table[i] for i in self._check_ids(ids)])

    def decode(self, ids) -> str:
        """The text of ``ids``: their bytes decoded as UTF-8 with ``errors="replace"``, so an
        invalid sequence (a character cut between tokens) becomes U+FFFD. Use
        :meth:`decode_bytes` for the exact bytes.

        >>> Tokenizer([]).decode([226, 130, 172, 226, 130])   # '€' whole, then its first 2 bytes
        '€\\ufffd'
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def check_tokenizer(tok) -> Tokenizer:
    """Require a :class:`Tokenizer` (the argument of every save and export)."""
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"tokenizer: expected a ref_numpy.bpe.Tokenizer but got "
                        f"{type(tok).__name__}")
    return tok
