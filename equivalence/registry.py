"""The case registry: one :class:`Case` per (op, variant, shape) that the harness checks.

A case says how to make inputs, how to run the NumPy reference (forward and backward), the torch
oracle, and optionally the kernel backends. Cases live in ``equivalence/cases/<component>.py``;
each module calls :func:`register` at import time, and :func:`all_cases` imports every module in
that package, so adding a component is adding one file.

Example (the whole registration of an op)::

    register(Case(
        name="rmsnorm/(3, 5, 97)",
        inputs=lambda rng: {"x": rng.standard_normal((3, 5, 97)),
                            "weight": rng.standard_normal(97)},
        forward=lambda i: single(norms.rmsnorm_forward(i["x"], i["weight"])),
        backward=lambda d, c: dict(zip(("x", "weight"), norms.rmsnorm_backward(d["out"], c))),
        torch=lambda t: {"out": oracles.rmsnorm(t["x"], t["weight"])},
        grad_wrt=("x", "weight"),
    ))

Write the forward/backward lambdas against the *module* (``norms.rmsnorm_backward``), not a
name imported from it, so that a test can monkeypatch an op and see the harness catch it.
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

Arrays = dict[str, np.ndarray]
# A kernel backend runs forward and backward in one call: (inputs, douts) -> (outputs, grads).
# ``douts`` is None when only the forward is wanted.
BackendFn = Callable[[Arrays, "Arrays | None"], "tuple[Arrays, Arrays | None]"]


@dataclass(frozen=True)
class Case:
    name: str                                       # unique, "component/variant/shape"
    inputs: Callable[[np.random.Generator], Arrays]  # float64 (and int/bool) arrays; cast per run
    forward: Callable[[Arrays], tuple[Arrays, Any]]  # NumPy: inputs -> (outputs, cache)
    backward: Callable[[Arrays, Any], Arrays]        # NumPy: (douts, cache) -> grads by input name
    grad_wrt: tuple[str, ...]                        # inputs that receive a gradient
    torch: Callable[[dict], dict] | None = None      # oracle: tensors -> output tensors (autograd)
    dout_for: tuple[str, ...] | None = None          # outputs given an upstream grad (None = all)
    backends: Mapping[str, BackendFn] = field(default_factory=dict)  # "opencl", "cupy"
    baseline32: BackendFn | None = None  # plain float32 implementation (default: torch float32)
    gradcheck: bool = True                           # finite differences on the NumPy backward
    dtypes: tuple[str, ...] = ("float64", "float32")

    @property
    def component(self) -> str:
        return self.name.split("/", 1)[0]


_CASES: dict[str, Case] = {}
_LOADED = False


def register(case: Case) -> Case:
    """Add a case; names must be unique."""
    if case.name in _CASES:
        raise ValueError(f"case {case.name!r} is registered twice")
    _CASES[case.name] = case
    return case


def single(result: tuple[np.ndarray, Any], name: str = "out") -> tuple[Arrays, Any]:
    """Adapt ``(out, cache)`` from an op to ``({name: out}, cache)`` for :attr:`Case.forward`."""
    out, cache = result
    return {name: out}, cache


def all_cases(pattern: str | None = None) -> list[Case]:
    """Every registered case (importing ``equivalence.cases.*`` once), filtered by a glob or
    substring ``pattern`` on the name."""
    global _LOADED
    if not _LOADED:
        from equivalence import cases
        for mod in sorted(pkgutil.iter_modules(cases.__path__), key=lambda m: m.name):
            importlib.import_module(f"{cases.__name__}.{mod.name}")
        _LOADED = True
    return select(list(_CASES.values()), pattern)


def select(cases: list[Case], pattern: str | None) -> list[Case]:
    """The cases whose name matches ``pattern``: a glob if it has ``*?[``, else a substring."""
    if not pattern:
        return cases
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    return [c for c in cases if fnmatch.fnmatchcase(c.name, glob)]


def load_case_file(source: str) -> list[Case]:
    """Import a user's file (``my_cases.py``) or module (``pkg.my_cases``) that registers cases,
    and return the cases it registered, in order.

    The built-in cases are loaded first, so that only the file's own cases are returned (and a
    name that collides with a built-in one is an error). A file that registers nothing is an
    error too: ``crosscheck run --cases FILE`` would otherwise check nothing. The registry is
    left as it was: the file's cases are returned, not kept, so loading a file twice works.
    """
    all_cases()
    before = set(_CASES)
    try:
        _import_source(source)
        new = [c for n, c in _CASES.items() if n not in before]
    finally:  # whatever the file did, the registry keeps only the built-in cases
        for name in set(_CASES) - before:
            del _CASES[name]
    if not new:
        raise ValueError(f"--cases: {source!r} registered no case; call "
                         f"equivalence.register(...) (or registry.register(Case(...))) in it")
    return new


def _import_source(source: str) -> None:
    """Import a file path (``*.py`` or an existing file) or else a dotted module name."""
    path = Path(source)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--cases: no such file {source!r}")
        name = f"crosscheck_user_cases_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    elif source in sys.modules:  # imported before: run it again so that it registers again
        importlib.reload(sys.modules[source])
    else:
        importlib.import_module(source)
