"""Compile every kernel with NVRTC, no GPU needed, and read the ptxas figures from the log.

    >>> rows = compile_all(archs=("sm_90",), dtypes=("float32",))              # doctest: +SKIP
    >>> rows[0]["kernel"], rows[0]["arch"], rows[0]["spill_stores"]             # doctest: +SKIP
    ('flash_attention_forward_v1', 'sm_90', 0)

Register counts depend on the kernel's tiles and on the NVRTC version; ``crosscheck kernels``
prints them for every configuration.

NVRTC comes from the pip packages ``nvidia-cuda-nvrtc`` (the library) and ``cuda-bindings`` (its
Python API, ``cuda.bindings.nvrtc``). cuda-bindings finds ``libnvrtc.so`` through
cuda-pathfinder, which looks in the ``nvidia/cu<N>/lib`` directory of site-packages before
CUDA_HOME and the system paths, so a plain ``pip install`` is enough; :func:`nvrtc_library`
says which file was loaded. Compiling for a real architecture (``sm_90``, not ``compute_90``)
makes NVRTC run ptxas, and ``--ptxas-options=-v`` puts its report in the program log:

    ptxas info    : Compiling entry function 'k' for 'sm_90'
    ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    ptxas info    : Used 10 registers, used 1 barriers, 256 bytes smem

Which configurations are compiled: every ``kernels/*.cu``; if the launcher module of the same
name (``gpu_cupy.<stem>``) has ``nvrtc_configs(dtype) -> [(defines, kernel names)]`` those
defines are used and those kernels reported, otherwise the file is compiled once with only the
dtype define and every kernel is reported. A user's own file (any path outside ``kernels/``) is
compiled once per arch and dtype with the defines given and every kernel is reported:

    >>> compile_all(("sm_90",), ("float32",), files=["my_kernel.cu"],
    ...             defines={"NUM_THREADS": 128})                               # doctest: +SKIP

A source that does not compile raises :class:`gpu_cupy.runtime.KernelBuildError`, whose message
gives NVRTC's diagnostics at the lines of the kernel file (``my_kernel.cu:12: error: ...``).
"""
from __future__ import annotations

import importlib
import re

import numpy as np

from gpu_cupy import runtime

ARCHS = ("sm_80", "sm_90")
DTYPES = ("float32", "float64")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+\w*)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def nvrtc_library() -> str:
    """Path of the libnvrtc that cuda-bindings loads (via cuda-pathfinder)."""
    from cuda.pathfinder import load_nvidia_dynamic_lib
    return load_nvidia_dynamic_lib("nvrtc").abs_path


def _check(result, what: str, log: str = ""):
    from cuda.bindings import nvrtc
    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {err}\n{log}")
    return rest[0] if len(rest) == 1 else rest


def compile_log(source: str, options: list[str], name: str = "kernel.cu") -> str:
    """Compile CUDA C ``source`` with NVRTC and return the program log (raises
    :class:`~gpu_cupy.runtime.KernelBuildError` on errors, at the lines of kernel file ``name``
    when ``source`` is ``runtime.kernel_source("cupy", name)``)."""
    return _compile(source, options, name)[0]


def compile_ptx(source: str, options: list[str], name: str = "kernel.cu") -> str:
    """Compile CUDA C ``source`` with NVRTC and return the PTX (raises as :func:`compile_log`).
    With a virtual architecture (``--gpu-architecture=compute_80``) this is what ptxas would
    get."""
    return _compile(source, options, name, ptx=True)[1]


def _build_error(source: str, options: list[str], name: str, log: str):
    """The KernelBuildError for NVRTC's ``log``: lines are kernel-file lines when ``source``
    starts with the CUDA prelude as :func:`runtime.kernel_source` puts it, else as compiled."""
    prelude = source.startswith(runtime.prelude("cupy") + "\n")
    return runtime.KernelBuildError.from_log(
        name, "cupy", log, f"NVRTC could not compile {name} with {' '.join(options)}",
        offset=None if prelude else 0)


