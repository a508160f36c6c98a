"""The production tokenizers on our merges: Hugging Face tokenizer.json and tiktoken's ranks.

Hugging Face ``tokenizers`` (``to_tokenizer_json`` / ``from_tokenizer_json``): a BPE model whose
vocabulary spells each token's bytes in GPT-2's byte-to-unicode alphabet (``bytes_to_unicode``),
behind a ByteLevel pre-tokenizer. GPT-2's split is ByteLevel's own regex; GPT-4's is a Split
pre-tokenizer in front of ByteLevel, with the regex rewritten for the Oniguruma engine that
``tokenizers`` compiles it with (``ONIGURUMA_PATTERNS``); "none" is ByteLevel without a regex.

tiktoken (``mergeable_ranks`` / ``from_mergeable_ranks``): {token bytes: rank}, where the rank of
a merged token is its id, i.e. its merge order, and byte b has rank b. tiktoken stores no
merges: it joins the adjacent pair whose concatenation has the lowest rank, whichever two tokens
make it. For merges that a trainer learned this joins the same pairs as merging by rank (the
tests check it on the held-out corpus), but not for every hand-made list: with bc = 256,
ab = 257 and abc = ab + c = 258, "abc" is [a, bc] here and in tokenizers, and [abc] in tiktoken.
Both formats key tokens by their bytes, so a vocabulary where two ids have the same bytes
cannot be exported.
"""
from __future__ import annotations

import json

from ref_numpy.bpe import N_BYTES, PATTERNS, Tokenizer, check_tokenizer

