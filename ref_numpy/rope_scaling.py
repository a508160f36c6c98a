"""RoPE inverse frequencies and the context-extension variants that rescale them.

RoPE (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding",
arXiv:2104.09864, eq. 15) rotates feature pair i of a token at position m by the angle m·θ_i,

    θ_i = base^(−2i/R),   i = 0 … R/2 − 1,   R = rotary_dim,  base = rope_theta (10000)

The wavelength λ_i = 2π/θ_i is how many positions pair i needs to turn once: pair 0 turns every
2π ≈ 6 positions, the last pair every ~2π·base positions. A model trained on L positions has only
seen the pairs with λ_i < L turn fully; the variants below change θ so that longer sequences
stay inside what was trained. Each one is a function from a config dict to

    (inv_freq (R/2,) float64, attention_factor float)

and attention_factor multiplies the cos and sin tables (``ref_numpy.rope.rope_tables``), so it
scales q and k alike and the attention logits by attention_factor² (1 except for YaRN).

The dict is a ``rope_scaling`` / ``rope_parameters`` dict of a published model config, pasted in:
its type under "rope_type" (or the older "type"), optionally "rope_theta", and the keys of that
type, with their names in those configs. A key that the type does not read is an error (a typo
must not be ignored). Supported types:

    "default"   θ_i unchanged
    "linear"    position interpolation (Chen et al. 2023)                 factor
    "ntk"       NTK-aware base scaling (bloc97 2023)                        factor
    "dynamic"   dynamic NTK, the NTK base recomputed from the current length (emozilla 2023)
                                                       factor (and max_position_embeddings)
    "yarn"      YaRN (Peng et al. 2023)                                     factor,
                original_max_position_embeddings, beta_fast, beta_slow, attention_factor,
                mscale, mscale_all_dim, truncate
    "llama3"    Llama 3.1's wavelength bands (Meta 2024)                    factor, low_freq_factor,
                high_freq_factor, original_max_position_embeddings

Everything is computed in float64. transformers (``modeling_rope_utils.ROPE_INIT_FUNCTIONS``)
computes the same formulas in float32, so the two agree to float32 rounding, not beyond; the
tests compare at that level. Shape letters: R rotary dim, R/2 frequencies.
"""
from __future__ import annotations

import math

import numpy as np

from ref_numpy._check import check_positive_int

# keys every dict may carry, and the keys each type reads
COMMON_KEYS = ("rope_type", "type", "rope_theta")
TYPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
             "attention_factor", "mscale", "mscale_all_dim", "truncate"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}
DEFAULT_BASE = 10000.0


# ----------------------------------------------------------------------------------------------
# Checks


def _number(config: dict, key: str, default: float | None = None) -> float:
    """config[key] as a finite float > 0; ``default`` when absent (None: the key is required)."""
    if key not in config:
        if default is None:
            raise ValueError(f"{key}: required by the {_type_of(config)!r} scaling but missing "
                             f"from the config (keys {sorted(config)})")
        return float(default)
    value = config[key]
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{key}: expected a number > 0 but got {value!r}")
    return float(value)


def _positive_int(config: dict, key: str) -> int:
    if key not in config:
        raise ValueError(f"{key}: required by the {_type_of(config)!r} scaling but missing "
                         f"from the config (keys {sorted(config)})")
    try:
        return check_positive_int(key, config[key])
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _type_of(config: dict) -> str:
    """The scaling type named by "rope_type" or "type" (both given: they must agree)."""
    names = {config[k] for k in ("rope_type", "type") if k in config}
    if len(names) > 1:
        raise ValueError(f"rope_type: the config names two types, rope_type = "
                         f"{config['rope_type']!r} and type = {config['type']!r}")
    name = names.pop() if names else "default"
    if name not in TYPE_KEYS:
        raise ValueError(f"rope_type: unknown scaling type {name!r}; expected one of "
                         f"{', '.join(repr(t) for t in TYPE_KEYS)}")
    return name


