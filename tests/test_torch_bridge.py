"""Conversion and the autograd runner."""
import numpy as np
import pytest
import torch

from torch_bridge.autograd import run_autograd
from torch_bridge.convert import to_numpy, to_torch


@pytest.mark.parametrize("dtype,tdtype", [(np.float64, torch.float64), (np.float32, torch.float32),
                                          (np.int32, torch.int64), (np.bool_, torch.bool)])
def test_to_torch_preserves_values_and_maps_dtypes(dtype, tdtype):
    x = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
    t = to_torch(x)
    assert t.dtype == tdtype
    assert np.array_equal(to_numpy(t), x)
    t.reshape(-1)[0] = 1  # a copy: the NumPy array is untouched
    assert x.flat[0] == 0


def test_to_torch_rejects_non_arrays_and_odd_dtypes():
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray but got list"):
        to_torch([1.0, 2.0])
    with pytest.raises(TypeError, match="complex128"):
        to_torch(np.zeros(2, dtype=np.complex128))


def test_run_autograd_known_answer():
    # y = x1 * x2 summed against dout: dL/dx1 = dout * x2, dL/dx2 = dout * x1; z unused.
    x1, x2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    dout = np.array([1.0, 10.0, 100.0])
    outs, grads = run_autograd(lambda t: {"y": t["a"] * t["b"]},
                               {"a": x1, "b": x2, "z": np.ones(2)}, ("a", "b", "z"), {"y": dout})
    assert np.array_equal(outs["y"], [4.0, 10.0, 18.0])
    assert np.array_equal(grads["a"], [4.0, 50.0, 600.0])
    assert np.array_equal(grads["b"], [1.0, 20.0, 300.0])
    assert np.array_equal(grads["z"], [0.0, 0.0])  # unused input: zeros, not None


def test_run_autograd_forward_only_and_bad_arguments():
    outs, grads = run_autograd(lambda t: {"y": t["a"] + 1}, {"a": np.zeros(2)}, ("a",), None)
    assert grads is None and np.array_equal(outs["y"], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"grad_wrt: names \['q'\]"):
        run_autograd(lambda t: {"y": t["a"]}, {"a": np.zeros(2)}, ("q",), {"y": np.zeros(2)})
    with pytest.raises(ValueError, match=r"douts\['y'\]: expected shape \(2,\) but got \(3,\)"):
        run_autograd(lambda t: {"y": t["a"]}, {"a": np.zeros(2)}, ("a",), {"y": np.zeros(3)})


@pytest.mark.gpu
def test_cupy_torch_round_trip_through_dlpack_shares_memory():
    from gpu_cupy import runtime
    ok, why = runtime.available("cupy")
    if not ok:
        pytest.skip(why)
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA support: DLPack cannot hand it device memory")
    import cupy

    from torch_bridge.convert import cupy_to_torch, torch_to_cupy
    x = cupy.arange(6, dtype=cupy.float64).reshape(2, 3)
    t = cupy_to_torch(x)
    assert t.is_cuda and t.dtype == torch.float64 and tuple(t.shape) == (2, 3)
    t[0, 0] = 42.0  # zero-copy: the CuPy array sees the write
    assert float(x[0, 0]) == 42.0
    y = torch_to_cupy(t)
    assert y.data.ptr == x.data.ptr
