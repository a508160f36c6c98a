"""Training state to and from one ``.npz`` file: optimizers, schedulers, loss scalers.

Each part (anything with ``state_arrays()`` and ``prepare_load(arrays)``: an
:class:`~ref_numpy.optimizer.Optimizer`, a :class:`~ref_numpy.schedule.Scheduler`, a
:class:`~ref_numpy.grad_scaler.GradScaler`) is stored under its name, ``"<name>/<key>"``, as plain
arrays: numbers, bools, strings and the float arrays themselves, no pickled objects (the file is
read with ``allow_pickle=False``). Floats are stored exactly, so resuming from a file continues
the very trajectory an uninterrupted run takes, bit for bit.

Loading reads the whole file and checks every part against the objects it is loaded into (kind,
groups, names, shapes, dtypes, every hyper-parameter, no key missing and none unexpected) before
any of them changes: a file from another optimizer or parameter set, or a truncated or altered
one, is a ValueError naming the file and the key, and leaves optimizers and parameters as they
were. Writing goes to a temporary file first and replaces ``path`` only when complete.

    save_state("run.npz", optimizer=opt, scheduler=sched, scaler=scaler)
    load_state("run.npz", optimizer=opt, scheduler=sched, scaler=scaler)
"""
from __future__ import annotations

import os
import zipfile

import numpy as np


def save_state(path, **parts) -> None:
    """Write every part's ``state_arrays()`` under its name into the ``.npz`` file ``path``."""
    if not parts:
        raise ValueError("parts: expected at least one named part (optimizer=..., ...)")
    arrays = {}
    for name, part in parts.items():
        if "/" in name:
            raise ValueError(f"{name}: a part name may not contain '/'")
        arrays.update({f"{name}/{k}": v for k, v in part.state_arrays().items()})
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_arrays(path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read now; a file that cannot be read is a
    ValueError naming it."""
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{os.fspath(path)}: not a readable state file "
                         f"({type(exc).__name__}: {exc})") from exc


def load_state(path, **parts) -> None:
    """Load the ``.npz`` file ``path`` into the named parts, all of them or none."""
    arrays = read_arrays(path)
    by_part: dict[str, dict] = {}
    for key, value in arrays.items():
        name, _, rest = key.partition("/")
        by_part.setdefault(name, {})[rest] = value
    path = os.fspath(path)
    for name in set(by_part) ^ set(parts):
        what = "missing from the file" if name in parts else "in the file but not given"
        raise ValueError(f"{path}: part {name!r} is {what} (parts given: {sorted(parts)}, in "
                         f"the file: {sorted(by_part)})")
    apply = []
    for name, part in parts.items():
        try:
            apply.append(part.prepare_load(by_part[name]))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {name}/{exc}") from exc
    for fn in apply:
        fn()
