"""Check one case: run the reference and every candidate, compare forward and every gradient.

``check_case`` is the single entry point used by the CLI, the tests and the benchmarks.

The reference is always the torch oracle under autograd in float64
(``torch_bridge.autograd.run_autograd``), on the case's inputs and upstream gradients rounded
to the run's dtype, so every passing row was compared with a result this project did not
compute.

float64
    each candidate (numpy, opencl, cupy) is compared with the reference at 1e-6 + 1e-6|ref|
    elementwise, and the NumPy backward is also checked by finite differences
    (``equivalence.finite_differences``).
float32
    the bar for each tensor is 2 x the error of the case's plain float32 baseline (default: the
    torch oracle in float32) plus a rounding floor (``equivalence.compare.float32_bound``). The
    baseline is a row of its own; an error that rounding cannot explain
    (``equivalence.compare.baseline_limit``) fails it and does not widen the bar.

A case without a torch oracle has no independent reference: its rows are ``unchecked`` (the
NumPy float64 result stands in as the reference, so a kernel that disagrees with it, or a
non-finite value, still fails), and only the finite-difference gradcheck rows can pass.

A candidate that raises produces a failing row carrying the exception text; it never stops the
run. Inputs are drawn from ``seed`` and the case name, so a row is reproducible on its own.
"""
from __future__ import annotations

import zlib

import numpy as np

from equivalence import backends as backend_mod
from equivalence.compare import SANITY_EPS, Row, baseline_limit, compare, float32_bound
from equivalence.finite_differences import gradcheck
from equivalence.registry import Case

CANDIDATES = ("numpy", "opencl", "cupy")


def case_rng(case: Case, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case.name.encode())])


def make_inputs(case: Case, seed: int, dtype: str) -> dict[str, np.ndarray]:
    """The case's inputs with every float input rounded to ``dtype`` (ids and masks unchanged)."""
    raw = case.inputs(case_rng(case, seed))
    return {k: (v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v)
            for k, v in raw.items()}


def _upcast(arrays: dict) -> dict:
    return {k: (v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v)
            for k, v in arrays.items()}


def _run_numpy(case: Case, inputs: dict, douts: dict | None):
    outs, cache = case.forward(inputs)
    grads = case.backward(douts, cache) if douts is not None else None
    return outs, grads


def _run_torch(case: Case, inputs: dict, douts: dict | None):
    from torch_bridge.autograd import run_autograd
    return run_autograd(case.torch, inputs, case.grad_wrt, douts)


def _make_douts(case: Case, outs: dict, rng: np.random.Generator, dtype: str) -> dict:
    names = case.dout_for or tuple(outs)
    return {n: rng.standard_normal(np.shape(outs[n])).astype(dtype) for n in names}


def _tensors(outs: dict, grads: dict | None, case: Case) -> dict[str, np.ndarray]:
    """Flatten outputs and gradients into one name -> array map (``grad x`` for dL/dx)."""
    named = {f"{n}": np.asarray(v) for n, v in outs.items()}
    for n in case.grad_wrt:
        named[f"grad {n}"] = np.asarray(grads[n]) if grads is not None and n in grads else None
    return named


def _error_row(case: Case, backend: str, dtype: str, exc: BaseException) -> Row:
    return Row(case=case.name, backend=backend, dtype=dtype, tensor="(run)", shape=(),
               max_abs=float("inf"), max_rel=float("inf"), tolerance="-", fraction=float("inf"),
               passed=False, note=f"{type(exc).__name__}: {exc}")


def _unchecked(rows: list[Row]) -> list[Row]:
    """Mark rows compared with no independent result: a passing one becomes ``unchecked``."""
    for row in rows:
        if row.passed:
            row.passed, row.unchecked = False, True
            row.note = "unchecked: no oracle" + (f"; {row.note}" if row.note else "")
    return rows


