"""Check one case: run the reference and every candidate, compare forward and every gradient.

``check_case`` is the single entry point used by the CLI, the tests and the benchmarks.

float64
    reference = the torch oracle under autograd (``torch_bridge.autograd.run_autograd``); each
    candidate (numpy, opencl, cupy) is compared with it at 1e-6 + 1e-6|ref| elementwise, and the
    NumPy backward is also checked by finite differences (``equivalence.gradcheck``).
float32
    reference = the NumPy float64 result on the *same rounded inputs and upstream gradients*; the
    bar for each tensor is
    2 x the error of the case's plain float32 baseline (default: the torch oracle in float32) plus
    a rounding floor (``equivalence.compare.float32_bound``).

A candidate that raises produces a failing row carrying the exception text; it never stops the
run. Inputs are drawn from ``seed`` and the case name, so a row is reproducible on its own.
"""
from __future__ import annotations

import zlib

import numpy as np

from equivalence import backends as backend_mod
from equivalence.compare import Row, compare, float32_bound
from equivalence.gradcheck import gradcheck
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


def check_case(case: Case, dtype: str = "float64", backends=None, seed: int = 0,
               run_gradcheck: bool = True) -> list[Row]:
    """Compare every selected candidate of ``case`` with the reference; return report rows.

    ``backends``: names among ``numpy``, ``opencl``, ``cupy`` (None = every one this case has and
    this machine can run). A kernel backend that is not available here is skipped silently; the
    CLI reports availability once.
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
    rows: list[Row] = []
    rng = case_rng(case, seed + 1)
    inputs = make_inputs(case, seed, dtype)
    inputs64 = _upcast(inputs)
    try:
        ref_outs, ref_cache = case.forward(inputs64)
    except Exception as exc:  # the reference itself failed: nothing else is meaningful
        return [_error_row(case, "numpy", "float64", exc)]
    # Upstream gradients are rounded to the run dtype first, so that the float64 reference sees
    # exactly the values the low-precision candidates see.
    douts = _make_douts(case, ref_outs, rng, dtype)
    douts64 = _upcast(douts)

    def run(backend: str, ins: dict, ds: dict):
        if backend == "numpy":
            return _run_numpy(case, ins, ds)
        if backend == "torch":
            return _run_torch(case, ins, ds)
        return case.backends[backend](ins, ds)

    if dtype == "float64":
        use_torch = case.torch is not None and backend_mod.available("torch")[0]
        ref_name = "torch" if use_torch else "numpy"
        try:
            ref = _tensors(*run(ref_name, inputs64, douts64), case)
        except Exception as exc:
            return [_error_row(case, ref_name, dtype, exc)]
        if not use_torch and "numpy" in candidates:
            # Nothing independent to compare with: at least every value must be finite.
            for name, r in ref.items():
                row = compare(r, r, case=case.name, backend="numpy", dtype=dtype, tensor=name)
                row.note = row.note or "no torch oracle: finiteness only"
                rows.append(row)
        for b in candidates:
            if b == ref_name:
                continue
            rows += _compare_all(case, b, dtype, run, inputs, douts, ref, bounds=None,
                                 note="" if use_torch else "no torch oracle: against numpy")
        if run_gradcheck and case.gradcheck and "numpy" in wanted:
            try:
                rows += gradcheck(case, inputs64, rng=case_rng(case, seed + 2))
            except Exception as exc:
                rows.append(_error_row(case, "gradcheck", "float64", exc))
        return rows

    # Low precision: float64 NumPy on the same rounded inputs is the reference.
    try:
        ref = _tensors(*_run_numpy(case, inputs64, douts64), case)
    except Exception as exc:
        return [_error_row(case, "numpy", "float64", exc)]
    base_name = "baseline" if case.baseline32 is not None else "torch"
    try:
        if case.baseline32 is not None:
            base = _tensors(*case.baseline32(inputs, douts), case)
        elif case.torch is not None and backend_mod.available("torch")[0]:
            base = _tensors(*_run_torch(case, inputs, douts), case)
        else:
            base = None
    except Exception as exc:
        return [_error_row(case, base_name, dtype, exc)]
    bounds = {}
    for name, r in ref.items():
        if base is None:
            bounds[name] = float32_bound(0.0, r, dtype)
            continue
        if base.get(name) is None:
            bounds[name] = float32_bound(0.0, r, dtype)
            rows.append(Row(case=case.name, backend=base_name, dtype=dtype, tensor=name,
                            shape=tuple(np.shape(r)), max_abs=float("inf"), max_rel=float("inf"),
                            tolerance="-", fraction=float("inf"), passed=False,
                            note="missing from the baseline's results; bar is the rounding floor"))
            continue
        b_row = compare(base[name], r, case=case.name, backend=base_name, dtype=dtype,
                        tensor=name, bound=np.inf)
        if b_row.passed:  # a finite baseline error defines the bar
            bounds[name] = float32_bound(b_row.max_abs, r, dtype)
            b_row.tolerance, b_row.fraction, b_row.note = "baseline", 0.0, "defines the bar"
        else:  # a broken baseline must not widen the bar: keep the rounding floor alone
            bounds[name] = float32_bound(0.0, r, dtype)
            b_row.note = f"baseline failed ({b_row.note}); bar is the rounding floor"
        rows.append(b_row)
    for b in candidates:
        rows += _compare_all(case, b, dtype, run, inputs, douts, ref, bounds=bounds,
                             note="" if base is not None else "no baseline: rounding floor only")
    return rows


def _compare_all(case, backend, dtype, run, inputs, douts, ref, *, bounds, note):
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
        if note and not row.note:
            row.note = note
        rows.append(row)
    return rows
