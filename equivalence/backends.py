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
