"""Finite-difference gradient check of a NumPy backward, in float64.

For an op ``y = f(x1, x2, ...)`` the backward computes vector-Jacobian products
``g_i = J_iᵀ u`` for an upstream gradient ``u``. Central differences estimate the same thing from
the forward alone::

    J[:, k] ≈ (f(x + eps e_k) - f(x - eps e_k)) / (2 eps)          error O(eps²) + O(δ/eps)

- small problems (every input and output at most ``FULL_MAX`` elements): the full Jacobian, one
  column per input element from differences and one row per output element from the backward
  (``u = e_j``), compared elementwise;
- larger problems: ``n_proj`` random projections per input, ``uᵀ J_i v`` from differences of the
  scalar ``<f(x + eps v), u>`` against ``<g_i(u), v>`` from the backward.

Defaults are torch.autograd.gradcheck's (eps 1e-6, atol 1e-5, rtol 1e-3); pass iff
``|analytic - numeric| <= atol + rtol * |numeric|`` everywhere. ``mode`` forces the full
Jacobian or the projections whatever the size. As torch's ``nondet_tol``, the backward is also
called twice with the same upstream gradient, and the two results must agree to ``nondet_tol``
(exactly, by default): a backward that is not deterministic, or that changes its cache, fails.
"""
from __future__ import annotations

import numpy as np

from equivalence.compare import Row
from equivalence.registry import Case

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3
FULL_MAX = 256
MODES = ("auto", "full", "projections")


def _outputs(case: Case, inputs: dict) -> dict[str, np.ndarray]:
    outs, _ = case.forward(inputs)
    names = case.dout_for or tuple(outs)
    return {n: np.asarray(outs[n], dtype=np.float64) for n in names}


def _dot(a: dict, b: dict, exempt: dict) -> float:
    # Outputs that are infinite at the unperturbed point (lse = -inf of a fully masked row) carry
    # no gradient and are skipped; a NaN anywhere else makes the result NaN, i.e. a failure.
    return float(sum(np.sum(a[n][~exempt[n]] * b[n][~exempt[n]]) for n in a))


def _shifted(inputs: dict, name: str, direction: np.ndarray, step: float) -> dict:
    out = dict(inputs)
    out[name] = inputs[name] + step * direction
    return out


