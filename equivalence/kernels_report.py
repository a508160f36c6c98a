"""``crosscheck kernels``: NVRTC builds every kernel (no GPU needed) and reports ptxas figures.

One row per kernel, configuration (the launcher's compile-time defines: head dimension and
default tiles), architecture and dtype: registers per thread, spill stores and loads in bytes
(the target is zero), and static shared memory per block. Example (one row, abridged):

    kernel                      config                  arch   dtype    registers  spill stores
    flash_attention_forward_v1  HEAD_DIM=64 BLOCK_Q=64  sm_90  float32        168             0

The kernels come from ``gpu_cupy/kernels/*.cu``; ``gpu_cupy.nvrtc`` does the compiling and
parsing. A full run compiles each configuration once per arch and dtype (about half a minute).

Your own kernel file, written in the dialect of ``gpu_cupy/kernels/DIALECT.md``, is compiled
with the defines you give (``REAL_IS_DOUBLE`` comes from ``--dtype``) and every kernel in it is
reported:

    crosscheck kernels --file my_kernel.cu --define NUM_THREADS=128 --arch sm_90

A file that does not compile exits with status 1 and NVRTC's diagnostics at the file's own
lines, one per line (``kernels: my_kernel.cu:12: error: identifier "NUM_THREADS" is
undefined``).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from gpu_cupy import nvrtc, runtime

_NAME = re.compile(r"[A-Za-z_]\w*")


def _kernel_file(text: str) -> str:
    """``--file``: a name in gpu_cupy/kernels or a path to an existing file (kept as given)."""
    try:
        runtime.kernel_path(text)
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(
            f"expected a file of gpu_cupy/kernels or a path to your own file but got {text!r}, "
            f"which is neither (working directory {Path.cwd()})") from None
    return text


def _define(text: str) -> tuple[str, str]:
    """``--define NAME=VALUE`` -> ``(NAME, VALUE)``; NAME a C identifier other than
    REAL_IS_DOUBLE, which ``--dtype`` sets."""
    name, eq, value = text.partition("=")
    if not eq or not _NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME a C identifier but got "
                                         f"{text!r}")
    if name == "REAL_IS_DOUBLE":
        raise argparse.ArgumentTypeError(f"expected a name other than REAL_IS_DOUBLE (--dtype "
                                         f"sets it) but got {text!r}")
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", action="append", choices=nvrtc.ARCHS,
                        help="GPU architecture (repeat for several; default: sm_80 and sm_90)")
    parser.add_argument("--dtype", choices=nvrtc.DTYPES + ("all",), default="all",
                        help="element type the kernels are built for (default: all)")
    parser.add_argument("--file", action="append", metavar="NAME.cu", type=_kernel_file,
                        help="only this kernel file: a name in gpu_cupy/kernels or a path to "
                             "your own file (repeatable)")
    parser.add_argument("--define", action="append", metavar="NAME=VALUE", type=_define,
                        help="passed to NVRTC as -DNAME=VALUE for every arch and dtype "
                             "(repeatable)")


def _defines(pairs: list[tuple[str, str]] | None) -> dict[str, str]:
    """The ``--define`` pairs as a dict; a name given twice with two values is an error."""
    defines: dict[str, str] = {}
    for name, value in pairs or ():
        if defines.get(name, value) != value:
            raise SystemExit(f"kernels: --define {name}: expected one value but got "
                             f"{defines[name]!r} and {value!r}")
        defines[name] = value
    return defines


def run(args) -> list[dict]:
    """Compile and return one dict per (kernel, config, arch, dtype). A kernel file that does
    not compile, or has no kernel, ends the run (SystemExit) with a message and no traceback."""
    archs = tuple(getattr(args, "arch", None) or nvrtc.ARCHS)
    dtype = getattr(args, "dtype", "all")
    dtypes = nvrtc.DTYPES if dtype == "all" else (dtype,)
    files = getattr(args, "file", None)
    defines = _defines(getattr(args, "define", None))
    extra = {"defines": defines} if defines else {}  # without --define: the configs as they are
    try:
        rows = nvrtc.compile_all(archs=archs, dtypes=dtypes, files=files, **extra)
    except runtime.KernelBuildError as exc:
        raise SystemExit(f"kernels: {exc}") from None
    empty = [f for f in files or () if not any(r["file"] == f for r in rows)]
    if empty:
        raise SystemExit(f"kernels: {', '.join(empty)}: expected at least one KERNEL function "
                         f"but NVRTC reported none")
    return [{"kernel": r["kernel"], "config": r["defines"], "arch": r["arch"],
             "dtype": r["dtype"], "registers": r["registers"],
             "spill stores": r["spill_stores"], "spill loads": r["spill_loads"],
             "smem bytes": r["smem_bytes"]} for r in rows]
