"""``crosscheck kernels``: NVRTC builds every kernel (no GPU needed) and reports ptxas figures.

One row per kernel, configuration (the launcher's compile-time defines: head dimension and
default tiles), architecture and dtype: registers per thread, spill stores and loads in bytes
(the target is zero), and static shared memory per block. Example (one row, abridged):

    kernel                      config                  arch   dtype    registers  spill stores
    flash_attention_forward_v1  HEAD_DIM=64 BLOCK_Q=64  sm_90  float32        168             0

The kernels come from ``gpu_cupy/kernels/*.cu``; ``gpu_cupy.nvrtc`` does the compiling and
parsing. A full run compiles each configuration once per arch and dtype (about half a minute).
"""
from __future__ import annotations

import argparse

from gpu_cupy import nvrtc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", action="append", choices=nvrtc.ARCHS,
                        help="GPU architecture (repeat for several; default: sm_80 and sm_90)")
    parser.add_argument("--dtype", choices=nvrtc.DTYPES + ("all",), default="all",
                        help="element type the kernels are built for (default: all)")
    parser.add_argument("--file", action="append", metavar="NAME.cu",
                        help="only this kernel file of gpu_cupy/kernels (repeatable)")


def run(args) -> list[dict]:
    """Compile and return one dict per (kernel, config, arch, dtype)."""
    archs = tuple(getattr(args, "arch", None) or nvrtc.ARCHS)
    dtype = getattr(args, "dtype", "all")
    dtypes = nvrtc.DTYPES if dtype == "all" else (dtype,)
    rows = nvrtc.compile_all(archs=archs, dtypes=dtypes, files=getattr(args, "file", None))
    return [{"kernel": r["kernel"], "config": r["defines"], "arch": r["arch"],
             "dtype": r["dtype"], "registers": r["registers"],
             "spill stores": r["spill_stores"], "spill loads": r["spill_loads"],
             "smem bytes": r["smem_bytes"]} for r in rows]