def gradcheck(case: Case, inputs: dict[str, np.ndarray], *, rng: np.random.Generator,
              eps: float = EPS, atol: float = ATOL, rtol: float = RTOL, n_proj: int = 3,
              full_max: int = FULL_MAX, mode: str = "auto", nondet_tol: float = 0.0,
              ) -> list[Row]:
    """Check ``case.backward`` against central differences of ``case.forward``; one row per input.

    ``inputs`` must be float64 (integer and boolean inputs are held fixed). ``mode``: "auto" (the
    full Jacobian when every input and output has at most ``full_max`` elements, else
    ``n_proj`` random projections), "full" or "projections".
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)} but got {mode!r}")
    for name, value in (("eps", eps), ("atol", atol), ("rtol", rtol), ("nondet_tol", nondet_tol)):
        if not (isinstance(value, (int, float)) and value >= 0 and np.isfinite(value)):
            raise ValueError(f"{name}: expected a finite number >= 0 but got {value!r}")
    if not eps > 0:
        raise ValueError(f"eps: expected a step > 0 but got {eps!r}")
    if isinstance(n_proj, bool) or not isinstance(n_proj, int) or n_proj < 1:
        raise ValueError(f"n_proj: expected an int >= 1 but got {n_proj!r}")
    inputs = {k: (v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v)
              for k, v in inputs.items()}
    outs = _outputs(case, inputs)
    _, cache = case.forward(inputs)
    n_out = sum(o.size for o in outs.values())
    tol = f"fd eps={eps:g}: {atol:g}+{rtol:g}|num|"
    rows = []
    for n, o in outs.items():
        if np.isnan(o).any():  # the forward itself is broken: no derivative to check
            idx = tuple(int(i) for i in np.argwhere(np.isnan(o))[0])
            return [Row(case=case.name, backend="gradcheck", dtype="float64", tensor=name,
                        shape=tuple(inputs[name].shape), max_abs=float("inf"),
                        max_rel=float("inf"), tolerance=tol, fraction=float("inf"),
                        passed=False, note=f"forward output {n} is NaN at index {idx}")
                    for name in case.grad_wrt]
    for name in case.grad_wrt:
        x = inputs[name]
        repeat = _nondeterminism_row(case, name, outs, cache, rng, nondet_tol, tol)
        if repeat is not None:
            rows.append(repeat)
            continue
        full = mode == "full" or (mode == "auto" and x.size <= full_max and n_out <= full_max)
        if full:
            num, ana, labels = _full_jacobian(case, inputs, name, outs, cache, eps)
        else:
            num, ana, labels = _projections(case, inputs, name, outs, cache, eps, n_proj, rng)
        err = np.abs(ana - num)
        used = err / (atol + rtol * np.abs(num))
        base = dict(case=case.name, backend="gradcheck", dtype="float64", tensor=name,
                    shape=tuple(x.shape), tolerance=tol)
        if not np.all(np.isfinite(ana)) or not np.all(np.isfinite(num)):
            k = int(np.flatnonzero(~(np.isfinite(ana) & np.isfinite(num)))[0])
            rows.append(Row(**base, max_abs=float("inf"), max_rel=float("inf"),
                            fraction=float("inf"), passed=False, ref_value=float(num.flat[k]),
                            got_value=float(ana.flat[k]), note=f"non-finite at {labels(k)}"))
            continue
        k = int(np.argmax(used)) if used.size else 0
        scale = float(np.abs(num).max()) if num.size else 0.0
        rows.append(Row(
            **base, max_abs=float(err.max()) if err.size else 0.0,
            max_rel=float(err.max() / scale) if scale > 0 else 0.0,
            fraction=float(used.flat[k]) if used.size else 0.0,
            passed=bool(np.all(used <= 1.0)),
            ref_value=float(num.flat[k]) if num.size else None,
            got_value=float(ana.flat[k]) if ana.size else None,
            note=(f"{'full Jacobian' if full else f'{n_proj} random projections'}; "
                  f"worst: {labels(k)} (numeric = reference, analytic = got)") if num.size
            else "empty"))
    return rows


def _nondeterminism_row(case, name, outs, cache, rng, nondet_tol, tol) -> Row | None:
    """A failing row when two backward calls with one upstream gradient differ by more than
    ``nondet_tol`` (None when they agree)."""
    u = {n: np.where(np.isinf(o), 0.0, rng.standard_normal(o.shape)) for n, o in outs.items()}
    first = np.array(case.backward(u, cache)[name], dtype=np.float64)
    second = np.array(case.backward(u, cache)[name], dtype=np.float64)
    if first.shape != second.shape:
        diff = float("inf")
    else:
        diff = float(np.max(np.abs(first - second))) if first.size else 0.0
    if diff <= nondet_tol:
        return None
    return Row(case=case.name, backend="gradcheck", dtype="float64", tensor=name,
               shape=tuple(first.shape), max_abs=diff, max_rel=float("inf"), tolerance=tol,
               fraction=float("inf"), passed=False,
               note=f"two backward calls with the same upstream gradient differ by {diff:.3e} "
                    f"> nondet_tol {nondet_tol:g} (a nondeterministic backward, or one that "
                    f"changes its cache)")


def _full_jacobian(case, inputs, name, outs, cache, eps):
    x = inputs[name]
    flat_outs = [(n, o.shape, o.size) for n, o in outs.items()]
    n_out = sum(s for _, _, s in flat_outs)
    numeric = np.zeros((n_out, x.size))
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = 1.0
        e = e.reshape(x.shape)
        plus = _outputs(case, _shifted(inputs, name, e, eps))
        minus = _outputs(case, _shifted(inputs, name, e, -eps))
        # Outputs infinite at the unperturbed point (lse = -inf of a fully masked row) carry no
        # gradient: their differences (-inf - -inf = NaN) are set to 0. A NaN elsewhere stays
        # and fails the check.
        with np.errstate(invalid="ignore"):
            diff = [np.where(np.isinf(outs[n]), 0.0, plus[n] - minus[n]).ravel()
                    for n, _, _ in flat_outs]
        numeric[:, k] = np.concatenate(diff) / (2 * eps)
    analytic = np.zeros_like(numeric)
    row = 0
    for n, shape, size in flat_outs:
        for j in range(size):
            douts = {m: np.zeros(s) for m, s, _ in flat_outs}
            douts[n].flat[j] = 1.0
            if np.isinf(outs[n].flat[j]):
                row += 1
                continue
            analytic[row] = np.asarray(case.backward(douts, cache)[name], np.float64).ravel()
            row += 1
    offsets = np.cumsum([0] + [s for _, _, s in flat_outs])

    def label(k: int) -> str:
        r, c = divmod(k, x.size)
        i = int(np.searchsorted(offsets, r, side="right") - 1)
        n, shape, _ = flat_outs[i]
        oi = tuple(int(v) for v in np.unravel_index(r - offsets[i], shape)) if shape else ()
        xi = tuple(int(v) for v in np.unravel_index(c, x.shape)) if x.shape else ()
        return f"d {n}{list(oi)} / d {name}{list(xi)}"

    return numeric, analytic, label


def _projections(case, inputs, name, outs, cache, eps, n_proj, rng):
    x = inputs[name]
    numeric, analytic = np.zeros(n_proj), np.zeros(n_proj)
    exempt = {n: np.isinf(o) for n, o in outs.items()}
    for p in range(n_proj):
        u = {n: np.where(exempt[n], 0.0, rng.standard_normal(o.shape)) for n, o in outs.items()}
        v = rng.standard_normal(x.shape)
        plus = _dot(_outputs(case, _shifted(inputs, name, v, eps)), u, exempt)
        minus = _dot(_outputs(case, _shifted(inputs, name, v, -eps)), u, exempt)
        numeric[p] = (plus - minus) / (2 * eps)
        analytic[p] = float(np.sum(np.asarray(case.backward(u, cache)[name], np.float64) * v))
    return numeric, analytic, lambda k: f"projection {k} of d <outputs, u> / d {name}"
