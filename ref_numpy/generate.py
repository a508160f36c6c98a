"""Generation from ``ref_numpy.model``: KV-cache decoding and sampling.

Decoding (``Decoder``): one ``ref_numpy.kv_cache.KVCache`` per block. The prompt goes through
the model once (prefill), filling every block's cache; each later step feeds only the newest
token, whose query attends all cached keys. Each step equals the last rows of a full forward
over the whole sequence (``ref_numpy.kv_cache``'s bottom-right causal alignment), to rounding.

Batched prompts of different lengths are LEFT-padded: row b holds pad_b padding positions, then
its prompt, so every row's next token is at the same column and one step serves all rows. The
padding is never attended (a key mask over the cache), and positions count real tokens only
(position_ids = the number of real tokens before), so each row computes what it would alone.

Sampling (``next_tokens``), in the order of transformers' logits processors:

    repetition penalty   a token already in the row (prompt or generated) gets logit / θ if
                         the logit is > 0, logit · θ if not (Keskar et al. 2019, CTRL, §4.1)
    greedy               temperature 0: the argmax (the lowest id among equal maxima)
    temperature          logits / T
    top-k                keep the k largest logits (and any equal to the k-th)
    top-p                keep the smallest set of most likely tokens whose probability sums to
                         >= p (Holtzman et al. 2020, nucleus sampling), renormalised
    draw                 the inverse CDF at u ~ U[0, 1) from ``numpy.random.default_rng(seed)``

so a seed reproduces the whole sample. A row stops at its end-of-sequence token or after
``max_new_tokens``; generation ends when every row has stopped.

Shape letters: B rows, P prompt columns (with padding), t new positions, V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ref_numpy import model as model_mod
from ref_numpy import model_blocks
from ref_numpy._check import check_float, check_nonneg_int, check_positive_int, nan_scans_skipped
from ref_numpy.kv_cache import KVCache
from ref_numpy.linear import embedding_forward
from ref_numpy.positional import learned_position_forward

PAD_ID = 0   # the id written into padding positions; never attended, any valid id works


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits; checked on construction."""
    temperature: float = 1.0         # 0: greedy; > 0 divides the logits (1: the model's own)
    top_k: int | None = None         # keep the k most likely tokens; None: all
    top_p: float | None = None       # nucleus: the smallest set with mass >= p; None: all
    repetition_penalty: float = 1.0  # θ >= 1 of CTRL on tokens already in the row; 1: none

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature: expected a number >= 0 but got {self.temperature!r}")
        if self.top_k is not None:
            check_positive_int("top_k", self.top_k)
        if self.top_p is not None and not (isinstance(self.top_p, (int, float))
                                           and 0 < self.top_p <= 1):
            raise ValueError(f"top_p: expected a number in (0, 1] but got {self.top_p!r}")
        if not (isinstance(self.repetition_penalty, (int, float))
                and math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty: expected a number > 0 but got "
                             f"{self.repetition_penalty!r}")


# ----------------------------------------------------------------------------------------------
# Sampling


def repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty on the tokens ``seen`` (B, V) bool: z / θ where z > 0, z · θ elsewhere."""
    scaled = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(seen, scaled, logits)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """−inf below the k-th largest logit of each row (B, V); ties with it are kept."""
    if k >= logits.shape[-1]:
        return logits
    kth = -np.partition(-logits, k - 1, axis=-1)[..., k - 1: k]          # (B, 1)
    return np.where(logits < kth, -np.inf, logits)


def top_p_keep(probs: np.ndarray, p: float) -> np.ndarray:
    """(B, V) bool: the smallest set of most likely tokens whose probability sums to >= p.

    Tokens are ranked by probability (equal ones by id); the set is the shortest prefix of
    that ranking whose running sum reaches p. It holds at least the most likely token, and no
    token of probability 0 (when rounding keeps the whole sum below p, every token that has
    any probability is kept)."""
    order = np.argsort(-probs, axis=-1, kind="stable")                 # (B, V) most likely first
    ranked = np.take_along_axis(probs, order, axis=-1)
    running = np.cumsum(ranked, axis=-1)
    before = np.concatenate([np.zeros_like(running[..., :1]), running[..., :-1]], axis=-1)
    keep_ranked = (before < p) & (ranked > 0)                          # the prefix up to mass p
    keep_ranked[..., 0] = True
    keep = np.empty_like(keep_ranked)
    np.put_along_axis(keep, order, keep_ranked, axis=-1)
    return keep


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def next_tokens(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator,
                seen: np.ndarray | None = None) -> np.ndarray:
    """One token per row from logits (B, V) (module docstring for the order); (B,) int64."""
    z = logits.astype(np.float64)
    if sampling.repetition_penalty != 1.0 and seen is not None:
        z = repetition_penalty(z, seen, sampling.repetition_penalty)
    if sampling.temperature == 0:
        return z.argmax(axis=-1)
    z = z / sampling.temperature
    if sampling.top_k is not None:
        z = top_k_filter(z, sampling.top_k)
    probs = _softmax(z)
    if sampling.top_p is not None:
        probs = np.where(top_p_keep(probs, sampling.top_p), probs, 0.0)
    cdf = np.cumsum(probs, axis=-1)                                    # (B, V)
    u = rng.random(len(z)) * cdf[:, -1]
    picked = (cdf <= u[:, None]).sum(axis=-1)                          # first with cdf > u
    return np.minimum(picked, z.shape[-1] - 1)


# ----------------------------------------------------------------------------------------------
# Decoding


class Decoder:
    """KV-cache decoding of one batch: ``step`` feeds new tokens and returns their logits.

    The parameters are checked once, NaN included, when the decoder is made; a step checks its
    ids, runs the blocks without scanning every op's arguments for NaN again
    (``_check.nan_scans_skipped``) and scans its logits instead. A step that fails (bad ids, a
    full cache, NaN in the logits) leaves the decoder as it was."""

    def __init__(self, params: dict, config, batch: int, max_len: int):
        self.dtype = model_mod.check_params(params, config)
        for name, a in params.items():
            check_float(name, a)
        self.params, self.config = params, config
        self.max_len = check_positive_int("max_len", max_len)
        if config.family == "gpt2" and max_len > config.max_seq_len:
            raise ValueError(f"max_len: {max_len} positions exceed max_seq_len = "
                             f"{config.max_seq_len} (the learned position table)")
        B = check_positive_int("batch", batch)
        self.caches = [KVCache(B, config.n_kv_head, max_len, config.head_dim, self.dtype)
                       for _ in range(config.n_layer)]
        self.real = np.zeros((B, max_len), dtype=bool)                 # (B, L) not padding
        self.next_position = np.zeros(B, dtype=np.int64)               # (B,) real tokens so far
        self.length = 0
        self.rope = config.rope()
        self.blocks = [model_blocks.block_weights(params, config, i)
                       for i in range(config.n_layer)]

    def step(self, ids: np.ndarray, real: np.ndarray | None = None) -> np.ndarray:
        """Logits (B, t, V) of t new tokens ids (B, t); ``real`` (B, t) bool marks padding
        (False); a padded row's positions count its real tokens only."""
        model_mod.check_ids(ids, self.config)
        B, t = ids.shape
        if B != self.real.shape[0] or self.length + t > self.max_len:
            raise ValueError(f"ids: expected (B, t) = ({self.real.shape[0]}, t) with at most "
                             f"{self.max_len - self.length} new positions but got {ids.shape}")
        real = np.ones((B, t), dtype=bool) if real is None else real
        positions = self.next_position[:, None] + np.cumsum(real, axis=1) - 1
        positions = np.maximum(positions, 0)                           # (B, t)
        self.real[:, self.length: self.length + t] = real
        key_mask = self.real[:, : self.length + t]
        try:
            with nan_scans_skipped():
                logits = self._forward(ids, positions, key_mask)       # (B, t, V)
            if np.isnan(logits.min()):
                raise ValueError("logits: contain NaN (an activation overflowed, or a "
                                 "parameter became NaN after the decoder was made); the "
                                 "decoder is unchanged")
        except Exception:
            for kv in self.caches:                  # forget what this step appended
                kv.length = min(kv.length, self.length)
            self.real[:, self.length: self.length + t] = False
            raise
        self.length += t
        self.next_position += real.sum(axis=1)
        return logits

    def _forward(self, ids, positions, key_mask):
        """The blocks on the new tokens against the caches, which they append to; logits."""
        config, params = self.config, self.params
        x, _ = embedding_forward(ids, params[model_mod.embed_name(config)])
        if config.family == "gpt2":
            p, _ = learned_position_forward(params["transformer.wpe.weight"], positions)
            x = x + p
        for w, kv in zip(self.blocks, self.caches):
            x = model_blocks.block_decode(x, w, config, kv, rope=self.rope, key_mask=key_mask,
                                          position_ids=positions if self.rope else None)
        names = model_mod.final_norm_names(config)
        if names:
            x, _ = model_blocks.norm(x, params[names[0]],
                                     params[names[1]] if len(names) > 1 else None, config)
        return x @ params[model_mod.head_name(config)].T               # (B, t, V)


