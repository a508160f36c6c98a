"""ALiBi (ref_numpy.alibi, Press et al. 2022): the paper's slopes for power-of-two and other
head counts, the bias values, bottom-right alignment, and ALiBi + causal attention."""
import math

import numpy as np
import pytest
from scipy.special import softmax

from ref_numpy import alibi, attention
from torch_bridge.attention import alibi_slopes as paper_get_slopes


def test_slopes_known_answers():
    np.testing.assert_array_equal(alibi.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
    np.testing.assert_array_equal(alibi.alibi_slopes(1), [2.0 ** -8])
    # H = 6: the 4 slopes of H = 4, then every other slope of H = 8 (its 1st and 3rd)
    np.testing.assert_array_equal(alibi.alibi_slopes(6),
                                  [2.0 ** -e for e in (2, 4, 6, 8, 1, 3)])
    # H = 12: the 8 slopes of H = 8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from H = 16
    np.testing.assert_allclose(alibi.alibi_slopes(12)[8:],
                               [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5], rtol=1e-15)


@pytest.mark.parametrize("n", list(range(1, 41)) + [64, 96, 100])
def test_slopes_equal_the_papers_reference_code(n):
    np.testing.assert_allclose(alibi.alibi_slopes(n), paper_get_slopes(n), rtol=1e-14, atol=0)


def test_bias_values_shape_and_bottom_right_alignment():
    b = alibi.alibi_bias(2, 3, 3)
    assert b.shape == (1, 2, 3, 3) and b.dtype == np.float64
    m = alibi.alibi_slopes(2)
    # causal side: -m (i - j); row 2 = -m (2, 1, 0)
    np.testing.assert_array_equal(b[0, 1, 2], -m[1] * np.array([2.0, 1.0, 0.0]))
    np.testing.assert_array_equal(b[0, 0, 0], -m[0] * np.array([0.0, 1.0, 2.0]))
    # the 2 last queries of a 5-token sequence see the biases of the full sequence's last rows
    np.testing.assert_array_equal(alibi.alibi_bias(6, 2, 5), alibi.alibi_bias(6, 5, 5)[:, :, 3:])
    assert alibi.alibi_bias(3, 4, 4, dtype=np.float32).dtype == np.float32


def test_alibi_causal_attention_known_answer():
    rng = np.random.default_rng(0)
    H, T, D = 3, 5, 4
    q, k, v = rng.standard_normal((3, 1, H, T, D))
    out, _ = attention.attention_forward(q, k, v, causal=True, mask=alibi.alibi_bias(H, T, T))
    slopes = alibi.alibi_slopes(H)
    for h in range(H):
        for i in range(T):
            s = np.array([q[0, h, i] @ k[0, h, j] / math.sqrt(D) - slopes[h] * (i - j)
                          for j in range(i + 1)])
            np.testing.assert_allclose(out[0, h, i], softmax(s) @ v[0, h, : i + 1], atol=1e-14)


def test_bad_head_count_is_an_error():
    with pytest.raises(ValueError, match=r"n_head: expected an int >= 1 but got 0"):
        alibi.alibi_slopes(0)
    with pytest.raises(ValueError, match=r"Tq: expected an int >= 0 but got -1"):
        alibi.alibi_bias(2, -1, 3)
