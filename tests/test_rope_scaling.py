"""RoPE frequency scalings (ref_numpy.rope_scaling): known answers at R = 8 worked by hand,
transformers' ROPE_INIT_FUNCTIONS on the same configs, and bad configs.

Hand computations use base 10000 and R = 8, where θ_i = 10000^(−2i/8) = 10^(−i):
θ = (1, 0.1, 0.01, 0.001); each test writes its expected values from the formula, not from the
code under test. transformers computes in float32, so it is compared at rtol 1e-6; its tests
skip, with the reason, where transformers is not importable.
"""
import math
import re

import numpy as np
import pytest

from ref_numpy import rope_scaling
from ref_numpy.rope_scaling import rope_frequencies

THETA = np.array([1.0, 0.1, 0.01, 0.001])


def test_default():
    """θ_i = base^(−2i/R) = 10^(−i) for base 10000, R = 8."""
    inv, factor = rope_frequencies(None, 8)
    np.testing.assert_allclose(inv, THETA, rtol=1e-15)
    assert factor == 1.0
    inv, _ = rope_frequencies({"rope_type": "default", "rope_theta": 100.0}, 4)
    np.testing.assert_allclose(inv, [1.0, 0.1], rtol=1e-15)       # 100^(−2/4) = 0.1


def test_linear():
    """Position interpolation, s = 4: θ / 4 = (0.25, 0.025, 0.0025, 0.00025)."""
    inv, factor = rope_frequencies({"type": "linear", "factor": 4.0}, 8)
    np.testing.assert_allclose(inv, [0.25, 0.025, 0.0025, 0.00025], rtol=1e-15)
    assert factor == 1.0


def test_ntk():
    """s = 4: b' = 10000 · 4^(8/6); θ'_i = b'^(−i/4) = 10^(−i) · 4^(−(4/3)(i/4)) = 10^(−i) 4^(−i/3):
    (1, 0.1 · 4^(−1/3), 0.01 · 4^(−2/3), 0.001 / 4). Pair 0 is kept, the last is divided by s."""
    inv, factor = rope_frequencies({"rope_type": "ntk", "factor": 4.0}, 8)
    np.testing.assert_allclose(inv, [1.0, 0.1 * 4 ** (-1 / 3), 0.01 * 4 ** (-2 / 3), 0.00025],
                               rtol=1e-14)
    assert factor == 1.0


def test_dynamic():
    """s = 2, L0 = 16. At seq_len <= 16: scale = 2·16/16 − 1 = 1, θ unchanged. At seq_len = 32:
    scale = 2·32/16 − 1 = 3, b' = 10000 · 3^(8/6), θ'_i = 10^(−i) · 3^(−i/3)."""
    cfg = {"type": "dynamic", "factor": 2.0}
    for seq_len in (None, 5, 16):
        inv, _ = rope_frequencies(cfg, 8, max_position_embeddings=16, seq_len=seq_len)
        np.testing.assert_allclose(inv, THETA, rtol=1e-15)
    inv, factor = rope_frequencies(cfg, 8, max_position_embeddings=16, seq_len=32)
    np.testing.assert_allclose(inv, THETA * 3.0 ** (-np.arange(4) / 3), rtol=1e-14)
    assert factor == 1.0


def test_yarn():
    """s = 4, L = 1024, β_fast = 32, β_slow = 1. Pair i turns r = L θ_i / 2π times; the index
    with r turns is i(r) = 8 ln(1024 / (2π r)) / (2 ln 10000):
        i(32) = 8 ln(5.093) / 18.42 = 0.707 → floor 0,  i(1) = 8 ln(162.97) / 18.42 = 2.212 → ceil 3
    ramp (i − 0) / (3 − 0) = (0, 1/3, 2/3, 1); θ' = θ (1 − ramp) + θ/4 · ramp:
        θ'_1 = 0.1 · 2/3 + 0.025 · 1/3 = 0.075,  θ'_2 = 0.01 · 1/3 + 0.0025 · 2/3 = 0.005,
        θ' = (1, 0.075, 0.005, 0.00025);  attention factor 0.1 ln 4 + 1 = 1.1386."""
    cfg = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    assert math.floor(8 * math.log(1024 / (2 * math.pi * 32)) / (2 * math.log(1e4))) == 0
    assert math.ceil(8 * math.log(1024 / (2 * math.pi)) / (2 * math.log(1e4))) == 3
    inv, factor = rope_frequencies(cfg, 8)
    np.testing.assert_allclose(inv, [1.0, 0.075, 0.005, 0.00025], rtol=1e-14)
    assert factor == pytest.approx(0.1 * math.log(4) + 1, rel=1e-15)