def left_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids (B, P), real (B, P) bool): each prompt right-aligned after PAD_ID padding."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: expected at least one prompt, each of at least one token")
    P = max(len(p) for p in prompts)
    ids = np.full((len(prompts), P), PAD_ID, dtype=np.int64)
    real = np.zeros((len(prompts), P), dtype=bool)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = p
        real[b, P - len(p):] = True
    return ids, real


def _full_forward_logits(params, config, ids, real):
    """The last position's logits (B, V) by one forward over the whole padded sequence."""
    positions = np.maximum(np.cumsum(real, axis=1) - 1, 0)
    out, _ = model_mod.model_forward(params, config, ids, key_mask=real, position_ids=positions)
    return out.logits[:, -1]


def generate(params: dict, config, prompts: list[list[int]], max_new_tokens: int, *,
             sampling: Sampling = Sampling(), eos_id: int | None = None, seed: int = 0,
             use_cache: bool = True, on_token=None) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to ``max_new_tokens`` tokens.

    Args:
        sampling: the :class:`Sampling` rule (``Sampling(temperature=0)`` is greedy).
        eos_id: a row stops after producing this id (it is included); None: never.
        seed: seeds the draws (``numpy.random.default_rng``).
        use_cache: KV-cache decoding; False recomputes the full forward at every step.
        on_token: called as on_token(row, token_id) as each token is produced (streaming).
    Returns:
        the new tokens of each row.
    """
    max_new_tokens = check_nonneg_int("max_new_tokens", max_new_tokens)
    ids, real = left_pad(prompts)
    B, P = ids.shape
    if config.family == "gpt2" and max(map(len, prompts)) + max_new_tokens > config.max_seq_len:
        raise ValueError(f"max_new_tokens: a prompt of {max(map(len, prompts))} tokens and "
                         f"{max_new_tokens} new ones exceed max_seq_len = {config.max_seq_len} "
                         f"(the learned position table)")
    rng = np.random.default_rng(check_nonneg_int("seed", seed))
    seen = np.zeros((B, config.vocab_size), dtype=bool)
    for b, p in enumerate(prompts):
        seen[b, p] = True
    out = [[] for _ in range(B)]
    if max_new_tokens == 0:
        return out
    decoder = Decoder(params, config, B, P + max_new_tokens) if use_cache else None
    logits = (decoder.step(ids, real)[:, -1] if use_cache
              else _full_forward_logits(params, config, ids, real))
    done = np.zeros(B, dtype=bool)
    for step in range(max_new_tokens):
        nxt = next_tokens(logits, sampling, rng, seen)                 # (B,)
        for b in np.flatnonzero(~done):
            out[b].append(int(nxt[b]))
            if on_token is not None:
                on_token(int(b), int(nxt[b]))
        seen[np.arange(B), nxt] = True
        if eos_id is not None:
            done |= nxt == eos_id
        if done.all() or step == max_new_tokens - 1:
            break
        if use_cache:
            logits = decoder.step(nxt[:, None])[:, -1]
        else:
            ids = np.concatenate([ids, nxt[:, None]], axis=1)
            real = np.concatenate([real, np.ones((B, 1), dtype=bool)], axis=1)
            logits = _full_forward_logits(params, config, ids, real)
    return out