def check_case(case: Case, dtype: str = "float64", backends=None, seed: int = 0,
               run_gradcheck: bool = True, gradcheck_options: dict | None = None) -> list[Row]:
    """Compare every selected candidate of ``case`` with the reference; return report rows.

    ``gradcheck_options``: keyword arguments of ``equivalence.finite_differences.gradcheck``
    (eps, atol, rtol, mode, n_proj, nondet_tol).

    ``backends``: names among ``numpy``, ``opencl``, ``cupy`` (None = every one this case has and
    this machine can run). A kernel backend that this case lacks or this machine cannot run
    gives no rows here; the CLI turns a requested backend that is unavailable, or a run without
    a single check, into an error.
    """
    if dtype not in case.dtypes:
        return []
    wanted = CANDIDATES if backends is None else tuple(backends)
    unknown = set(wanted) - set(CANDIDATES) - {"torch"}
    if unknown:
        raise ValueError(f"backends: unknown {sorted(unknown)}; expected names among "
                         f"{list(CANDIDATES)}")
    kernel = [b for b in ("opencl", "cupy")
              if b in wanted and b in case.backends and backend_mod.available(b)[0]]
    candidates = (["numpy"] if "numpy" in wanted else []) + kernel
    if not candidates:  # e.g. --backend opencl on a case that has no kernel
        return []
    rng = case_rng(case, seed + 1)
    inputs = make_inputs(case, seed, dtype)
    inputs64 = _upcast(inputs)
    try:
        np_outs, _ = case.forward(inputs64)
    except Exception as exc:  # the NumPy forward failed: its outputs shape the upstream grads
        return [_error_row(case, "numpy", "float64", exc)]
    # Upstream gradients are rounded to the run dtype first, so that the float64 reference sees
    # exactly the values the low-precision candidates see.
    douts = _make_douts(case, np_outs, rng, dtype)
    douts64 = _upcast(douts)

    def run(backend: str, ins: dict, ds: dict):
        if backend == "numpy":
            return _run_numpy(case, ins, ds)
        if backend == "torch":
            return _run_torch(case, ins, ds)
        return case.backends[backend](ins, ds)

    oracle = case.torch is not None and backend_mod.available("torch")[0]
    ref_name = "torch" if oracle else "numpy"
    try:
        ref = _tensors(*run(ref_name, inputs64, douts64), case)
    except Exception as exc:
        return [_error_row(case, ref_name, "float64", exc)]

    rows: list[Row] = []
    if dtype == "float64":
        if not oracle and "numpy" in candidates:
            # The NumPy result is the stand-in reference: all that can be said is that it is
            # finite.
            for name, r in ref.items():
                rows += _unchecked([compare(r, r, case=case.name, backend="numpy", dtype=dtype,
                                            tensor=name, tolerance="finite")])
        for b in candidates:
            if b == ref_name:
                continue
            got = _compare_all(case, b, dtype, run, inputs, douts, ref, bounds=None)
            rows += got if oracle else _unchecked(got)
        if run_gradcheck and case.gradcheck and "numpy" in wanted:
            try:
                rows += gradcheck(case, inputs64, rng=case_rng(case, seed + 2),
                                  **(gradcheck_options or {}))
            except Exception as exc:
                rows.append(_error_row(case, "gradcheck", "float64", exc))
        return rows

    # Low precision: the bar is twice a plain same-precision implementation's error.
    base_rows, bounds = _baseline(case, dtype, inputs, douts, ref, operands=[
        *inputs64.values(), *douts64.values()])
    rows += base_rows
    for b in candidates:
        got = _compare_all(case, b, dtype, run, inputs, douts, ref, bounds=bounds)
        rows += got if oracle else _unchecked(got)
    return rows


