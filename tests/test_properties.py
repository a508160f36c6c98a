"""Property tests (hypothesis) for online softmax and the norms.

Online softmax: any block size and any merge tree over any cut of a row give softmax's numbers,
with -inf entries and fully -inf rows included. Norms: the invariances that define them
(RMSNorm under scaling, LayerNorm under shifting and scaling, the eps scaling law that pins
torch's eps placement) and the matching facts about their gradients.
"""
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ref_numpy import norms, online_softmax, softmax

SETTINGS = settings(max_examples=50, deadline=None)

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
# about one entry in five is masked
maybe_masked = st.one_of(finite, finite, finite, finite, st.just(-np.inf))


def rows(elements, max_rows=4, max_n=40):
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_n))
    return shapes.flatmap(lambda s: arrays(np.float64, s, elements=elements))


def direct_state(x):
    """(max, sum exp(x - max)) per row, straight from the definition; (-inf, 0) if all -inf."""
    m = x.max(axis=-1)
    live = np.isfinite(m)
    l = np.zeros_like(m)
    l[live] = np.exp(x[live] - m[live, None]).sum(axis=-1)
    return m, l


@SETTINGS
@given(x=rows(maybe_masked), block_size=st.integers(1, 60))
def test_online_softmax_any_block_size_equals_softmax(x, block_size):
    y, _ = online_softmax.online_softmax_forward(x, block_size=block_size)
    ref, _ = softmax.softmax_forward(x)
    assert not np.isnan(y).any()
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-15)
    # rows with a finite entry sum to 1, fully masked rows are all zeros
    live = np.isfinite(x).any(axis=-1)
    np.testing.assert_allclose(y[live].sum(axis=-1), 1.0, rtol=1e-13)
    assert not y[~live].any()


@SETTINGS
@given(data=st.data(), x=rows(maybe_masked, max_rows=3, max_n=30))
def test_any_cut_and_any_merge_tree_gives_the_row_state(data, x):
    n = x.shape[-1]
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1), label="cuts")
                  if n > 1 else [])
    pieces = np.split(x, cuts, axis=-1)
    states = [online_softmax.block_state(p) for p in pieces]
    # merge random pairs (any order, any tree) until one state is left
    while len(states) > 1:
        i, j = data.draw(st.lists(st.integers(0, len(states) - 1), min_size=2, max_size=2,
                                  unique=True), label="pair")
        merged = online_softmax.merge_states(*states[i], *states[j])
        states = [s for k, s in enumerate(states) if k not in (i, j)] + [merged]
    m, l = states[0]
    m_ref, l_ref = direct_state(x)
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_allclose(l, l_ref, rtol=1e-13)


@SETTINGS
@given(x=rows(finite), c=st.floats(-100, 100))
def test_softmax_is_shift_invariant_and_its_gradient_sums_to_zero(x, c):
    y, cache = softmax.softmax_forward(x)
    np.testing.assert_allclose(softmax.softmax_forward(x + c)[0], y, rtol=1e-11, atol=1e-13)
    dout = np.random.default_rng(0).standard_normal(x.shape)
    # shift invariance <=> every row of the gradient sums to 0
    dx = softmax.softmax_backward(dout, cache)
    np.testing.assert_allclose(dx.sum(axis=-1), 0.0, atol=1e-13 * (1 + np.abs(dout).max()))


norm_rows = rows(st.floats(-10, 10, allow_nan=False), max_n=33)


def _weight(x, seed=0):
    return 1 + 0.5 * np.random.default_rng(seed).standard_normal(x.shape[-1])


@SETTINGS
@given(x=norm_rows, c=st.floats(1e-3, 1e3))
def test_rmsnorm_scale_invariance_and_eps_scaling_law(x, c):
    assume(np.all(np.sqrt(np.mean(x * x, axis=-1)) > 1e-3))
    w = _weight(x)
    # eps = 0: RMSNorm(c x) = RMSNorm(x) exactly (up to rounding)
    y0, cache = norms.rmsnorm_forward(x, w, eps=0.0)
    np.testing.assert_allclose(norms.rmsnorm_forward(c * x, w, eps=0.0)[0], y0,
                               rtol=1e-12, atol=1e-12)
    # eps inside the sqrt: sqrt(mean((c x)^2) + c^2 eps) = c sqrt(mean(x^2) + eps), so
    # RMSNorm(c x; c^2 eps) = RMSNorm(x; eps) -- false for any other placement of eps
    eps = 0.3
    np.testing.assert_allclose(norms.rmsnorm_forward(c * x, w, eps=c * c * eps)[0],
                               norms.rmsnorm_forward(x, w, eps=eps)[0], rtol=1e-11, atol=1e-12)
    # unit weight: mean of y^2 is 1
    y1, _ = norms.rmsnorm_forward(x, np.ones(x.shape[-1]), eps=0.0)
    np.testing.assert_allclose(np.mean(y1 * y1, axis=-1), 1.0, rtol=1e-12)
    # scale invariance <=> the gradient is orthogonal to x in each row
    dout = np.random.default_rng(1).standard_normal(x.shape)
    dx, _ = norms.rmsnorm_backward(dout, cache)
    scale = np.abs(x).max() * np.abs(dx).max() * x.shape[-1]
    np.testing.assert_allclose(np.sum(dx * x, axis=-1), 0.0, atol=1e-12 * (1 + scale))


@SETTINGS
@given(x=norm_rows, shift=st.floats(-100, 100), c=st.floats(1e-2, 1e2))
def test_layernorm_shift_and_scale_invariance_and_unit_moments(x, shift, c):
    assume(x.shape[-1] > 1 and np.all(np.std(x, axis=-1) > 0.1))
    w = _weight(x)
    b = np.random.default_rng(2).standard_normal(x.shape[-1])
    y, cache = norms.layernorm_forward(x, w, b, eps=1e-5)
    # shifting a row by a constant changes neither its centred values nor its variance
    np.testing.assert_allclose(norms.layernorm_forward(x + shift, w, b, eps=1e-5)[0], y,
                               rtol=1e-10, atol=1e-10)
    # eps scaling law, as for RMSNorm: LayerNorm(c x; c^2 eps) = LayerNorm(x; eps)
    np.testing.assert_allclose(norms.layernorm_forward(c * x, w, b, eps=c * c * 1e-5)[0], y,
                               rtol=1e-10, atol=1e-10)
    # unit weight, no bias, eps = 0: every row has mean 0 and (biased) variance 1
    z, _ = norms.layernorm_forward(x, np.ones(x.shape[-1]), eps=0.0)
    np.testing.assert_allclose(z.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.var(axis=-1), 1.0, rtol=1e-12)
    # shift invariance <=> every row of dx sums to 0
    dout = np.random.default_rng(3).standard_normal(x.shape)
    dx, _, _ = norms.layernorm_backward(dout, cache)
    np.testing.assert_allclose(dx.sum(axis=-1), 0.0,
                               atol=1e-12 * (1 + np.abs(dx).max() * x.shape[-1]))
