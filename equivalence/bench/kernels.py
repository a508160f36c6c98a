"""``crosscheck bench kernels --backend opencl|cupy``: every kernel that a ``gpu_cupy`` launcher
module lists in its ``BENCH``, timed next to torch doing the same op on the same device.

A launcher module takes part by holding a list ``BENCH`` of entries, one per timed kernel call:

    {"name": "softmax_forward v1 2048x4096",        # unique across modules
     "build": "gpu_cupy.softmax:bench_kernel",      # build(backend, **kwargs) -> callable
     "kwargs": {"op": "softmax_forward", ...},      # JSON-able
     "bytes": 67108864,                             # bytes the op must move, or None
     "flops": None,                                 # floating-point operations, or None
     "torch": "gpu_cupy.softmax:bench_torch"}       # torch(device, **kwargs) -> callable, or None

``build`` makes its inputs (untimed) and returns a zero-argument callable that runs the kernel
once and waits for it; ``torch`` does the same op with torch on ``device`` ("cpu" or "cuda").
Every module of the ``gpu_cupy`` package is imported to look for ``BENCH``; an entry that breaks
these rules is an error naming its module.

Timing goes through the shared layer (``equivalence.bench.common``): the kernel sides run one
after another in one fresh child, the torch sides in another, each with warm-up calls (which
also build the programs), repeats and the median. Achieved throughput is ``bytes`` / median
time in GB/s and ``flops`` / median time in GFLOP/s, for the kernel and for torch alike, so the
two columns compare the same amount of work; "kernel / torch" is the ratio of the medians.

- ``--backend opencl`` (the default; PoCL on the CPU): times include the copies between NumPy and
  the OpenCL buffers; torch runs on the CPU.
- ``--backend cupy`` (a CUDA GPU): the builders keep CuPy arrays on the device. torch runs on the
  GPU when ``torch.cuda.is_available()``; with a CPU-only torch its columns are left empty and
  "torch device" says why. Without a CUDA device the command stops and says so. "kernel % of
  peak" sets each memory-bound kernel's GB/s against the device's theoretical DRAM bandwidth,
  2 x memory clock x bus width (:func:`peak_bandwidth_gbs`); for GEMM, torch's column is cuBLAS.

Example: ``crosscheck bench kernels --only 'cross_entropy*' --min-time 0.2``.
"""
from __future__ import annotations

import fnmatch
import importlib
import pkgutil

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      libraries, measure, thread_settings)

# key -> (the types it may hold, how the error message names them)
ENTRY_KEYS = {"name": (str, "a str"), "build": (str, "'module:function'"),
              "kwargs": (dict, "a dict"), "bytes": ((int, type(None)), "an int or None"),
              "flops": ((int, type(None)), "an int or None"),
              "torch": ((str, type(None)), "'module:function' or None")}


def add_arguments(parser) -> None:
    # dest is not "backend": the CLI reads args.backend as "a kernel bench of KERNEL_BENCHES"
    parser.add_argument("--backend", dest="kernel_backend", choices=("opencl", "cupy"),
                        default="opencl",
                        help="opencl: the kernels on PoCL, torch on the CPU (default); cupy: "
                             "on a CUDA GPU, torch on the GPU")
    parser.add_argument("--only", metavar="PATTERN",
                        help="glob or substring of the entries' names")
    add_timing_arguments(parser)


def _check_entry(module: str, i: int, entry) -> dict:
    where = f"{module}.BENCH[{i}]"
    if not isinstance(entry, dict) or set(entry) != set(ENTRY_KEYS):
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{where}: expected a dict with keys {sorted(ENTRY_KEYS)} but got {got}")
    for key, (kinds, what) in ENTRY_KEYS.items():
        value = entry[key]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ValueError(f"{where}[{key!r}]: expected {what} but got {value!r}")
    for key in ("build", "torch"):
        if entry[key] is not None and entry[key].count(":") != 1:
            raise ValueError(f"{where}[{key!r}]: expected 'module:function' but got "
                             f"{entry[key]!r}")
    if entry["bytes"] is None and entry["flops"] is None:
        raise ValueError(f"{where}: expected 'bytes' or 'flops' (or both) but both are None")
    return entry


