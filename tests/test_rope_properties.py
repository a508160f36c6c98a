"""Property tests (hypothesis) for RoPE: the facts that define it, under random positions, sizes,
conventions and scalings.

* ⟨RoPE(q, m), RoPE(k, n)⟩ depends on m − n only: shifting both positions changes nothing.
* Every rotated vector keeps its norm (attention factor 1), and the backward undoes the forward.
* The interleaved and half-split conventions agree under the feature permutation.
"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ref_numpy import rope, rope_scaling

SETTINGS = settings(max_examples=60, deadline=None)

# (scaling dict or None); "dynamic" is left out: its frequencies depend on the length itself
SCALINGS = st.sampled_from([
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "ntk", "factor": 8.0},
    {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 64},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 128},
])
positions = st.integers(0, 100_000)


@st.composite
def head(draw):
    """(D, R): D even in [4, 64], R even in [4, D]."""
    D = 2 * draw(st.integers(2, 32))
    R = 2 * draw(st.integers(2, D // 2))
    return D, R


def _rotate(x, pos, R, interleaved, scaling=None):
    inv, factor = rope_scaling.rope_frequencies(scaling, R)
    cos, sin = rope.rope_tables(inv, np.asarray(pos), attention_factor=factor)
    return rope.rope_forward(x, cos, sin, interleaved=interleaved)


@SETTINGS
@given(dims=head(), m=positions, n=positions, shift=st.integers(-50_000, 50_000),
       interleaved=st.booleans(), scaling=SCALINGS, seed=st.integers(0, 2**32 - 1))
def test_score_depends_on_m_minus_n_only(dims, m, n, shift, interleaved, scaling, seed):
    D, R = dims
    shift = max(shift, -min(m, n))                    # positions stay >= 0
    q, k = np.random.default_rng(seed).standard_normal((2, 1, 1, 1, D))

    def score(a, b):
        qa, _ = _rotate(q, [a], R, interleaved, scaling)
        kb, _ = _rotate(k, [b], R, interleaved, scaling)
        return float(np.sum(qa * kb))

    # the angles m·θ are rounded to ~2⁻⁵² m: the score may move by that much per pair
    bound = 1e-14 * (1 + max(m, n) + abs(shift)) * float(np.abs(q).sum() * np.abs(k).max())
    assert abs(score(m + shift, n + shift) - score(m, n)) <= bound


@SETTINGS
@given(dims=head(), pos=st.lists(positions, min_size=1, max_size=9), interleaved=st.booleans(),
       scaling=SCALINGS, seed=st.integers(0, 2**32 - 1))
def test_norm_is_preserved_and_the_backward_undoes_the_forward(dims, pos, interleaved, scaling,
                                                               seed):
    D, R = dims
    x = np.random.default_rng(seed).standard_normal((2, 3, len(pos), D))
    inv, _ = rope_scaling.rope_frequencies(scaling, R)
    cos, sin = rope.rope_tables(inv, np.array(pos))              # attention factor 1
    out, cache = rope.rope_forward(x, cos, sin, interleaved=interleaved)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1),
                               rtol=1e-13)
    np.testing.assert_allclose(rope.rope_backward(out, cache), x, rtol=0, atol=1e-13)


@SETTINGS
@given(dims=head(), pos=st.lists(positions, min_size=1, max_size=9), scaling=SCALINGS,
       seed=st.integers(0, 2**32 - 1))
def test_interleaved_and_half_split_agree_under_the_permutation(dims, pos, scaling, seed):
    D, R = dims
    x = np.random.default_rng(seed).standard_normal((1, 2, len(pos), D))
    perm = rope.half_split_permutation(D, R)
    inter, _ = _rotate(x, pos, R, True, scaling)
    half, _ = _rotate(np.ascontiguousarray(x[..., perm]), pos, R, False, scaling)
    np.testing.assert_allclose(half, inter[..., perm], rtol=0, atol=1e-14)
