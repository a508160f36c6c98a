"""Training BPE: count adjacent pairs, merge the most frequent into a new token, repeat.

Sennrich, Haddow & Birch 2016, "Neural Machine Translation of Rare Words with Subword Units"
(ACL), Algorithm 1, here on bytes (Radford et al. 2019, GPT-2, section 2.2). The incremental
counts follow the fast form of the authors' own subword-nmt (``learn_bpe.py``: an index of the
words each pair occurs in, and updates of only the pairs next to a merged occurrence), with a
priority queue as in Hugging Face tokenizers' ``BpeTrainer``.

Counting. Special tokens are cut out of the text first (no merge learns across them); the rest
is split into chunks by the pre-tokenisation pattern (``bpe.split``). A pair is counted at every
position of every chunk, overlaps included: "aaa" holds the pair (a, a) twice. The merge then
replaces left to right without overlap, so "aaa" becomes [aa, a].

Tie-break. Among the pairs with the highest count, the smallest pair wins, compared as
(left id, right id): the smallest left id, then the smallest right id. Two byte pairs therefore
compare by byte value, and a merged token compares by when it was made. The choice never
depends on dict or insertion order, so the same text always gives the same merges.

Two trainers, with identical merges (the tests check it):

    train_plain   the textbook: recount every pair of the whole text after every merge, and
                  merge everywhere; O(merges x text). Short, for reading, and the baseline.
    train         each distinct chunk once, with its count; the pair counts kept up to date
                  (only pairs next to a merged occurrence change) and a heap of them.

The incremental update. Merging (a, b) -> z in a chunk that occurs c times, at an occurrence
with x on its left (x already rewritten, so possibly a z made just before) and y on its right:

    (x, a) -= c   (x, z) += c      (b, y) -= c   (z, y) += c      (a, b) -= c

Every pair that gains contains z, the newest token; every other count only falls. The heap
therefore holds, for every pair, an entry whose count is at least the true one. An entry popped
with a stale count is pushed again with the true count; the first entry popped with its true
count is the maximum under the tie-break.

Worked example, the known answer of the tests (ids: a 97, b 98, c 99, d 100):

    a a a b d a a a b a c     (97, 97) 4   (97, 98) 2   the rest 1   -> 256 = (97, 97)  "aa"
    256 97 98 100 256 97 98 97 99
                              (256, 97) 2  (97, 98) 2   a tie: (97, 98) is smaller
                                                                     -> 257 = (97, 98)  "ab"
    256 257 100 256 257 97 99 (256, 257) 2 the rest 1   -> 258 = (256, 257) "aaab"
    258 100 258 97 99

(Taking the first pair seen, as a dict would, merges (256, 97) "aaa" second instead.)

>>> tok = train("aaabdaaabac", vocab_size=259, pattern="none")
>>> tok.merges
[(97, 97), (97, 98), (256, 257)]
>>> tok.encode("aaabdaaabac")
[258, 100, 258, 97, 99]
>>> train_plain("aaabdaaabac", vocab_size=259, pattern="none").merges == tok.merges
True
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import regex

from ref_numpy._check import check_nonneg_int
from ref_numpy.bpe import N_BYTES, Tokenizer, check_pattern, merge_pair, split


def _merge_count(vocab_size, special_tokens) -> int:
    """The number of merges that fills ``vocab_size`` = 256 bytes + merges + special tokens."""
    if isinstance(special_tokens, (str, dict)) or not isinstance(special_tokens, (list, tuple)):
        raise TypeError(f"special_tokens: expected a list of texts (their ids follow the "
                        f"merges) but got {special_tokens!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size: expected an int but got {type(vocab_size).__name__}")
    least = N_BYTES + len(special_tokens)
    if vocab_size < least:
        what = f" + {len(special_tokens)} special tokens" if special_tokens else ""
        raise ValueError(f"vocab_size: expected an int >= {least} (the 256 byte tokens{what}) "
                         f"but got {vocab_size}")
    return vocab_size - least


def chunks(text: str, pattern: str = "gpt2", special_tokens=()) -> list[str]:
    """The text that training counts: special tokens cut out, the rest split by ``pattern``.

    >>> chunks("hi there<|endoftext|>you", "gpt2", ["<|endoftext|>"])
    ['hi', ' there', 'you']
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str but got {type(text).__name__}")
    check_pattern(pattern)
    if special_tokens:
        pieces = regex.split("|".join(regex.escape(t) for t in special_tokens), text)
    else:
        pieces = [text]
    return [chunk for piece in pieces for chunk in split(piece, pattern)]


def merge_loop(words, counts, n_merges: int, first_id: int, progress=None,
               ) -> list[tuple[int, int]]:
    """The incremental trainer: up to ``n_merges`` merges of symbol sequences with counts.

    ``words[i]`` (a list of ids below ``first_id``) occurs ``counts[i]`` times; merge k makes
    the id first_id + k. Stops early when no pair is left. ``progress(done, total)`` is called
    after every merge.

    Below, (1, 0) occurs 1 + 5 times and becomes 2; the words are then [0, 2, 1] and [2], and
    (0, 2) and (2, 1) tie at 1: (0, 2) is the smaller pair.

    >>> merge_loop([[0, 1, 0, 1], [1, 0]], [1, 5], 2, first_id=2)
    [(1, 0), (0, 2)]
    """
    words = [list(w) for w in words]
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)   # pair -> words that may hold it
    for i, (w, c) in enumerate(zip(words, counts)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += c
            where[pair].add(i)
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        negative, a, b = heapq.heappop(heap)
        count = pair_count.get((a, b), 0)
        if count != -negative:            # the count fell since this entry was pushed
            if count > 0:
                heapq.heappush(heap, (-count, a, b))
            continue
        z = first_id + len(merges)
        merges.append((a, b))
        born: set[tuple[int, int]] = set()
        for i in where.pop((a, b)):
            c, w, out, k, n = counts[i], words[i], [], 0, len(words[i])
            while k < n:
                if k + 1 < n and w[k] == a and w[k + 1] == b:
                    if out:
                        x = out[-1]
                        pair_count[x, a] -= c
                        pair_count[x, z] += c
                        where[x, z].add(i)
                        born.add((x, z))
                    if k + 2 < n:
                        y = w[k + 2]
                        pair_count[b, y] -= c
                        pair_count[z, y] += c
                        where[z, y].add(i)
                        born.add((z, y))
                    pair_count[a, b] -= c
                    out.append(z)
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            words[i] = out
        del pair_count[a, b]
        for pair in born:
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], *pair))
        if progress is not None:
            progress(len(merges), n_merges)
    return merges