def test_yarn_without_truncation_and_with_deepseek_mscale():
    """truncate = false keeps low = 0.707, high = 2.212: ramp_i = clip((i − 0.707)/1.505, 0, 1).
    DeepSeek's factor (0.1·1·ln 4 + 1) / (0.1·0.5·ln 4 + 1); "attention_factor" overrides both."""
    lo = 8 * math.log(1024 / (2 * math.pi * 32)) / (2 * math.log(1e4))
    hi = 8 * math.log(1024 / (2 * math.pi)) / (2 * math.log(1e4))
    ramp = np.clip((np.arange(4) - lo) / (hi - lo), 0, 1)
    cfg = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
           "truncate": False, "mscale": 1.0, "mscale_all_dim": 0.5}
    inv, factor = rope_frequencies(cfg, 8)
    np.testing.assert_allclose(inv, THETA * (1 - ramp) + THETA / 4 * ramp, rtol=1e-14)
    assert factor == pytest.approx((0.1 * math.log(4) + 1) / (0.05 * math.log(4) + 1), rel=1e-15)
    _, factor = rope_frequencies({**cfg, "attention_factor": 0.9}, 8)
    assert factor == 0.9
    _, factor = rope_frequencies({**cfg, "factor": 0.5, "mscale": 1.0, "mscale_all_dim": 1.0}, 8)
    assert factor == 1.0


def test_llama3():
    """s = 8, α = 1, β = 4, L = 1000: bands L/β = 250 and L/α = 1000; wavelengths 2π/θ =
    (6.28, 62.8, 628, 6283). Pairs 0 and 1 are shorter than 250: kept. Pair 3 is longer than
    1000: θ/8 = 0.000125. Pair 2 blends with g = (1000 θ_2 / 2π − 1) / (4 − 1) = (10/2π − 1)/3 =
    0.19718: θ'_2 = 0.01 ((1 − g)/8 + g) = 0.0029754."""
    cfg = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 1000}
    g = (10 / (2 * math.pi) - 1) / 3
    inv, factor = rope_frequencies(cfg, 8)
    np.testing.assert_allclose(inv, [1.0, 0.1, 0.01 * ((1 - g) / 8 + g), 0.000125], rtol=1e-14)
    assert factor == 1.0


def test_llama3_is_continuous_at_both_band_edges():
    cfg = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}
    inv, _ = rope_frequencies(cfg, 128, base=500000.0)
    theta = rope_scaling.default_inv_freq(128, 500000.0)
    ratio = theta / inv                       # 1 for short wavelengths, 8 for long ones
    assert ratio[0] == 1 and ratio[-1] == pytest.approx(8)
    assert np.all(np.diff(ratio) >= -1e-12)   # monotone: no jump at either edge


# --- transformers ---------------------------------------------------------------------------

def _hf(config_dict, head_dim, *, seq_len=None, max_pos=4096, rotary_dim=None):
    pytest.importorskip("transformers", reason="transformers is not importable here")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = dict(config_dict)
    if rotary_dim is not None:
        params["partial_rotary_factor"] = rotary_dim / head_dim
    config = LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                         max_position_embeddings=max_pos, rope_parameters=params)
    inv, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, None, seq_len=seq_len)
    return inv.double().numpy(), float(factor)


HF_CONFIGS = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 1024},
    "yarn-qwen": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                  "original_max_position_embeddings": 32768},
    "yarn-gpt-oss": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                     "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                     "original_max_position_embeddings": 4096},
    "yarn-deepseek": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
                      "original_max_position_embeddings": 4096},
    "llama3.1": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192},
}