def check_rotary_dim(rotary_dim, *, minimum: int = 2) -> int:
    """The rotary dimension R: an even int >= ``minimum`` (pairs of features are rotated)."""
    R = check_positive_int("rotary_dim", rotary_dim)
    if R % 2 or R < minimum:
        raise ValueError(f"rotary_dim: expected an even int >= {minimum} but got {R}")
    return R


def check_base(base) -> float:
    """rope_theta: a finite number > 1, so that θ_i = base^(−2i/R) decreases with i."""
    if (isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating))
            or not math.isfinite(base) or base <= 1):
        raise ValueError(f"base: expected a number > 1 (rope_theta) but got {base!r}")
    return float(base)


# ----------------------------------------------------------------------------------------------
# The variants


def default_inv_freq(rotary_dim: int, base: float = DEFAULT_BASE) -> np.ndarray:
    """θ_i = base^(−2i/R), i = 0 … R/2 − 1 (Su et al. 2021, eq. 15), (R/2,) float64.

    >>> default_inv_freq(8, 10000.0).tolist()
    [1.0, 0.1, 0.01, 0.001]
    """
    R = check_rotary_dim(rotary_dim)
    base = check_base(base)
    return base ** (-np.arange(0, R, 2, dtype=np.float64) / R)           # (R/2,)


def linear_scaling(config: dict, rotary_dim: int, base: float) -> tuple[np.ndarray, float]:
    """Position interpolation: θ'_i = θ_i / s, s = factor.

    Chen, Wong, Chen & Tian 2023, "Extending Context Window of Large Language Models via
    Positional Interpolation", arXiv:2306.15595, eq. 4: position m is read as m/s, so L·s
    positions span the angles that L did in training; m θ / s is the same angle as (m/s) θ.
    """
    s = _number(config, "factor")
    return default_inv_freq(rotary_dim, base) / s, 1.0


def _ntk_base(base: float, scale: float, R: int) -> float:
    """b' = b · scale^(R/(R−2)): the base for which the last pair (i = R/2 − 1) is slowed by
    exactly ``scale``, while pair 0 (θ_0 = 1) is untouched:
    θ'_i = θ_i · scale^(−2i/(R−2))."""
    return base * scale ** (R / (R - 2))


def ntk_scaling(config: dict, rotary_dim: int, base: float) -> tuple[np.ndarray, float]:
    """NTK-aware scaling: θ'_i = (b')^(−2i/R) with b' = b · s^(R/(R−2)), s = factor.

    bloc97 2023, "NTK-Aware Scaled RoPE allows LLaMA models to have extended (8k+) context size
    without any fine-tuning" (r/LocalLLaMA); Peng et al. 2023 (YaRN), §3.1, eq. 16. High
    frequencies (which resolve nearby tokens) are kept, low ones interpolated by up to s.
    Needs R >= 4 (the exponent R/(R−2)).
    """
    R = check_rotary_dim(rotary_dim, minimum=4)
    s = _number(config, "factor")
    return default_inv_freq(R, _ntk_base(check_base(base), s, R)), 1.0


def dynamic_ntk_scaling(config: dict, rotary_dim: int, base: float, *,
                        max_position_embeddings: int, seq_len: int | None = None,
                        ) -> tuple[np.ndarray, float]:
    """Dynamic NTK: the NTK base recomputed from the current length L.

        L = max(seq_len, L0),  scale = s·L/L0 − (s − 1),  b' = b · scale^(R/(R−2))

    with L0 = max_position_embeddings (the trained length) and s = factor: scale = 1 (no change)
    up to L0, then growing linearly with L, by s for every further L0 positions. emozilla 2023,
    "Dynamically Scaled RoPE further increases performance of long context LLaMA with zero
    fine-tuning" (r/LocalLLaMA); Peng et al. 2023 (YaRN), §3.3; the formula is transformers'
    "dynamic" type. seq_len None means L = L0 (no scaling).

    NOTE: the frequencies depend on the length, so keys already in a KV cache keep the
    frequencies they were rotated with; decoding past L0 then differs from one full forward
    (transformers behaves the same way).
    """
    R = check_rotary_dim(rotary_dim, minimum=4)
    s = _number(config, "factor")
    L0 = check_positive_int("max_position_embeddings", max_position_embeddings)
    L = L0 if seq_len is None else max(check_positive_int("seq_len", seq_len), L0)
    scale = s * L / L0 - (s - 1)
    return default_inv_freq(R, _ntk_base(check_base(base), scale, R)), 1.0


