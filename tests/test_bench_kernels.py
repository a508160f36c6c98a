"""``crosscheck bench kernels`` (equivalence/bench/kernels.py): the BENCH entries of the gpu_cupy
launcher modules are discovered and checked, and a run at tiny sizes times every selected entry
next to torch on the same device (figures not asserted: only how each column is formed)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from equivalence.bench import kernels
from gpu_cupy import adamw as ga
from gpu_cupy import cross_entropy as gce
from gpu_cupy import elementwise as gew
from gpu_cupy import embedding as gem
from gpu_cupy import gemm as gg
from gpu_cupy import norms as gn
from gpu_cupy import rope as grope
from gpu_cupy import runtime
from gpu_cupy import softmax as gs

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float32)
CUPY_OK, _ = runtime.available("cupy")
QUICK = ["--repeats", "1", "--warmup", "0", "--min-time", "0"]


def run_bench(argv):
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    return kernels.run(parser.parse_args(argv))


def tiny(entry: dict, shape) -> dict:
    """The entry at a tiny shape (bytes scaled with it), renamed "tiny ..."."""
    scale = int(np.prod(shape)) / int(np.prod(entry["kwargs"]["shape"]))
    return {**entry, "name": f"tiny {entry['name']}",
            "kwargs": {**entry["kwargs"], "shape": list(shape)},
            "bytes": int(entry["bytes"] * scale)}


def test_discover_finds_every_kernel_entry_with_unique_names():
    entries = kernels.discover()
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names))
    for module in (gs, gce, gn, gew, gem, gg, grope, ga):
        mine = [e for e in entries if e["module"] == module.__name__]
        assert [e["name"] for e in mine] == [e["name"] for e in module.BENCH] != []
        for e in mine:
            assert e["torch"]
            if module is gg:        # the products: GFLOP/s
                assert e["flops"] > 0 and e["bytes"] is None
            else:                   # memory-bound: GB/s
                assert e["bytes"] > 0 and e["flops"] is None


@pytest.mark.parametrize("change, message", [
    ({"bytes": None, "flops": None}, r"m.BENCH\[0\]: expected 'bytes' or 'flops' \(or both\)"),
    ({"build": "gpu_cupy.softmax.bench_kernel"}, r"m.BENCH\[0\]\['build'\]: expected "
                                                 r"'module:function'"),
    ({"bytes": 1.5}, r"m.BENCH\[0\]\['bytes'\]: expected an int or None but got 1.5"),
    ({"flops": True}, r"m.BENCH\[0\]\['flops'\]: expected an int or None but got True"),
    ({"extra": 1}, r"m.BENCH\[0\]: expected a dict with keys \['build', 'bytes', 'flops', "
                   r"'kwargs', 'name', 'torch'\]"),
])
def test_a_malformed_entry_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        kernels._check_entry("m", 0, {**gs.BENCH[0], **change})


def test_a_name_used_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(gn, "BENCH", [{**gn.BENCH[0], "name": gs.BENCH[0]["name"]}])
    with pytest.raises(ValueError, match=r"gpu_cupy.softmax.BENCH\[0\]: the name .* is taken "
                                         r"by gpu_cupy.norms"):
        kernels.discover()


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_bench_kernels_times_each_entry_next_to_torch_on_opencl(monkeypatch):
    monkeypatch.setattr(gs, "BENCH", [tiny(gs.BENCH[0], (3, 300)), tiny(gs.BENCH[3], (3, 300))])
    monkeypatch.setattr(gce, "BENCH", [tiny(gce.BENCH[1], (3, 300))])
    monkeypatch.setattr(gn, "BENCH", [tiny(gn.BENCH[3], (5, 300))])
    rows = run_bench(["--backend", "opencl", "--only", "tiny *", *QUICK])["kernels"]
    assert [r["kernel"] for r in rows] == ["tiny cross_entropy fused 256x50257",
                                           "tiny layernorm_backward 8192x768",
                                           "tiny softmax_forward v1 2048x4096",
                                           "tiny softmax_backward 2048x4096"]
    bytes_of = {e["name"]: e["bytes"] for e in kernels.discover()}
    for r in rows:
        assert r["backend"] == "opencl" and r["torch device"] == "cpu"
        assert r["kernel GB/s"] == pytest.approx(bytes_of[r["kernel"]] / r["kernel ms"] / 1e6)
        assert r["torch GB/s"] == pytest.approx(bytes_of[r["kernel"]] / r["torch ms"] / 1e6)
        assert r["kernel / torch"] == pytest.approx(r["kernel ms"] / r["torch ms"])
        assert r["kernel GFLOP/s"] is None and r["torch GFLOP/s"] is None
        assert r["kernel % of peak"] is None          # PoCL's CPU has no peak figure


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_the_share_of_peak_is_the_kernels_gb_per_s_over_the_devices_peak(monkeypatch):
    monkeypatch.setattr(gs, "BENCH", [tiny(gs.BENCH[0], (3, 300))])
    monkeypatch.setattr(kernels, "_device_peak", lambda backend: 0.5)     # a 0.5 GB/s device
    rows = run_bench(["--backend", "opencl", "--only", "tiny softmax*", *QUICK])["kernels"]
    assert len(rows) == 1
    assert rows[0]["kernel % of peak"] == pytest.approx(100 * rows[0]["kernel GB/s"] / 0.5)


def test_a_pattern_that_matches_nothing_lists_the_entries():
    if not OPENCL_OK:
        pytest.skip(OPENCL_WHY)
    with pytest.raises(SystemExit, match=r"no entry matches --only 'no such kernel'; the entries "
                                         r"are: .*softmax_forward v1"):
        run_bench(["--only", "no such kernel", *QUICK])


@pytest.mark.skipif(CUPY_OK, reason="this machine has a CUDA device")
def test_bench_kernels_says_when_no_cuda_device_is_available():
    with pytest.raises(SystemExit, match=r"bench kernels --backend cupy needs a CUDA device and "
                                         r"none is available"):
        run_bench(["--backend", "cupy", *QUICK])
    # The same through the command line, which sends a bench whose args.backend is not
    # "numpy" to KERNEL_BENCHES: this module's option must not be stored as args.backend.
    from equivalence import cli
    from equivalence.bench import BENCHES
    if "kernels" not in BENCHES:
        pytest.skip("crosscheck bench kernels is not registered in equivalence.bench.BENCHES")
    with pytest.raises(SystemExit, match=r"bench kernels --backend cupy needs a CUDA device"):
        cli.main(["bench", "kernels", "--backend", "cupy", *QUICK])
