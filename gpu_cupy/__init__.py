"""The second copy of every component: CUDA C kernels that run on a GPU (CuPy) or on any CPU (PoCL).

Each kernel family is one file ``kernels/<name>.cu`` written once in a small subset of CUDA C, the
kernel dialect, described in ``kernels/DIALECT.md``:

* plain C (no templates); the element type is ``real``, double when the launcher defines
  ``REAL_IS_DOUBLE``, float otherwise;
* pointer parameters carry an address space (``GLOBAL const real* q``), shared memory is declared
  at kernel scope with compile-time sizes (``SHARED real tile[BLOCK_Q * HEAD_DIM]``);
* ``BARRIER()`` only in control flow that every thread of the block takes;
* indices through ``THREAD_IDX_X``, ``BLOCK_IDX_X/Y/Z``, ``BLOCK_DIM_X``; math through the
  overloaded ``exp``, ``log``, ``fmax``, ``sqrt``; ``INFINITY`` (the CUDA prelude defines it from
  the bit pattern, NVRTC has none);
* warp intrinsics only through prelude helpers that have an OpenCL fallback; no float atomics.

``kernels/prelude_cuda.h`` and ``kernels/prelude_opencl.h`` map these names onto each runtime.

Modules:
    runtime          one interface over both runtimes (``backend="opencl" | "cupy"``): availability,
                     cached builds, device arrays, launches with grid/block
    nvrtc            NVRTC compilation of every kernel for sm_80 / sm_90 and its ptxas figures
    oclgrind         runs launches under the Oclgrind simulator and reads back its findings (data
                     races, out-of-bounds accesses, divergent barriers)
    flash_attention  launchers of ``kernels/flash_attention.cu`` (forward, backward)
"""