@pytest.mark.parametrize("head_dim, rotary_dim", [(8, None), (64, None), (128, None), (64, 32)])
@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_matches_transformers_rope_init_functions(name, head_dim, rotary_dim):
    cfg = HF_CONFIGS[name]
    hf_inv, hf_factor = _hf(cfg, head_dim, rotary_dim=rotary_dim)
    inv, factor = rope_frequencies(cfg, rotary_dim or head_dim, max_position_embeddings=4096)
    np.testing.assert_allclose(inv, hf_inv, rtol=1e-6, atol=0)
    assert factor == pytest.approx(hf_factor, rel=1e-12)


@pytest.mark.parametrize("seq_len", [100, 4096, 5000, 100000])
def test_dynamic_matches_transformers_at_the_current_length(seq_len):
    cfg = HF_CONFIGS["dynamic"]
    hf_inv, _ = _hf(cfg, 64, seq_len=seq_len)
    inv, _ = rope_frequencies(cfg, 64, max_position_embeddings=4096, seq_len=seq_len)
    np.testing.assert_allclose(inv, hf_inv, rtol=1e-6, atol=0)


def test_ntk_is_transformers_dynamic_formula_at_a_fixed_scale():
    """transformers has no static NTK type; its "dynamic" formula with factor 1 at
    seq_len = s·L0 has scale = 1·s·L0/L0 − 0 = s, which is static NTK with factor s."""
    hf_inv, _ = _hf({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 1.0}, 64,
                    seq_len=4 * 4096)
    inv, _ = rope_frequencies({"rope_type": "ntk", "factor": 4.0}, 64)
    np.testing.assert_allclose(inv, hf_inv, rtol=1e-6, atol=0)


# --- bad configs ----------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, kwargs, message", [
    ({"type": "linear", "factor": 0.0}, {}, "factor: expected a number > 0 but got 0.0"),
    ({"type": "yarn", "factor": -2, "original_max_position_embeddings": 8}, {},
     "factor: expected a number > 0 but got -2"),
    ({"type": "ntk", "factor": True}, {}, "factor: expected a number > 0 but got True"),
    ({"type": "longrope", "factor": 2.0}, {},
     "rope_type: unknown scaling type 'longrope'; expected one of 'default', 'linear', 'ntk', "
     "'dynamic', 'yarn', 'llama3'"),
    ({"type": "linear", "rope_type": "yarn", "factor": 2.0}, {},
     "rope_type: the config names two types, rope_type = 'yarn' and type = 'linear'"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, {},
     "low_freq_factor: expected less than high_freq_factor = 4.0 but got 4.0"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
     {}, "original_max_position_embeddings: required by the 'llama3' scaling but missing"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192.5}, {},
     "original_max_position_embeddings: expected a positive int but got float (8192.5)"),
    ({"rope_type": "linear"}, {}, "factor: required by the 'linear' scaling but missing"),
    ({"rope_type": "linear", "factor": 2.0, "low_freq_facor": 1.0}, {},
     "scaling: keys ['low_freq_facor'] are not read by the 'linear' type"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
      "beta_fast": 1.0, "beta_slow": 2.0}, {}, "beta_fast: expected more than beta_slow = 2.0"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
      "mscale": 1.0}, {}, "mscale: given alone"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
      "truncate": "no"}, {}, "truncate: expected a bool but got 'no'"),
    ({"rope_type": "dynamic", "factor": 2.0}, {},
     "max_position_embeddings: required by the 'dynamic' scaling"),
    ({"rope_type": "ntk", "factor": 2.0}, {"rotary_dim": 2},
     "rotary_dim: expected an even int >= 4 but got 2"),
    (None, {"rotary_dim": 7}, "rotary_dim: expected an even int >= 2 but got 7"),
    (None, {"base": 1.0}, "base: expected a number > 1 (rope_theta) but got 1.0"),
    ({"rope_theta": 500000.0}, {"base": 10000.0},
     "base: 10000.0 differs from the config's rope_theta = 500000.0"),
])
def test_bad_config_is_a_clear_error(cfg, kwargs, message):
    kwargs = {"rotary_dim": 8, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        rope_frequencies(cfg, kwargs.pop("rotary_dim"), **kwargs)


def test_scaling_must_be_a_dict():
    with pytest.raises(TypeError, match=re.escape("scaling: expected a dict (rope_scaling / "
                                                  "rope_parameters) or None but got str")):
        rope_frequencies("yarn", 8)