def discover(package: str = "gpu_cupy") -> list[dict]:
    """Every ``BENCH`` entry of every module of ``package``, in module order, each with the
    name of its module under "module"; names must be unique."""
    pkg = importlib.import_module(package)
    entries, seen = [], {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        name = f"{package}.{info.name}"
        bench = getattr(importlib.import_module(name), "BENCH", None)
        if bench is None:
            continue
        for i, entry in enumerate(bench):
            entry = _check_entry(name, i, entry)
            if entry["name"] in seen:
                raise ValueError(f"{name}.BENCH[{i}]: the name {entry['name']!r} is taken by "
                                 f"{seen[entry['name']]}")
            seen[entry["name"]] = name
            entries.append({**entry, "module": name})
    return entries


def select(entries: list[dict], pattern: str | None) -> list[dict]:
    """The entries whose name matches ``pattern``: a glob if it has ``*?[``, else a substring."""
    if not pattern:
        return entries
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    return [e for e in entries if fnmatch.fnmatchcase(e["name"], glob)]


def torch_device(backend: str) -> str | None:
    """Where the torch side runs: the CPU next to PoCL, the GPU next to CuPy, and nowhere (None)
    next to CuPy when torch has no CUDA."""
    import torch
    if backend == "opencl":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def peak_bandwidth_gbs(props: dict) -> float:
    """Theoretical DRAM bandwidth in GB/s from CUDA device properties: double data rate, so
    2 x memoryClockRate (kHz) x memoryBusWidth (bits) / 8, as CUDA's bandwidthTest reports it.

    >>> round(peak_bandwidth_gbs({"memoryClockRate": 1593000, "memoryBusWidth": 5120}))
    2039
    """
    return 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e9


def _device_peak(backend: str) -> float | None:
    """The GPU's peak bandwidth (GB/s); None for OpenCL, where PoCL's CPU has no such figure."""
    if backend != "cupy":
        return None
    import cupy
    return peak_bandwidth_gbs(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id))


def _rate(amount: int | None, seconds: float | None, unit: float) -> float | None:
    return None if amount is None or seconds is None else amount / seconds / unit


def run(args) -> dict[str, list[dict]]:
    """One row per entry and thread setting: kernel and torch medians, GB/s and GFLOP/s, the
    ratio of the medians."""
    from gpu_cupy import runtime
    backend = args.kernel_backend
    check_timing_arguments(args)
    ok, why = runtime.available(backend)
    if not ok:
        if backend == "cupy":
            raise SystemExit(f"bench kernels --backend cupy needs a CUDA device and none is "
                             f"available ({why}); use --backend opencl to time the same kernels "
                             f"on the CPU")
        raise SystemExit(f"bench kernels --backend {backend}: not available ({why})")
    entries = select(discover(), getattr(args, "only", None))
    if not entries:
        raise SystemExit(f"bench kernels: no entry matches --only {args.only!r}; the entries "
                         f"are: {', '.join(e['name'] for e in discover())}")
    device = torch_device(backend)
    peak = _device_peak(backend)
    peers = [e for e in entries if e["torch"] is not None]
    rows = []
    for threads in thread_settings(args):
        kernel_t = measure([Side(e["name"], e["build"], {"backend": backend, **e["kwargs"]})
                            for e in entries], args, threads)
        torch_t = ([] if device is None or not peers else
                   measure([Side(e["name"], e["torch"], {"device": device, **e["kwargs"]})
                            for e in peers], args, threads))
        by_name = {t.label: t for t in torch_t}
        for e, kt in zip(entries, kernel_t):
            tt = by_name.get(e["name"])
            torch_s = None if tt is None else tt.median
            note = ("no torch peer" if e["torch"] is None else
                    "not timed: torch has no CUDA" if device is None else device)
            rows.append({"kernel": e["name"], "module": e["module"], "backend": backend,
                         "threads": "default" if threads is None else threads,
                         "kernel ms": kt.median * 1e3, "kernel spread": kt.spread,
                         "kernel GB/s": _rate(e["bytes"], kt.median, 1e9),
                         "kernel GFLOP/s": _rate(e["flops"], kt.median, 1e9),
                         "kernel % of peak": (None if peak is None or e["bytes"] is None else
                                              100 * _rate(e["bytes"], kt.median, 1e9) / peak),
                         "torch ms": None if tt is None else torch_s * 1e3,
                         "torch GB/s": _rate(e["bytes"], torch_s, 1e9),
                         "torch GFLOP/s": _rate(e["flops"], torch_s, 1e9),
                         "kernel / torch": None if tt is None else kt.median / torch_s,
                         "torch device": note, "libraries": libraries(kt.runtime)})
    return {"kernels": rows}