def _compile(source: str, options: list[str], name: str, ptx: bool = False):
    """(program log, PTX text or None) of one NVRTC compilation."""
    from cuda.bindings import nvrtc
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []),
                  "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        # NVRTC writes into the buffer it is given: a fresh bytearray, never a bytes object
        # (b" " * 1 is the interpreter's shared one-byte b" ", which it would overwrite).
        buf = bytearray(size)
        _check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.decode(errors="replace").rstrip("\x00 \n")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise _build_error(source, options, name, log)
        if not ptx:
            return log, None
        size = _check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        buf = bytearray(size)
        _check(nvrtc.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        return log, buf.decode(errors="replace").rstrip("\x00")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def parse_ptxas(log: str) -> dict[str, dict]:
    """Per entry function: registers, spill stores/loads, stack frame and smem bytes.

    >>> figures = parse_ptxas(
    ...     "ptxas info : Compiling entry function 'k' for 'sm_90'\\n"
    ...     "ptxas . 8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\\n"
    ...     "ptxas info : Used 10 registers, used 1 barriers, 256 bytes smem")
    >>> figures["k"]["registers"], figures["k"]["spill_stores"], figures["k"]["smem_bytes"]
    (10, 4, 256)
    """
    out: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = out.setdefault(m.group(1), {"arch": m.group(2)})
        elif current is not None and (m := _FRAME.search(line)):
            current.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)),
                           spill_loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            s = _SMEM.search(line)
            current.update(registers=int(m.group(1)), smem_bytes=int(s.group(1)) if s else 0)
            current = None  # the "Used" line closes the entry's report
    return out


def _configs(stem: str, dtype: str) -> list[tuple[dict, tuple[str, ...] | None]]:
    try:
        module = importlib.import_module(f"gpu_cupy.{stem}")
    except ModuleNotFoundError as exc:
        if exc.name != f"gpu_cupy.{stem}":  # the launcher exists but one of its imports is missing
            raise
        module = None
    if module is not None and hasattr(module, "nvrtc_configs"):
        return module.nvrtc_configs(np.dtype(dtype))
    return [({"REAL_IS_DOUBLE": 1} if dtype == "float64" else {}, None)]


def _file_configs(filename: str, dtype: str,
                  defines: dict) -> list[tuple[dict, tuple[str, ...] | None]]:
    """What :func:`compile_all` compiles of ``filename``: a file of ``kernels/`` in its
    launcher's configurations (:func:`_configs`) with ``defines`` added, a user's own file once
    with ``defines`` and the dtype's define, every kernel reported."""
    path = runtime.kernel_path(filename)
    if path.resolve().parent == runtime.KERNEL_DIR.resolve():
        return [({**defs, **defines}, kernels) for defs, kernels in _configs(path.stem, dtype)]
    return [(({"REAL_IS_DOUBLE": 1} if dtype == "float64" else {}) | defines, None)]


def compile_all(archs=ARCHS, dtypes=DTYPES, files=None, defines=None) -> list[dict]:
    """One row per (kernel, configuration, arch, dtype) of every ``kernels/*.cu``, or of
    ``files`` (names in ``kernels/`` or paths to a user's own files), compiled with ``defines``
    too: file, kernel, defines, arch, dtype, registers, spill_stores, spill_loads, stack_bytes,
    smem_bytes."""
    files = sorted(p.name for p in runtime.KERNEL_DIR.glob("*.cu")) if files is None else files
    rows = []
    for filename in files:
        source = runtime.kernel_source("cupy", filename)
        for dtype in dtypes:
            for defs, kernels in _file_configs(filename, dtype, defines or {}):
                for arch in archs:
                    log = compile_log(source, [f"--gpu-architecture={arch}",
                                               "--ptxas-options=-v"]
                                      + runtime.define_options(defs), filename)
                    figures = parse_ptxas(log)
                    for kernel in (kernels or sorted(figures)):
                        if kernel not in figures:
                            raise RuntimeError(f"{filename}: no ptxas report for {kernel} "
                                               f"({arch}, {dtype}); log:\n{log}")
                        f = figures[kernel]
                        shown = {k: v for k, v in defs.items() if k != "REAL_IS_DOUBLE"}
                        rows.append({"file": filename, "kernel": kernel,
                                     "defines": " ".join(f"{k}={v}" for k, v in shown.items()),
                                     "arch": arch, "dtype": dtype,
                                     "registers": f["registers"],
                                     "spill_stores": f["spill_stores"],
                                     "spill_loads": f["spill_loads"],
                                     "stack_bytes": f["stack_bytes"],
                                     "smem_bytes": f["smem_bytes"]})
    return rows
