"""Which backends this machine can run, each with the reason when it cannot."""
from __future__ import annotations

import functools

ALL = ("numpy", "torch", "opencl", "cupy")


@functools.lru_cache(maxsize=None)
def available(name: str) -> tuple[bool, str]:
    """``(True, description)`` or ``(False, reason)`` for a backend name."""
    if name == "numpy":
        import numpy
        return True, f"numpy {numpy.__version__}"
    if name == "torch":
        try:
            import torch
        except ImportError as exc:
            return False, f"torch is not installed ({exc})"
        return True, f"torch {torch.__version__}"
    if name in ("opencl", "cupy"):
        try:
            from gpu_cupy import runtime
        except ImportError as exc:
            return False, f"gpu_cupy.runtime cannot be imported ({exc})"
        return runtime.available(name)
    raise ValueError(f"backend: expected one of {list(ALL)} but got {name!r}")


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries the backends use (None where one is missing).

    >>> sorted(versions())
    ['cupy', 'numpy', 'pyopencl', 'torch']
    """
    from importlib import metadata
    out: dict[str, str | None] = {}
    for name, dist in (("numpy", "numpy"), ("torch", "torch"), ("pyopencl", "pyopencl"),
                       ("cupy", None)):
        try:
            if dist is None:  # CuPy ships as cupy-cuda12x, cupy-cuda13x, ...: ask the module
                import cupy
                out[name] = cupy.__version__
            else:
                out[name] = metadata.version(dist)
        except Exception:
            out[name] = None
    return out


def environment() -> dict:
    """Versions and every backend's availability (device or reason), for a report's summary."""
    devices = {}
    for name in ALL:
        ok, why = available(name)
        devices[name] = {"available": ok, "detail": why}
    return {"versions": versions(), "devices": devices}
