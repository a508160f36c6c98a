"""Comparison of one tensor against its reference under the tolerance policy.

Policy:

- float64 against torch autograd: elementwise ``|got - ref| <= 1e-6 + 1e-6 * |ref|`` (the bar of
  ``torch.testing.assert_close`` tightened to 1e-6); achieved errors are expected near 1e-13.
- float32 (and lower): the error against the float64 reference may be at most twice the error of a
  plain same-precision implementation (the *baseline*) against that reference, plus a rounding
  floor — the FlashAttention test habit of judging low precision relative to a same-precision
  baseline. The floor is 4 machine epsilons times the reference's largest magnitude
  (4 * 2**-23 * max|ref| in float32): a correct formula of a few float32 operations carries a few
  roundings, and a baseline that happens to land within half an ulp (likely for tensors of one or
  a few elements) must not make that unattainable. A reference that is identically zero has no
  floor, so a case whose exact answer is 0 (one key per query) belongs in float64 only.
- The low-precision reference is torch autograd in float64 on the same rounded inputs, so the
  bar is set by an independent result. The baseline itself must be explainable by rounding: an
  error above ``SANITY_EPS`` (100) machine epsilons times S, where S is the largest magnitude
  among the reference tensor, the case's float inputs and its upstream gradients, is a failing
  baseline row, and its bar falls back to the rounding floor (a broken baseline never widens the
  bar). The worst correct baseline in the registry uses 6.9 eps x S; a 1 % error in one gradient
  of an O(1) op is ~10^5 eps x S.
- Any NaN or infinity in ``got`` that the reference does not have at the same place (same value)
  fails, with its index; a shape mismatch fails.
- A row that could not be compared with an independent result (the case has no torch oracle)
  is ``unchecked``: it never counts as passed, and it fails when its values are not finite.

``fraction`` is the share of the tolerance used by the worst element (pass iff ``fraction <= 1``).
``max_rel`` is normwise: ``max|got - ref| / max|ref|``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ATOL64 = 1e-6
RTOL64 = 1e-6
FLOOR_EPS = 4      # the low-precision rounding floor, in machine epsilons of max|ref|
SANITY_EPS = 100   # a baseline error above this many eps x S is not rounding (see above)


@dataclass
class Row:
    case: str
    backend: str
    dtype: str
    tensor: str
    shape: tuple
    max_abs: float
    max_rel: float
    tolerance: str
    fraction: float
    passed: bool
    worst_index: tuple | None = None
    ref_value: float | None = None
    got_value: float | None = None
    note: str = ""
    unchecked: bool = False   # no independent result to compare with; never ``passed``

    def __post_init__(self):
        if self.unchecked and self.passed:
            raise ValueError("Row: an unchecked row cannot be passed")

    @property
    def status(self) -> str:
        """``"pass"``, ``"FAIL"`` or ``"unchecked"`` (finite, but compared with no oracle)."""
        if self.passed:
            return "pass"
        return "unchecked" if self.unchecked else "FAIL"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["worst_index"] = None if self.worst_index is None else list(self.worst_index)
        d["status"] = self.status
        return d

    def describe(self) -> str:
        """One line for a failure: names the tensor, its shape, the worst index and both values."""
        where = "" if self.worst_index is None else f" at index {self.worst_index}"
        vals = ("" if self.ref_value is None else
                f": reference {self.ref_value!r}, got {self.got_value!r}")
        note = f" ({self.note})" if self.note else ""
        return (f"{self.case} [{self.backend}, {self.dtype}] {self.tensor} {self.shape}: "
                f"max abs err {self.max_abs:.3e} {'<=' if self.passed else '>'} tolerance "
                f"{self.tolerance}{where}{vals}{note}")


def _index(flat: int, shape: tuple) -> tuple:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _nonfinite_row(base: dict, got: np.ndarray, ref: np.ndarray) -> Row | None:
    bad = ~np.isfinite(got) | ~np.isfinite(ref)
    # Identical infinities (e.g. lse = -inf for a fully masked row) agree by definition.
    same_inf = np.isinf(got) & np.isinf(ref) & (got == ref)
    bad &= ~same_inf
    if not bad.any():
        return None
    flat = int(np.flatnonzero(bad)[0])
    idx = _index(flat, got.shape)
    return Row(**base, max_abs=float("inf"), max_rel=float("inf"), fraction=float("inf"),
               passed=False, worst_index=idx, ref_value=float(ref.flat[flat]),
               got_value=float(got.flat[flat]),
               note=f"{int(bad.sum())} non-finite value(s)")


def compare(got, ref, *, case: str, backend: str, dtype: str, tensor: str,
            atol: float = ATOL64, rtol: float = RTOL64, bound: float | None = None,
            tolerance: str | None = None) -> Row:
    """Compare ``got`` with ``ref`` elementwise.

    With ``bound`` the test is ``max|got - ref| <= bound`` (the float32 policy); otherwise it is
    ``|got - ref| <= atol + rtol * |ref|`` for every element (the float64 policy).
    """
    got = np.asarray(got)
    ref = np.asarray(ref)
    base = dict(case=case, backend=backend, dtype=dtype, tensor=tensor, shape=tuple(ref.shape),
                tolerance=tolerance or (f"{bound:.2e}" if bound is not None
                                        else f"{atol:g}+{rtol:g}|ref|"))
    if got.shape != ref.shape:
        return Row(**base, max_abs=float("inf"), max_rel=float("inf"), fraction=float("inf"),
                   passed=False, note=f"shape mismatch: expected {ref.shape} but got {got.shape}")
    bad = _nonfinite_row(base, got, ref)
    if bad is not None:
        return bad
    if ref.size == 0:
        return Row(**base, max_abs=0.0, max_rel=0.0, fraction=0.0, passed=True, note="empty")
    finite = np.isfinite(ref)
    g64 = np.where(finite, got, 0).astype(np.float64)
    r64 = np.where(finite, ref, 0).astype(np.float64)
    err = np.abs(g64 - r64)
    scale = float(np.abs(r64).max())
    max_abs = float(err.max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    if bound is not None:
        used = err / bound if bound > 0 else np.where(err > 0, np.inf, 0.0)
    else:
        used = err / (atol + rtol * np.abs(r64))
    flat = int(np.argmax(used))
    fraction = float(used.flat[flat])
    passed = fraction <= 1.0
    return Row(**base, max_abs=max_abs, max_rel=max_rel, fraction=fraction, passed=passed,
               worst_index=_index(flat, ref.shape), ref_value=float(ref.flat[flat]),
               got_value=float(got.flat[flat]))


def max_abs_finite(*arrays) -> float:
    """The largest finite magnitude in ``arrays`` (0.0 when there is none).

    >>> max_abs_finite(np.array([1.0, -np.inf]), np.array([-3.0]))
    3.0
    """
    best = 0.0
    for a in arrays:
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
            continue
        finite = a[np.isfinite(a)]
        if finite.size:
            best = max(best, float(np.abs(finite).max()))
    return best


def float32_bound(baseline_err: float, ref: np.ndarray, dtype: str) -> float:
    """The low-precision bar: 2 x the baseline's max error + 4 eps(dtype) x max|ref|."""
    scale = max_abs_finite(np.asarray(ref, dtype=np.float64))
    return 2.0 * baseline_err + FLOOR_EPS * float(np.finfo(np.dtype(dtype)).eps) * scale


def baseline_limit(ref: np.ndarray, operands: list, dtype: str) -> float:
    """The largest error a plain ``dtype`` baseline may have before it counts as broken:
    ``SANITY_EPS`` eps(dtype) x S, S = the largest magnitude among ``ref`` and ``operands``
    (the case's float inputs and upstream gradients)."""
    scale = max_abs_finite(ref, *operands)
    return SANITY_EPS * float(np.finfo(np.dtype(dtype)).eps) * scale