def _baseline(case: Case, dtype: str, inputs: dict, douts: dict, ref: dict, operands: list,
              ) -> tuple[list[Row], dict[str, float]]:
    """The baseline's rows and the bar it sets for each tensor.

    The baseline is ``case.baseline32`` or else the torch oracle run in ``dtype``. Its row passes
    when its error is one that rounding explains (``baseline_limit``); only then does it widen
    the bar beyond the rounding floor.
    """
    name = "baseline" if case.baseline32 is not None else "torch"
    floor = {n: float32_bound(0.0, r, dtype) for n, r in ref.items()}
    try:
        if case.baseline32 is not None:
            base = _tensors(*case.baseline32(inputs, douts), case)
        elif case.torch is not None and backend_mod.available("torch")[0]:
            base = _tensors(*_run_torch(case, inputs, douts), case)
        else:
            return [], floor
    except Exception as exc:
        return [_error_row(case, name, dtype, exc)], floor
    rows, bounds = [], dict(floor)
    for n, r in ref.items():
        if base.get(n) is None:
            rows.append(Row(case=case.name, backend=name, dtype=dtype, tensor=n,
                            shape=tuple(np.shape(r)), max_abs=float("inf"), max_rel=float("inf"),
                            tolerance="-", fraction=float("inf"), passed=False,
                            note="missing from the baseline's results; bar is the rounding floor"))
            continue
        limit = baseline_limit(r, operands, dtype)
        row = compare(base[n], r, case=case.name, backend=name, dtype=dtype, tensor=n,
                      bound=limit)
        if row.passed:  # an error that rounding explains defines the bar
            bounds[n] = float32_bound(row.max_abs, r, dtype)
            row.note = f"defines the bar {bounds[n]:.2e}"
        else:  # a broken baseline must not widen the bar: keep the rounding floor alone
            row.note = (f"baseline error beyond {SANITY_EPS} eps x max|ref, inputs, douts|"
                        f"{'; ' + row.note if row.note else ''}; bar is the rounding floor")
        rows.append(row)
    return rows, bounds


def _compare_all(case, backend, dtype, run, inputs, douts, ref, *, bounds):
    try:
        got = _tensors(*run(backend, inputs, douts), case)
    except Exception as exc:
        return [_error_row(case, backend, dtype, exc)]
    rows = []
    for name, r in ref.items():
        g = got.get(name)
        if g is None:
            rows.append(Row(case=case.name, backend=backend, dtype=dtype, tensor=name,
                            shape=tuple(np.shape(r)), max_abs=float("inf"), max_rel=float("inf"),
                            tolerance="-", fraction=float("inf"), passed=False,
                            note="missing from the candidate's results"))
            continue
        if g.dtype != np.dtype(dtype) and np.issubdtype(g.dtype, np.floating):
            rows.append(Row(case=case.name, backend=backend, dtype=dtype, tensor=name,
                            shape=tuple(np.shape(r)), max_abs=float("inf"), max_rel=float("inf"),
                            tolerance="-", fraction=float("inf"), passed=False,
                            note=f"dtype not preserved: expected {dtype} but got {g.dtype}"))
            continue
        if bounds is None:
            row = compare(g, r, case=case.name, backend=backend, dtype=dtype, tensor=name)
        else:
            row = compare(g, r, case=case.name, backend=backend, dtype=dtype, tensor=name,
                          bound=bounds[name])
        rows.append(row)
    return rows


def tolerance_policy() -> dict:
    """The tolerances of every row kind, as numbers and as the rule they enter, for reports."""
    from equivalence import compare as c
    from equivalence import finite_differences as g
    return {
        "float64": {"atol": c.ATOL64, "rtol": c.RTOL64,
                    "rule": "|got - ref| <= atol + rtol |ref| elementwise; ref = torch autograd "
                            "in float64"},
        "low_precision": {
            "baseline_factor": 2.0, "floor_eps": c.FLOOR_EPS, "sanity_eps": c.SANITY_EPS,
            "eps": {d: float(np.finfo(d).eps) for d in ("float32",)},
            "rule": "max|got - ref| <= baseline_factor x max|baseline - ref| + floor_eps x eps "
                    "x max|ref|; ref = torch autograd in float64 on the same rounded inputs; "
                    "the baseline row fails (and the bar is the floor alone) when its error "
                    "exceeds sanity_eps x eps x max(|ref|, |inputs|, |douts|)"},
        "gradcheck": {"eps": g.EPS, "atol": g.ATOL, "rtol": g.RTOL, "full_jacobian_max": g.FULL_MAX,
                      "rule": "|analytic - numeric| <= atol + rtol |numeric|, central "
                              "differences of the float64 NumPy forward"},
        "unchecked": "a row with no torch oracle to compare with; never counts as passed; fails "
                     "when non-finite or when a kernel disagrees with the NumPy result",
    }
