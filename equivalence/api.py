"""The public API: check your own op against torch, gradcheck your backward, compare two arrays.

    import numpy as np
    from equivalence import check

    def forward(x, a):                      # y = a * tanh(x)
        t = np.tanh(x)
        return a * t, (t, a)                # outputs, then what the backward needs (the cache)

    def backward(dy, cache):
        t, a = cache
        return dy * a * (1 - t * t), np.sum(dy * t, keepdims=True).reshape(a.shape)

    result = check(forward, backward, inputs={"x": np.linspace(-2, 2, 7), "a": np.ones(1)},
                   torch_fn=lambda x, a: a * x.tanh())
    result.raise_if_failed()                # or: print(result); result.passed

The functions are plain: ``forward(**inputs)`` returns the outputs (an array, a tuple of arrays
or a dict of arrays), optionally followed by a cache; ``backward(dout, cache)`` gets the upstream
gradient in the structure of the outputs (an array, a tuple or a dict) and returns the gradients
of the inputs in ``grad_wrt`` (an array for one, a tuple in ``grad_wrt`` order, or a dict);
``torch_fn(**tensors)`` returns the outputs in the forward's structure. The call is checked
against these rules first, and a function that breaks one gets an error naming the function and
what was expected. Then the same harness as ``crosscheck run`` runs: float64 against torch
autograd, finite differences of the backward, float32 against torch float64 within twice
torch's own float32 error (see ``equivalence.harness``).

A ``(outputs, cache)`` pair is told from several outputs by its second item: anything but an
ndarray is a cache. A forward whose cache *is* one ndarray says so with ``cache=True``.

``register(name, forward, backward, ...)`` takes the same arguments and adds the op to the
registry, so a file of such calls runs with ``crosscheck run --cases FILE``.
"""
from __future__ import annotations

import inspect
import io
import json
from dataclasses import dataclass, field

import numpy as np

from equivalence import compare as compare_mod
from equivalence import finite_differences, harness, registry, report
from equivalence.compare import Row
from equivalence.registry import Case

__all__ = ["check", "gradcheck", "assert_close", "assert_equivalent", "register", "Result"]

DTYPES = ("float64", "float32")


# ----------------------------------------------------------------------------- results

