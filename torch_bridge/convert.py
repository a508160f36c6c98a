"""NumPy <-> torch (and CuPy <-> torch through DLPack) without silent dtype changes."""
from __future__ import annotations

import numpy as np
import torch

_TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float16): torch.float16}


def to_torch(x: np.ndarray, *, requires_grad: bool = False, dtype: np.dtype | None = None):
    """Copy a NumPy array into a CPU tensor of the same dtype (int arrays become int64, bools bool).

    >>> to_torch(np.arange(3.0)).dtype
    torch.float64
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy.ndarray but got {type(x).__name__}")
    if dtype is not None:
        x = x.astype(dtype)
    if x.dtype == np.bool_:
        t = torch.from_numpy(x.copy())
    elif np.issubdtype(x.dtype, np.integer):
        t = torch.from_numpy(x.astype(np.int64))
    elif x.dtype in _TORCH_DTYPES:
        t = torch.from_numpy(np.ascontiguousarray(x).copy())
    else:
        raise TypeError(f"x: expected a float, integer or bool dtype but got {x.dtype}")
    if requires_grad:
        t.requires_grad_(True)
    return t


def to_numpy(t) -> np.ndarray:
    """Detach a tensor (any device) and return a NumPy array of the same dtype."""
    return t.detach().cpu().numpy()


def cupy_to_torch(x):
    """Zero-copy CuPy -> torch (CUDA) through DLPack."""
    return torch.from_dlpack(x)


def torch_to_cupy(t):
    """Zero-copy torch (CUDA) -> CuPy through DLPack."""
    import cupy
    return cupy.from_dlpack(t.detach())