def train(text: str, vocab_size: int, *, pattern: str = "gpt2", special_tokens=(),
          progress=None) -> Tokenizer:
    """Learn a byte-level BPE tokenizer of ``vocab_size`` tokens from ``text`` (fast).

    vocab_size counts the 256 byte tokens, the merges and the special tokens (a list of texts,
    given the ids after the merges). Fewer merges are made when no pair is left.
    ``progress(done, total)`` is called after each merge.

    >>> train("low lower lowest", vocab_size=258).merges   # lo 3 ties ow 3; then (lo, w) 3
    [(108, 111), (256, 119)]
    """
    n_merges = _merge_count(vocab_size, special_tokens)
    distinct = Counter(chunks(text, pattern, special_tokens))
    merges = merge_loop([list(c.encode("utf-8")) for c in distinct], list(distinct.values()),
                        n_merges, N_BYTES, progress)
    return Tokenizer(merges, pattern, list(special_tokens))


def train_plain(text: str, vocab_size: int, *, pattern: str = "gpt2", special_tokens=(),
                ) -> Tokenizer:
    """The same merges as :func:`train`, by recounting every pair after every merge.

    >>> train_plain("low lower lowest", vocab_size=258).merges
    [(108, 111), (256, 119)]
    """
    n_merges = _merge_count(vocab_size, special_tokens)
    ids = [list(c.encode("utf-8")) for c in chunks(text, pattern, special_tokens)]
    merges = []
    for k in range(n_merges):
        counts = Counter(pair for chunk in ids for pair in zip(chunk, chunk[1:]))
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))   # the tie-break
        merges.append(pair)
        ids = [merge_pair(chunk, pair, N_BYTES + k) for chunk in ids]
    return Tokenizer(merges, pattern, list(special_tokens))


def train_words(word_counts: dict[str, int], num_merges: int, end_of_word: str = "</w>",
                ) -> list[tuple[str, str]]:
    """The classic form of the paper: characters plus an end-of-word symbol, on the same
    trainer (:func:`merge_loop`).

    Each word is its characters followed by ``end_of_word``, so a merge can tell a suffix from
    the same letters inside a word ("est</w>" is not "est"). The symbols get ids in sorted
    order ("</w>" sorts before letters), which the tie-break then compares.

    The paper's example dictionary and 10 merges. es, st and t</w> all occur 9 times; the
    paper's code (first pair in dict order) takes es, then est, then est</w>. Here e < s < t
    sorts es first, and then (t, </w>) beats (es, t) because t's id is smaller than es's:

    >>> vocab = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    >>> merges = train_words(vocab, 10)
    >>> merges[:5]
    [('e', 's'), ('t', '</w>'), ('es', 't</w>'), ('l', 'o'), ('lo', 'w')]
    >>> merges[5:]
    [('e', 'w'), ('n', 'ew'), ('new', 'est</w>'), ('low', '</w>'), ('d', 'est</w>')]
    >>> apply_word_merges("lowest", merges)             # a word it never saw
    ['low', 'est</w>']
    """
    if not isinstance(word_counts, dict) or not word_counts:
        raise TypeError(f"word_counts: expected a non-empty dict {{word: count}} but got "
                        f"{word_counts!r}")
    for word, count in word_counts.items():
        if not isinstance(word, str) or not word:
            raise ValueError(f"word_counts: expected non-empty str words but got {word!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"word_counts: the count of {word!r} must be an int >= 1 but got "
                             f"{count!r}")
    num_merges = check_nonneg_int("num_merges", num_merges)
    symbols = sorted({ch for word in word_counts for ch in word} | {end_of_word})
    index = {s: i for i, s in enumerate(symbols)}
    words = [[index[ch] for ch in word] + [index[end_of_word]] for word in word_counts]
    merges = merge_loop(words, list(word_counts.values()), num_merges, len(symbols))
    names = list(symbols)
    for a, b in merges:
        names.append(names[a] + names[b])
    return [(names[a], names[b]) for a, b in merges]


def apply_word_merges(word: str, merges: list[tuple[str, str]], end_of_word: str = "</w>",
                      ) -> list[str]:
    """Segment one word with the merges of :func:`train_words`, in the order they were learned.

    >>> apply_word_merges("newer", [("e", "r"), ("n", "e"), ("ne", "w")])
    ['new', 'er', '</w>']
    """
    symbols = [*word, end_of_word]
    for a, b in merges:
        out, k = [], 0
        while k < len(symbols):
            if k + 1 < len(symbols) and symbols[k] == a and symbols[k + 1] == b:
                out.append(a + b)
                k += 2
            else:
                out.append(symbols[k])
                k += 1
        symbols = out
    return symbols