def yarn_mscale(s: float, mscale: float = 1.0) -> float:
    """0.1·mscale·ln(s) + 1 for s > 1, else 1: YaRN's √(1/t) (Peng et al. 2023, eq. 22)."""
    return 0.1 * mscale * math.log(s) + 1.0 if s > 1 else 1.0


def yarn_scaling(config: dict, rotary_dim: int, base: float) -> tuple[np.ndarray, float]:
    """YaRN: NTK-by-parts interpolation plus an attention temperature.

    Peng, Quesnelle, Fan & Shippole 2023, "YaRN: Efficient Context Window Extension of Large
    Language Models", arXiv:2309.00071, §3.2 and §3.4. With s = factor and L =
    original_max_position_embeddings, pair i turns r_i = L/λ_i = L θ_i/(2π) times over the
    trained context. Pairs that turn often (r > beta_fast = 32) are kept (extrapolation), pairs
    that turn less than once (r < beta_slow = 1) are interpolated (θ/s), and a linear ramp γ
    blends the two in between:

        θ'_i = (1 − γ_i) θ_i / s + γ_i θ_i
        1/√t = 0.1 ln(s) + 1          (the attention_factor; logits scale by its square)

    NOTE (paper vs code): the paper's ramp is linear in r (γ = (r − α)/(β − α)); the authors'
    code (github.com/jquesnelle/yarn) and transformers ramp linearly in the pair index i instead
    (i is linear in log r), between the indices where r = beta_fast and r = beta_slow,

        i(r) = R ln(L / (2π r)) / (2 ln base),   low = ⌊i(beta_fast)⌋,   high = ⌈i(beta_slow)⌉

    clamped to [0, R − 1] (their bound), with 1/1000 added to high when low = high. We follow
    the code: it is what YaRN checkpoints (Llama 2 YaRN, Qwen, DeepSeek, gpt-oss) run with.
    "truncate": false (gpt-oss) skips the floor and ceil. "attention_factor" overrides 1/√t;
    "mscale" with "mscale_all_dim" (DeepSeek-V2/V3) give
    yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim). transformers ignores one of the two
    given alone; here that is an error.
    """
    R = check_rotary_dim(rotary_dim)
    base = check_base(base)
    s = _number(config, "factor")
    L = _positive_int(config, "original_max_position_embeddings")
    beta_fast = _number(config, "beta_fast", 32.0)
    beta_slow = _number(config, "beta_slow", 1.0)
    if beta_fast <= beta_slow:
        raise ValueError(f"beta_fast: expected more than beta_slow = {beta_slow} but got "
                         f"{beta_fast}")
    truncate = config.get("truncate", True)
    if not isinstance(truncate, (bool, np.bool_)):
        raise ValueError(f"truncate: expected a bool but got {truncate!r}")

    def index(rotations: float) -> float:    # the (fractional) pair index that turns this often
        return R * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = index(beta_fast), index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, R - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(R // 2) - low) / (high - low), 0.0, 1.0)   # (R/2,) 1 - γ
    theta = default_inv_freq(R, base)
    inv_freq = theta * (1 - ramp) + theta / s * ramp                     # (R/2,)

    if "attention_factor" in config:
        factor = _number(config, "attention_factor")
    elif "mscale" in config or "mscale_all_dim" in config:
        if not ("mscale" in config and "mscale_all_dim" in config):
            given = "mscale" if "mscale" in config else "mscale_all_dim"
            raise ValueError(f"{given}: given alone; the YaRN attention factor takes mscale and "
                             f"mscale_all_dim together (or neither)")
        factor = (yarn_mscale(s, _number(config, "mscale"))
                  / yarn_mscale(s, _number(config, "mscale_all_dim")))
    else:
        factor = yarn_mscale(s)
    return inv_freq, factor


def llama3_scaling(config: dict, rotary_dim: int, base: float) -> tuple[np.ndarray, float]:
    """Llama 3.1's frequency bands, by wavelength λ_i = 2π/θ_i.

    Meta 2024, "The Llama 3 Herd of Models" (arXiv:2407.21783) and its reference code
    (github.com/meta-llama/llama-models, ``apply_scaling``). With s = factor,
    L = original_max_position_embeddings (8192), α = low_freq_factor (1), β = high_freq_factor (4):

        λ < L/β               θ' = θ                   (short wavelengths: kept)
        λ > L/α               θ' = θ / s               (long wavelengths: interpolated)
        otherwise             θ' = (1 − g) θ/s + g θ,  g = (L/λ − α) / (β − α)

    g runs from 0 at λ = L/α to 1 at λ = L/β, so θ' is continuous. Requires α < β.
    """
    R = check_rotary_dim(rotary_dim)
    s = _number(config, "factor")
    lo, hi = _number(config, "low_freq_factor"), _number(config, "high_freq_factor")
    if lo >= hi:
        raise ValueError(f"low_freq_factor: expected less than high_freq_factor = {hi} but got "
                         f"{lo}")
    L = _positive_int(config, "original_max_position_embeddings")
    theta = default_inv_freq(R, base)
    wavelen = 2 * math.pi / theta                                        # (R/2,)
    g = (L / wavelen - lo) / (hi - lo)
    blended = (1 - g) * theta / s + g * theta
    inv_freq = np.where(wavelen < L / hi, theta, np.where(wavelen > L / lo, theta / s, blended))
    return inv_freq, 1.0


# ----------------------------------------------------------------------------------------------
# The dispatcher


def rope_frequencies(scaling: dict | None, rotary_dim: int, *, base: float | None = None,
                     max_position_embeddings: int | None = None, seq_len: int | None = None,
                     ) -> tuple[np.ndarray, float]:
    """The inverse frequencies and attention factor of a config's RoPE scaling.

    Args:
        scaling: a rope_scaling / rope_parameters dict (module docstring), or None for plain
            RoPE. A "rope_theta" in it is the base.
        rotary_dim: R, the number of rotated features per head (an even int).
        base: rope_theta when the dict has none (default 10000); both given must agree.
        max_position_embeddings: the trained length L0, read by "dynamic" only.
        seq_len: the current length, read by "dynamic" only.
    Returns:
        (inv_freq (R/2,) float64, attention_factor float).

    >>> inv, f = rope_frequencies({"rope_type": "linear", "factor": 4.0}, 4)
    >>> inv.tolist(), f
    ([0.25, 0.0025], 1.0)
    """
    config = {} if scaling is None else scaling
    if not isinstance(config, dict):
        raise TypeError(f"scaling: expected a dict (rope_scaling / rope_parameters) or None but "
                        f"got {type(config).__name__}")
    kind = _type_of(config)
    unknown = sorted(set(config) - set(COMMON_KEYS) - set(TYPE_KEYS[kind]))
    if unknown:
        raise ValueError(f"scaling: keys {unknown} are not read by the {kind!r} type; it takes "
                         f"{list(COMMON_KEYS + TYPE_KEYS[kind])}")
    if "rope_theta" in config:
        theta = check_base(config["rope_theta"])
        if base is not None and check_base(base) != theta:
            raise ValueError(f"base: {base} differs from the config's rope_theta = {theta}; "
                             f"give one of them")
        base = theta
    base = DEFAULT_BASE if base is None else check_base(base)
    if kind == "default":
        return default_inv_freq(rotary_dim, base), 1.0
    if kind == "dynamic":
        if max_position_embeddings is None:
            raise ValueError("max_position_embeddings: required by the 'dynamic' scaling (the "
                             "trained length its base is recomputed from) but got None")
        return dynamic_ntk_scaling(config, rotary_dim, base,
                                   max_position_embeddings=max_position_embeddings,
                                   seq_len=seq_len)
    variant = {"linear": linear_scaling, "ntk": ntk_scaling, "yarn": yarn_scaling,
               "llama3": llama3_scaling}[kind]
    return variant(config, rotary_dim, base)
