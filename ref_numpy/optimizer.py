"""What every optimizer shares: parameter groups, argument checks, the step loop and its state.

Parameters are NumPy arrays updated in place, as torch updates its parameters in place. An
optimizer holds them in ``param_groups``, a list of dicts in torch's layout
(``{"params": [arrays], "lr": ..., "weight_decay": ..., ...}``); a group may carry its own
values of any hyper-parameter (the usual split: :func:`decay_groups`), and a schedule changes
``group["lr"]`` between steps.

``step(grads)`` takes one gradient per parameter, in the order of :attr:`Optimizer.params` (or a
dict by name when every group names its parameters), ``None`` for a parameter that has none this
step (it is skipped and its step count stays, as torch skips ``grad is None``). Every gradient and
every hyper-parameter is checked before any array changes, so bad input leaves the parameters
and the state untouched.

The update runs block by block (:data:`BLOCK` elements of each contiguous array at a time), so
that the handful of passes one update makes over its arrays stay in cache; every operation is
elementwise, so the result is identical to the update of the whole array at once.

State as data (:meth:`Optimizer.state_arrays`): a flat dict of NumPy arrays (no objects) with the
optimizer's kind, each group's size, hyper-parameters and parameter names, and each parameter's
value, step count and buffers. :mod:`ref_numpy.checkpoint` writes it to ``.npz``; loading checks
the whole file against this optimizer before it changes anything.
"""
from __future__ import annotations

import math

import numpy as np

from ref_numpy._check import FLOAT_DTYPES

BLOCK = 32768                 # elements per block of one update (x 4 bytes x ~6 arrays: in L2)
FORMAT = 1                    # version of the state layout


# ----------------------------------------------------------------------------- argument checks

def check_number(name: str, value, *, low: float = 0.0, high: float | None = None,
                 high_open: bool = True) -> float:
    """Require a finite real number in [low, high) (or [low, high]); return it as a float.

    >>> check_number("lr", 1e-3)
    0.001
    >>> check_number("lr", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: lr: expected a finite number >= 0 but got nan
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if high is None:
        want = f"a finite number >= {low:g}"
    else:
        want = f"a number in [{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected {want} but got {type(value).__name__} ({value!r})")
    value = float(value)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or value < low or above:
        raise ValueError(f"{name}: expected {want} but got {value!r}")
    return value


def check_real(name: str, value) -> float:
    """Require a finite real number of any sign (SGD's dampening)."""
    return check_number(name, value, low=-math.inf)


def check_flag(name: str, value) -> bool:
    """Require a bool (numpy's included)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False but got {type(value).__name__} "
                        f"({value!r})")
    return bool(value)


def check_betas(name: str, value) -> tuple[float, float]:
    """Require two numbers in [0, 1), as torch's Adam does."""
    if isinstance(value, np.ndarray):
        value = tuple(value.tolist())
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name}: expected two numbers (beta1, beta2) but got {value!r}")
    return tuple(check_number(f"{name}[{i}]", b, high=1.0) for i, b in enumerate(value))


def _check_param(name: str, p) -> np.ndarray:
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray but got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64 but got {p.dtype}")
    if not p.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (it is updated in place)")
    return p


def decay_groups(named_params: dict[str, np.ndarray], weight_decay: float, *,
                 no_decay: tuple[str, ...] = ("bias", "norm", "embed", "wte", "wpe"),
                 ) -> list[dict]:
    """Two parameter groups: weight matrices decay; biases, norm gains and embeddings do not.

    A parameter is left undecayed when it has fewer than 2 dimensions (biases, RMSNorm and
    LayerNorm weights) or when its name contains one of ``no_decay`` (case-insensitive), the
    split of GPT-2-style training recipes. Each group carries ``param_names``.

    >>> groups = decay_groups({"h.w": np.ones((2, 3)), "h.b": np.ones(3),
    ...                        "embed.w": np.ones((5, 2))}, 0.1)
    >>> [(g["param_names"], g["weight_decay"]) for g in groups]
    [(['h.w'], 0.1), (['h.b', 'embed.w'], 0.0)]
    """
    weight_decay = check_number("weight_decay", weight_decay)
    names = ([], [])
    for name, p in named_params.items():
        _check_param(f"named_params[{name!r}]", p)
        undecayed = p.ndim < 2 or any(s in name.lower() for s in no_decay)
        names[undecayed].append(name)
    return [{"params": [named_params[n] for n in ns], "param_names": ns, "weight_decay": wd}
            for ns, wd in zip(names, (weight_decay, 0.0))]