@dataclass
class Result:
    """Rows of one check (``equivalence.compare.Row``: case, backend, dtype, tensor, errors,
    tolerance, status), with the verdict and the report's text."""
    name: str
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every row passed: a failure or an unchecked row (no oracle) is not a pass."""
        return bool(self.rows) and all(r.status == "pass" for r in self.rows)

    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]

    def worst(self) -> Row | None:
        """The row that used most of its tolerance (a failing one first)."""
        return max(self.rows, key=lambda r: (r.status == "FAIL", r.fraction), default=None)

    def to_json(self) -> str:
        passed, failed, unchecked = report.totals(self.rows)
        return json.dumps(report.jsonable({
            "name": self.name, "passed": self.passed,
            "summary": {"passed": passed, "failed": failed, "unchecked": unchecked},
            "rows": self.rows}), indent=1)

    def __str__(self) -> str:
        from rich.console import Console
        console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
        report.print_report(self.rows, console)
        console.print(report.footer(self.rows), markup=False, highlight=False)
        return console.export_text().rstrip() + "\n"

    def raise_if_failed(self) -> "Result":
        """Raise AssertionError with the failure lines (or the unchecked rows) unless passed."""
        if self.passed:
            return self
        lines = [f"FAIL {r.describe()}" for r in self.failures()]
        if not lines:
            lines = [f"unchecked {r.case} [{r.backend}, {r.dtype}] {r.tensor}: {r.note}"
                     for r in self.rows if r.status == "unchecked"] or ["no rows: nothing ran"]
        raise AssertionError(f"{self.name}: {report.footer(self.rows)}\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- adapters

def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an ndarray {value.dtype}{value.shape}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(_describe(v) for v in value)})"
    return type(value).__name__


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch")


class _Structure:
    """How a user function's outputs are laid out: one array, a tuple, or a dict; names for the
    harness ("out", or "out0", "out1", ..., or the dict's keys)."""

    def __init__(self, kind: str, names: tuple[str, ...]):
        self.kind, self.names = kind, names

    @classmethod
    def of(cls, outputs, who: str) -> "_Structure":
        if _is_array(outputs):
            return cls("array", ("out",))
        if isinstance(outputs, (tuple, list)) and outputs and all(map(_is_array, outputs)):
            return cls("tuple", tuple(f"out{i}" for i in range(len(outputs))))
        if isinstance(outputs, dict) and outputs and all(map(_is_array, outputs.values())):
            return cls("dict", tuple(str(k) for k in outputs))
        raise TypeError(f"{who}: expected the outputs as an ndarray, a tuple of ndarrays or a "
                        f"dict of ndarrays but got {_describe(outputs)}")

    def to_dict(self, outputs, who: str) -> dict:
        """The outputs as {name: array}, checked against this structure."""
        got = _Structure.of(outputs, who)
        if (got.kind, got.names) != (self.kind, self.names):
            raise TypeError(f"{who}: expected outputs named {list(self.names)} ({self.kind}) "
                            f"but got {list(got.names)} ({got.kind})")
        if self.kind == "array":
            return {"out": outputs}
        if self.kind == "tuple":
            return dict(zip(self.names, outputs))
        return {str(k): v for k, v in outputs.items()}

    def from_dict(self, arrays: dict):
        """{name: array} back into the user's structure (for the upstream gradient)."""
        if self.kind == "array":
            return arrays["out"]
        if self.kind == "tuple":
            return tuple(arrays[n] for n in self.names)
        return {n: arrays[n] for n in self.names}


def _split(result, has_backward: bool, cache_mode, who: str):
    """(outputs, cache) from what a forward returned."""
    pair = isinstance(result, tuple) and len(result) == 2
    if cache_mode is True or (cache_mode == "auto" and has_backward and pair
                              and not _is_array(result[1])):
        if not pair:
            raise TypeError(f"{who}: expected (outputs, cache) with cache=True but got "
                            f"{_describe(result)}")
        return result[0], result[1]
    return result, None


def _grads_to_dict(grads, grad_wrt: tuple[str, ...], inputs: dict, who: str) -> dict:
    """The gradients a backward returned, as {input name: array}, every shape checked."""
    if _is_array(grads) and len(grad_wrt) == 1:
        out = {grad_wrt[0]: grads}
    elif isinstance(grads, (tuple, list)):
        if len(grads) != len(grad_wrt):
            raise TypeError(f"{who}: expected {len(grad_wrt)} gradients, for {list(grad_wrt)} in "
                            f"that order, but got {_describe(grads)}")
        out = dict(zip(grad_wrt, grads))
    elif isinstance(grads, dict):
        missing = [n for n in grad_wrt if n not in grads]
        if missing:
            raise TypeError(f"{who}: missing gradient for {missing}; expected a dict with the "
                            f"keys {list(grad_wrt)} but got {list(grads)}")
        out = {n: grads[n] for n in grad_wrt}
    else:
        raise TypeError(f"{who}: expected the gradients of {list(grad_wrt)} as "
                        f"{'an ndarray, ' if len(grad_wrt) == 1 else ''}a tuple or a dict but "
                        f"got {_describe(grads)}")
    for n, g in out.items():
        if g is None:
            raise TypeError(f"{who}: missing gradient for {n!r} (got None); leave {n!r} out of "
                            f"grad_wrt if it gets none")
        if np.shape(g) != np.shape(inputs[n]):
            raise ValueError(f"{who}: gradient for {n!r}: expected shape "
                             f"{tuple(np.shape(inputs[n]))} (the shape of {n}) but got "
                             f"{tuple(np.shape(g))}")
    return {n: np.asarray(g) for n, g in out.items()}


def _check_signature(fn, names, who: str) -> None:
    """Every input name must be an argument of ``fn`` (or fn takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [n for n in names if n not in params]
    if unknown:
        raise TypeError(f"{who}: inputs {unknown} are not arguments of "
                        f"{getattr(fn, '__name__', 'the function')}{inspect.signature(fn)}")


def _make_inputs(inputs, seed: int):
    """``inputs`` as a function of an rng (what a Case holds), and one draw of it."""
    make = inputs if callable(inputs) else (lambda rng: inputs)
    drawn = make(np.random.default_rng(seed))
    if not isinstance(drawn, dict) or not drawn:
        raise TypeError(f"inputs: expected a non-empty dict of arrays (or a function of an rng "
                        f"returning one) but got {_describe(drawn)}")
    for n, v in drawn.items():
        if not isinstance(v, np.ndarray):
            raise TypeError(f"inputs[{n!r}]: expected an ndarray but got {_describe(v)}")

    def as_float64(rng):
        return {n: (v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v)
                for n, v in make(rng).items()}
    return as_float64, drawn


def _pair_backend(forward, backward, structure, grad_wrt, cache_mode, who):
    """A kernel or baseline (forward, backward) pair as the harness's (inputs, douts) function."""
    def run(inputs, douts):
        outs, cache = _split(forward(**inputs), backward is not None, cache_mode, f"{who} forward")
        outs = {n: np.asarray(a) for n, a in
                structure.to_dict(outs, f"{who} forward").items()}
        if douts is None or backward is None:
            return outs, None
        grads = backward(structure.from_dict(douts), cache)
        return outs, _grads_to_dict(grads, grad_wrt, inputs, f"{who} backward")
    return run


def make_case(forward, backward=None, *, inputs, torch_fn=None, grad_wrt=None, name=None,
              dtypes=DTYPES, candidates=None, baseline=None, cache="auto", seed: int = 0,
              gradcheck: bool = True) -> Case:
    """The ``equivalence.registry.Case`` that ``check`` and ``register`` run, built from plain
    functions after checking them once on the float64 inputs (see the module docstring)."""
    who = getattr(forward, "__name__", "forward")
    name = name or who
    make, drawn = _make_inputs(inputs, seed)
    floats = tuple(n for n, v in drawn.items() if np.issubdtype(v.dtype, np.floating))
    grad_wrt = floats if grad_wrt is None and backward is not None else tuple(grad_wrt or ())
    unknown = [n for n in grad_wrt if n not in drawn]
    if unknown:
        raise ValueError(f"grad_wrt: {unknown} are not among the inputs {list(drawn)}")
    bad_dtypes = [d for d in dtypes if d not in DTYPES]
    if not dtypes or bad_dtypes:
        raise ValueError(f"dtypes: expected some of {list(DTYPES)} but got {list(dtypes)}")
    if cache not in ("auto", True, False):
        raise ValueError(f"cache: expected 'auto', True or False but got {cache!r}")
    _check_signature(forward, drawn, "forward")
    if torch_fn is not None:
        _check_signature(torch_fn, drawn, "torch_fn")

    # One float64 call of each function fixes the structure and catches misuse early.
    ins64 = make(np.random.default_rng(seed))
    outs, c = _split(forward(**ins64), backward is not None, cache, "forward")
    structure = _Structure.of(outs, "forward")
    structure.to_dict(outs, "forward")
    if backward is not None:
        douts = {n: np.ones_like(a) for n, a in structure.to_dict(outs, "forward").items()}
        _grads_to_dict(backward(structure.from_dict(douts), c), grad_wrt, ins64, "backward")

    def forward_dict(i):
        o, cache_ = _split(forward(**i), backward is not None, cache, "forward")
        return structure.to_dict(o, "forward"), cache_

    def backward_dict(d, cache_):
        if backward is None:
            return {}
        return _grads_to_dict(backward(structure.from_dict(d), cache_), grad_wrt, ins64,
                              "backward")

    def torch_dict(t):
        return structure.to_dict(torch_fn(**t), "torch_fn")

    backends = {}
    for backend, fns in (candidates or {}).items():
        if backend not in ("opencl", "cupy"):
            raise ValueError(f"candidates: expected keys among ['opencl', 'cupy'] but got "
                             f"{backend!r}")
        fwd, bwd = fns if isinstance(fns, tuple) else (fns, None)
        backends[backend] = _pair_backend(fwd, bwd, structure, grad_wrt, cache,
                                          f"candidates[{backend!r}]")
    if baseline is not None:
        fwd, bwd = baseline if isinstance(baseline, tuple) else (baseline, None)
        baseline = _pair_backend(fwd, bwd, structure, grad_wrt, cache, "baseline")
    return Case(name=name, inputs=make, forward=forward_dict, backward=backward_dict,
                grad_wrt=grad_wrt, torch=None if torch_fn is None else torch_dict,
                backends=backends, baseline32=baseline,
                gradcheck=bool(gradcheck) and backward is not None, dtypes=tuple(dtypes))


def _gradcheck_options(gradcheck) -> tuple[bool, dict]:
    if isinstance(gradcheck, bool):
        return gradcheck, {}
    if isinstance(gradcheck, dict):
        allowed = {"eps", "atol", "rtol", "mode", "n_proj", "nondet_tol"}
        unknown = sorted(set(gradcheck) - allowed)
        if unknown:
            raise ValueError(f"gradcheck: unknown options {unknown}; expected some of "
                             f"{sorted(allowed)}")
        return True, dict(gradcheck)
    raise TypeError(f"gradcheck: expected True, False or a dict of options but got "
                    f"{_describe(gradcheck)}")


# ----------------------------------------------------------------------------- entry points

def check(forward, backward=None, *, inputs, torch_fn=None, grad_wrt=None, dtypes=DTYPES,
          gradcheck=True, seed: int = 0, name=None, candidates=None, baseline=None,
          cache="auto", backends=None) -> Result:
    """Check a NumPy op (and optionally kernel candidates) against torch autograd.

    Args:
        forward: ``forward(**inputs)`` -> outputs, or (outputs, cache) when there is a backward.
        backward: ``backward(dout, cache)`` -> gradients of ``grad_wrt``; None: forward only.
        inputs: {name: ndarray} (floats are cast to each dtype), or a function of a
            numpy Generator returning one.
        torch_fn: the oracle, ``torch_fn(**tensors)`` -> outputs like the forward's. Without it
            the rows are "unchecked" and only the finite-difference rows can pass.
        grad_wrt: input names that get a gradient (default: every float input).
        dtypes: some of ("float64", "float32").
        gradcheck: True, False, or options for the finite differences: eps, atol, rtol,
            mode ("auto" | "full" | "projections"), n_proj, nondet_tol (torch's defaults).
        seed: draws the upstream gradients (and the inputs when ``inputs`` is a function).
        name: the name in the report (default: the forward's).
        candidates: {"opencl" | "cupy": forward or (forward, backward)} with the same
            signatures, e.g. launchers of your kernels.
        baseline: a plain float32 implementation, forward or (forward, backward), that sets the
            float32 bar instead of torch in float32.
        cache: "auto", True (the forward always returns (outputs, cache)) or False.
        backends: candidates to run (default: every one given that this machine has).

    Returns:
        Result: ``.passed``, ``.rows``, ``.worst()``, ``.to_json()``, ``str()`` (the report),
        ``.raise_if_failed()``.
    """
    run_fd, options = _gradcheck_options(gradcheck)
    case = make_case(forward, backward, inputs=inputs, torch_fn=torch_fn, grad_wrt=grad_wrt,
                     name=name, dtypes=dtypes, candidates=candidates, baseline=baseline,
                     cache=cache, seed=seed, gradcheck=run_fd)
    rows = []
    for dtype in case.dtypes:
        rows += harness.check_case(case, dtype=dtype, backends=backends, seed=seed,
                                   run_gradcheck=run_fd, gradcheck_options=options)
    return Result(case.name, rows)


def gradcheck(forward, backward, inputs, *, grad_wrt=None, eps=finite_differences.EPS,
              atol=finite_differences.ATOL, rtol=finite_differences.RTOL, mode="auto",
              n_proj=3, nondet_tol=0.0, seed: int = 0, name=None, cache="auto") -> Result:
    """Finite-difference check of a NumPy backward alone (no torch), in float64.

    With torch.autograd.gradcheck's defaults (eps 1e-6, atol 1e-5, rtol 1e-3): the full
    Jacobian for small problems, ``n_proj`` random projections for large ones (``mode`` forces
    either), and two backward calls that must agree to ``nondet_tol``. A failing row names the
    worst Jacobian entry (``d out[i] / d x[j]``) with the numeric and analytic values.
    """
    case = make_case(forward, backward, inputs=inputs, grad_wrt=grad_wrt, name=name,
                     dtypes=("float64",), cache=cache, seed=seed)
    if not case.grad_wrt:
        raise ValueError("grad_wrt: no float input to differentiate")
    rows = finite_differences.gradcheck(
        case, case.inputs(np.random.default_rng(seed)), rng=harness.case_rng(case, seed + 2),
        eps=eps, atol=atol, rtol=rtol, mode=mode, n_proj=n_proj, nondet_tol=nondet_tol)
    return Result(case.name, rows)


def assert_close(got, ref, *, dtype=None, baseline=None, name: str = "out") -> Row:
    """The tolerance policy as one call; raises AssertionError with the failure line.

    float64 (the default when ``got`` is float64): ``|got - ref| <= 1e-6 + 1e-6 |ref|``
    elementwise. Lower precision: ``max|got - ref| <= 2 max|baseline - ref| + 4 eps max|ref|``,
    ``baseline`` being a plain same-precision result (without one, the rounding floor alone).
    ``ref`` should be the float64 reference on the same rounded inputs.
    """
    got = np.asarray(got)
    ref = np.asarray(ref)
    dtype = np.dtype(dtype or got.dtype).name
    if dtype == "float64":
        row = compare_mod.compare(got, ref, case=name, backend="got", dtype=dtype, tensor=name)
    else:
        err = 0.0
        if baseline is not None:
            base = compare_mod.compare(baseline, ref, case=name, backend="baseline",
                                       dtype=dtype, tensor=name, bound=np.inf)
            if not base.passed:
                raise AssertionError(f"baseline: {base.describe()}")
            err = base.max_abs
        bound = compare_mod.float32_bound(err, ref, dtype)
        row = compare_mod.compare(got, ref, case=name, backend="got", dtype=dtype, tensor=name,
                                  bound=bound)
    if not row.passed:
        raise AssertionError(f"FAIL {row.describe()}")
    return row


def assert_equivalent(forward, backward=None, **kwargs) -> Result:
    """``check(...)`` that raises AssertionError with the report's failure lines unless it
    passed (the form for a test)."""
    return check(forward, backward, **kwargs).raise_if_failed()


def register(name: str, forward, backward=None, **kwargs) -> Case:
    """Add an op to the registry under ``name`` (arguments as :func:`check`, without
    ``backends``), so that ``crosscheck run --cases FILE`` checks it with the built-in ones."""
    gradcheck_ = kwargs.pop("gradcheck", True)
    run_fd, options = _gradcheck_options(gradcheck_)
    if options:
        raise ValueError("gradcheck: options are not kept in the registry; use check(...) to "
                         "pass them, or gradcheck=True / False here")
    return registry.register(make_case(forward, backward, name=name, gradcheck=run_fd,
                                       **kwargs))