# The splits as tiktoken's pat_str: "none" must still name a regex, one that matches the text.
TIKTOKEN_PATTERNS = {**PATTERNS, "none": r"(?s:.+)"}
# GPT-4's split for Oniguruma (Ruby syntax), which reads "{1,3}+" as a repeated repeat, not a
# possessive one, and "$" as the end of a line. Possessive and greedy quantifiers match alike
# here (no alternative could backtrack into them), and "\z" is the end of the text.
ONIGURUMA_PATTERNS = {"gpt4": (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s+\z|\s*[\r\n]|\s+(?!\S)|\s""")}


# ----------------------------------------------------------------------------- tiktoken

def _token_list(tok: Tokenizer) -> list[bytes]:
    """The bytes of ids 0 .. n_base - 1, refusing two ids with the same bytes (both formats key
    tokens by their bytes)."""
    tokens = [tok.token_bytes(i) for i in range(tok.n_base)]
    first: dict[bytes, int] = {}
    for i, data in enumerate(tokens):
        if data in first:
            raise ValueError(f"tokenizer: tokens {first[data]} and {i} have the same bytes "
                             f"{data!r}; tiktoken and tokenizer.json key tokens by their bytes, "
                             f"so this vocabulary cannot be exported")
        first[data] = i
    return tokens


def mergeable_ranks(tok: Tokenizer) -> dict[bytes, int]:
    """tiktoken's ``mergeable_ranks``: every byte and merged token with its rank (= its id).

    >>> mergeable_ranks(Tokenizer([(104, 105)]))[b"hi"]
    256
    """
    return {data: i for i, data in enumerate(_token_list(check_tokenizer(tok)))}


def tiktoken_pattern(pattern: str) -> str:
    """The ``pat_str`` to give tiktoken for one of our pattern names.

    >>> tiktoken_pattern("none")
    '(?s:.+)'
    """
    if pattern not in TIKTOKEN_PATTERNS:
        raise ValueError(f"pattern: expected one of {', '.join(map(repr, PATTERNS))} but got "
                         f"{pattern!r}")
    return TIKTOKEN_PATTERNS[pattern]


def from_mergeable_ranks(ranks: dict[bytes, int], pattern: str = "gpt2",
                         special_tokens=None) -> Tokenizer:
    """The merges behind tiktoken ranks: each token of rank r >= 256 is split by running BPE
    on its bytes with the ranks below r; what is left is the two tokens it merges.

    >>> ranks = {**{bytes([i]): i for i in range(256)}, b"hi": 256, b"hi!": 257}
    >>> from_mergeable_ranks(ranks).merges
    [(104, 105), (256, 33)]
    """
    if not isinstance(ranks, dict):
        raise TypeError(f"ranks: expected a dict {{bytes: rank}} but got {type(ranks).__name__}")
    order = sorted(ranks.items(), key=lambda item: item[1])
    if (len(order) < N_BYTES or [r for _, r in order] != list(range(len(order)))
            or any(order[b][0] != bytes([b]) for b in range(N_BYTES))):
        raise ValueError("ranks: expected byte b at rank b for b < 256 and ranks 0, 1, 2, ... "
                         "without gaps (the layout of a byte-level BPE)")
    merges = []
    for data, rank in order[N_BYTES:]:
        parts = [bytes([b]) for b in data]
        while len(parts) > 2:           # merge the lowest-ranked adjacent pair below ``rank``
            best, i = min((ranks.get(parts[i] + parts[i + 1], rank), i)
                          for i in range(len(parts) - 1))
            if best >= rank:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"ranks: token {data!r} (rank {rank}) is not the merge of two "
                             f"tokens of lower rank")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    return Tokenizer(merges, pattern, special_tokens)


# ----------------------------------------------------------------------------- tokenizer.json

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-unicode map (openai/gpt-2 src/encoder.py): printable bytes stand for
    themselves; the others (controls, space, ...) are shifted to code points from 256 up, so a
    token's bytes read as a string without spaces or control characters.

    >>> m = bytes_to_unicode()
    >>> m[ord("a")], m[ord(" ")], m[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {b: chr(b) for b in printable}, 0
    for b in range(N_BYTES):
        if b not in mapping:
            mapping[b] = chr(N_BYTES + shift)
            shift += 1
    return dict(sorted(mapping.items()))


def _pre_tokenizer(pattern: str) -> dict:
    def byte_level(use_regex: bool) -> dict:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                "use_regex": use_regex}
    if pattern == "gpt2":
        return byte_level(True)
    if pattern == "none":
        return byte_level(False)
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": ONIGURUMA_PATTERNS[pattern]},
         "behavior": "Isolated", "invert": False}, byte_level(False)]}


def to_tokenizer_json(tok: Tokenizer) -> dict:
    """The tokenizer as a Hugging Face tokenizer.json document (a dict; ``json.dump`` it).

    >>> doc = to_tokenizer_json(Tokenizer([(32, 116)]))
    >>> doc["model"]["merges"], doc["model"]["vocab"]["Ġt"]
    ([['Ġ', 't']], 256)
    """
    tokens = _token_list(check_tokenizer(tok))
    spell = bytes_to_unicode()
    text = ["".join(spell[b] for b in data) for data in tokens]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for t, i in sorted(tok.special_tokens.items(), key=lambda x: x[1])],
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(tok.pattern),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(text)},
                  "merges": [[text[a], text[b]] for a, b in tok.merges]},
    }


def save_tokenizer_json(tok: Tokenizer, path) -> None:
    """Write :func:`to_tokenizer_json` to ``path`` (``tokenizers.Tokenizer.from_file`` reads it)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_tokenizer_json(tok), f, ensure_ascii=False, indent=1)


def _pattern_of(pre, source: str) -> str:
    """The pattern name of a pre_tokenizer: ByteLevel with or without GPT-2's regex, or Split
    with GPT-4's regex before ByteLevel (options that do not change the ids are ignored)."""
    def byte_level(p, use_regex: bool) -> bool:
        return (isinstance(p, dict) and p.get("type") == "ByteLevel"
                and not p.get("add_prefix_space", False) and p.get("use_regex", True) == use_regex)
    if byte_level(pre, True):
        return "gpt2"
    if byte_level(pre, False):
        return "none"
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        for name, oniguruma in ONIGURUMA_PATTERNS.items():
            split = {"type": "Split", "pattern": {"Regex": oniguruma}, "behavior": "Isolated",
                     "invert": False}
            if len(steps) == 2 and steps[0] == split and byte_level(steps[1], False):
                return name
    raise ValueError(f"{source}: pre_tokenizer: expected ByteLevel (GPT-2's split or none), or "
                     f"Split with GPT-4's regex then ByteLevel, but got {json.dumps(pre)[:200]}")


def from_tokenizer_json(doc: dict, source: str = "tokenizer.json") -> Tokenizer:
    """A tokenizer from a tokenizer.json document of the form :func:`to_tokenizer_json` writes:
    byte b at id b, merge k making id 256 + k, special tokens as added tokens.

    >>> from_tokenizer_json(to_tokenizer_json(Tokenizer([(32, 116)]))).merges
    [(32, 116)]
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise ValueError(f"{source}: expected a tokenizer.json document with a 'model'")
    model = doc["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{source}: model.type: expected 'BPE' but got {model.get('type')!r}")
    for key, want in (("byte_fallback", False), ("ignore_merges", False),
                      ("continuing_subword_prefix", None), ("end_of_word_suffix", None)):
        if model.get(key, want) != want:
            raise ValueError(f"{source}: model.{key}: expected {want!r} but got "
                             f"{model.get(key)!r}")
    if doc.get("normalizer") is not None:
        raise ValueError(f"{source}: normalizer: expected none but got "
                         f"{json.dumps(doc['normalizer'])[:200]}")
    pattern = _pattern_of(doc.get("pre_tokenizer"), source)
    spell = bytes_to_unicode()
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{source}: model.vocab: expected an object {{token: id}}")
    for b, ch in spell.items():
        if vocab.get(ch) != b:
            raise ValueError(f"{source}: model.vocab: expected the byte {b} ({ch!r}) at id {b} "
                             f"but got {vocab.get(ch)!r}")
    merges = []
    for k, item in enumerate(model.get("merges", [])):
        pair = item.split(" ") if isinstance(item, str) else item
        if not isinstance(pair, list) or len(pair) != 2 or any(p not in vocab for p in pair):
            raise ValueError(f"{source}: model.merges[{k}]: expected two tokens of the vocab but "
                             f"got {item!r}")
        made = vocab.get(pair[0] + pair[1])
        if made != N_BYTES + k:
            raise ValueError(f"{source}: model.merges[{k}]: {pair[0] + pair[1]!r} has id {made}, "
                             f"expected {N_BYTES + k} (ids here follow the merge order)")
        merges.append((vocab[pair[0]], vocab[pair[1]]))
    extra = sorted(set(vocab.values()) - set(range(N_BYTES + len(merges))))
    if extra:
        raise ValueError(f"{source}: model.vocab: ids {extra[:5]} are neither bytes nor merges")
    specials = {}
    for k, added in enumerate(doc.get("added_tokens") or []):
        if not added.get("special"):
            raise ValueError(f"{source}: added_tokens[{k}]: expected a special token but got "
                             f"{added!r}")
        specials[added["content"]] = added["id"]
    return Tokenizer(merges, pattern, specials)


def load_tokenizer_json(path) -> Tokenizer:
    """Read a tokenizer.json file written by :func:`save_tokenizer_json` (or of its form)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    return from_tokenizer_json(doc, str(path))