# ----------------------------------------------------------------------------- the base class

class Optimizer:
    """Parameter groups, checks, the block-wise step loop and the state of one optimizer.

    A subclass sets ``checks`` (hyper-parameter name -> check function), ``buffers(group)``
    (the names of the per-parameter state arrays), ``coefficients(group, step)`` (the scalars of
    one step) and ``update(p, g, buffers, c, created, scratch)``, the update rule of one block;
    ``created`` names the buffers made (as zeros) for this step, at a parameter's first update,
    as torch makes its state lazily.
    """
    checks: dict = {}
    n_scratch = 2

    def __init__(self, params, defaults: dict):
        groups, self._as_dicts = _as_groups(params)
        self.defaults = {k: self.checks[k](k, v) for k, v in defaults.items()}
        self.param_groups: list[dict] = []
        seen: dict[int, str] = {}
        for gi, given in enumerate(groups):
            label = f"param_groups[{gi}]" if self._as_dicts else "params"
            unknown = set(given) - {"params", "param_names"} - set(self.checks)
            if unknown:
                raise ValueError(f"{label}: unknown key {sorted(unknown)[0]!r}; expected keys "
                                 f"among {['params', 'param_names', *self.checks]}")
            group = {**self.defaults, **{k: v for k, v in given.items() if k != "params"}}
            group["params"] = list(given["params"])
            for i, p in enumerate(group["params"]):
                where = f"{label}['params'][{i}]" if self._as_dicts else f"params[{i}]"
                _check_param(where, p)
                if id(p) in seen:
                    raise ValueError(f"{where}: the same array as {seen[id(p)]}; a parameter "
                                     f"may appear only once")
                seen[id(p)] = where
            self._check_group(group, self._prefix(gi))
            self.param_groups.append(group)
        if not seen:
            raise ValueError("params: expected at least one parameter but got none")
        self.state: list[dict] = [{"step": 0} for _ in self.params]   # buffers come at step 1
        self._scratch: dict[np.dtype, list[np.ndarray]] = {}

    # --- what a subclass provides ---

    def buffers(self, group: dict) -> tuple[str, ...]:
        raise NotImplementedError

    def coefficients(self, group: dict, step: int) -> dict:
        raise NotImplementedError

    def update(self, p, g, buffers, c, created, scratch) -> None:
        raise NotImplementedError

    # --- parameters and their checks ---

    @property
    def params(self) -> list[np.ndarray]:
        """Every parameter, group after group: the order of ``step``'s gradients."""
        return [p for g in self.param_groups for p in g["params"]]

    def _prefix(self, gi: int) -> str:
        return f"param_groups[{gi}]." if self._as_dicts else ""

    def _check_group(self, group: dict, prefix: str) -> None:
        """Check (and normalise) every hyper-parameter of one group, in place; ``prefix`` names
        the group in messages (``"param_groups[1]."``, or nothing for a single group)."""
        for name, check in self.checks.items():
            group[name] = check(f"{prefix}{name}", group[name])
        names = group.get("param_names")
        if names is not None and (not isinstance(names, (list, tuple))
                                  or len(names) != len(group["params"])
                                  or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"{prefix}param_names: expected {len(group['params'])} strings, "
                             f"one per parameter, but got {names!r}")
        self._check_combination(group, prefix)

    def _check_combination(self, group: dict, prefix: str) -> None:
        """Constraints between hyper-parameters (a subclass may add some)."""

    def _check_grads(self, grads) -> list:
        params = self.params
        labels = [str(i) for i in range(len(params))]
        if isinstance(grads, dict):
            if any("param_names" not in g for g in self.param_groups):
                raise TypeError("grads: a dict needs every group to name its parameters "
                                "(param_names); pass a list in the order of .params instead")
            labels = [repr(n) for g in self.param_groups for n in g["param_names"]]
            unknown = set(grads) - {n for g in self.param_groups for n in g["param_names"]}
            if unknown:
                raise ValueError(f"grads: unknown parameter name {sorted(unknown)[0]!r}")
            grads = [grads.get(n) for g in self.param_groups for n in g["param_names"]]
        if not isinstance(grads, (list, tuple)) or len(grads) != len(params):
            got = len(grads) if isinstance(grads, (list, tuple)) else type(grads).__name__
            raise ValueError(f"grads: expected {len(params)} gradients (one per parameter, "
                             f"None for none) but got {got}")
        for i, p, g in zip(labels, params, grads):
            if g is None:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{i}]: expected a numpy.ndarray or None but got "
                                f"{type(g).__name__}")
            if g.shape != p.shape:
                raise ValueError(f"grads[{i}]: expected shape {p.shape} (the shape of "
                                 f"parameter {i}) but got {g.shape}")
            if g.dtype != p.dtype:
                raise TypeError(f"grads[{i}]: expected dtype {p.dtype} (the dtype of "
                                f"parameter {i}) but got {g.dtype}")
        return list(grads)

    # --- the step ---

    def step(self, grads) -> None:
        """One update of every parameter that has a gradient; checks everything first."""
        grads = self._check_grads(grads)
        for gi, group in enumerate(self.param_groups):
            self._check_group(group, self._prefix(gi))
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                g, state = grads[i], self.state[i]
                i += 1
                if g is None:
                    continue
                state["step"] += 1
                self._update_param(p, g, state, group)

    def _update_param(self, p, g, state, group) -> None:
        c = self.coefficients(group, state["step"])
        names = self.buffers(group)
        created = tuple(b for b in names if b not in state)
        for b in created:
            state[b] = np.zeros(p.shape, p.dtype)
        if not p.flags.c_contiguous:  # a strided view: one update of the whole array
            scratch = [np.empty(p.shape, p.dtype) for _ in range(self.n_scratch)]
            self.update(p, g, {b: state[b] for b in names}, c, created, scratch)
            return
        flat_p, flat_g = p.reshape(-1), g.reshape(-1)
        flat_b = {b: state[b].reshape(-1) for b in names}
        scratch = self._scratch.setdefault(
            p.dtype, [np.empty(BLOCK, p.dtype) for _ in range(self.n_scratch)])
        for lo in range(0, p.size, BLOCK):
            hi = min(lo + BLOCK, p.size)
            self.update(flat_p[lo:hi], flat_g[lo:hi], {b: v[lo:hi] for b, v in flat_b.items()},
                        c, created, [s[:hi - lo] for s in scratch])

    # --- state as data ---

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The whole state as a flat dict of arrays (copies): kind, groups, parameters."""
        out = {"kind": np.array(type(self).__name__), "format": np.array(FORMAT),
               "groups": np.array(len(self.param_groups))}
        for gi, group in enumerate(self.param_groups):
            out[f"group/{gi}/size"] = np.array(len(group["params"]))
            for name in self.checks:
                out[f"group/{gi}/{name}"] = np.array(group[name])
            if "param_names" in group:
                out[f"group/{gi}/param_names"] = np.array(group["param_names"], dtype=str)
        for i, (p, state) in enumerate(zip(self.params, self.state)):
            out[f"param/{i}/value"] = p.copy()
            out[f"param/{i}/step"] = np.array(state["step"], dtype=np.int64)
            for b, v in state.items():
                if b != "step":
                    out[f"param/{i}/{b}"] = v.copy()
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays`; a state that does not fit changes nothing."""
        self.prepare_load(arrays)()

    def prepare_load(self, arrays: dict[str, np.ndarray]):
        """Check ``arrays`` against this optimizer and return the function that applies them."""
        a = dict(arrays)
        seen = set()

        def get(key):
            if key not in a:
                raise ValueError(f"{key}: missing from the state")
            seen.add(key)
            return a[key]

        kind = get("kind")
        if kind.shape != () or kind.dtype.kind != "U" or str(kind) != type(self).__name__:
            got = repr(str(kind)) if kind.shape == () and kind.dtype.kind == "U" else repr(kind)
            raise ValueError(f"kind: expected {type(self).__name__!r} but got {got} "
                             f"(the state of another optimizer)")
        if _scalar_int(get("format"), "format") != FORMAT:
            raise ValueError(f"format: expected {FORMAT} but got {get('format')!r}")
        n_groups = _scalar_int(get("groups"), "groups")
        if n_groups != len(self.param_groups):
            raise ValueError(f"groups: expected {len(self.param_groups)} parameter groups but "
                             f"got {n_groups} (the state of another parameter set)")
        new_groups, values, new_states = [], [], []
        params = self.params
        for gi, group in enumerate(self.param_groups):
            size = _scalar_int(get(f"group/{gi}/size"), f"group/{gi}/size")
            if size != len(group["params"]):
                raise ValueError(f"group/{gi}/size: expected {len(group['params'])} parameters "
                                 f"but got {size} (the state of another parameter set)")
            hyper = {n: check(f"group/{gi}/{n}", get(f"group/{gi}/{n}"))
                     for n, check in self.checks.items()}
            self._check_combination(hyper, f"group/{gi}/")
            if "param_names" in group:
                names = get(f"group/{gi}/param_names").tolist()
                if names != list(group["param_names"]):
                    raise ValueError(f"group/{gi}/param_names: expected {group['param_names']}"
                                     f" but got {names} (the state of another parameter set)")
            new_groups.append(hyper)
        i = 0
        for group, hyper in zip(self.param_groups, new_groups):
            for _ in group["params"]:
                p = params[i]
                values.append(_like(get(f"param/{i}/value"), p, f"param/{i}/value", i))
                state = {"step": _scalar_int(get(f"param/{i}/step"), f"param/{i}/step")}
                for b in (self.buffers(hyper) if state["step"] > 0 else ()):
                    state[b] = _like(get(f"param/{i}/{b}"), p, f"param/{i}/{b}", i)
                new_states.append(state)
                i += 1
        extra = sorted(set(a) - seen)
        if extra:
            raise ValueError(f"{extra[0]}: unexpected in the state of {type(self).__name__} "
                             f"(the state of another optimizer or configuration)")

        def apply() -> None:
            for group, hyper in zip(self.param_groups, new_groups):
                group.update(hyper)
            for k, (p, value, s) in enumerate(zip(params, values, new_states)):
                np.copyto(p, value)
                self.state[k] = {b: (v if b == "step" else v.copy()) for b, v in s.items()}
        return apply


def _as_groups(params) -> tuple[list[dict], bool]:
    """``params``: arrays, or dicts with a ``"params"`` list each (torch's parameter groups);
    returns the groups and whether they were given as dicts (messages then name the group)."""
    if isinstance(params, np.ndarray) or not isinstance(params, (list, tuple)):
        raise TypeError(f"params: expected a list of arrays or of parameter-group dicts but got "
                        f"{type(params).__name__}")
    if params and all(isinstance(g, dict) for g in params):
        for gi, g in enumerate(params):
            if not isinstance(g.get("params"), (list, tuple)):
                raise TypeError(f"param_groups[{gi}]: expected a 'params' list but got "
                                f"{type(g.get('params')).__name__}")
        return list(params), True
    if any(isinstance(g, dict) for g in params):
        raise TypeError("params: expected arrays or parameter-group dicts, not a mix of both")
    return [{"params": list(params)}], False


def _scalar_int(a: np.ndarray, key: str) -> int:
    if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
        raise ValueError(f"{key}: expected an int >= 0 but got {a!r}")
    return int(a)


def _like(a: np.ndarray, p: np.ndarray, key: str, i: int) -> np.ndarray:
    if a.shape != p.shape:
        raise ValueError(f"{key}: expected shape {p.shape} (the shape of parameter {i}) but got "
                         f"{a.shape}")
    if a.dtype != p.dtype:
        raise ValueError(f"{key}: expected dtype {p.dtype} (the dtype of parameter {i}) but got "
                         f"{a.dtype}")
    return a
