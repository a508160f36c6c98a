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
    arguments        the checks every launcher makes before a launch (dtype, contiguity,
                     shapes, int32 index headroom)
    flash_attention  launchers of ``kernels/flash_attention.cu`` (forward, backward)
    paged_kv         ``kernels/paged_kv.cu``: cache write, gather, paged decode attention
    softmax          ``kernels/softmax.cu``: softmax, log-softmax, online softmax
    cross_entropy    ``kernels/cross_entropy.cu``: fused loss and dlogits
    norms            ``kernels/norms.cu``: RMSNorm, LayerNorm, two-stage weight gradients
    elementwise      ``kernels/elementwise.cu``: GELU (erf, tanh), SiLU, the SwiGLU gate
    embedding        ``kernels/embedding.cu``: lookup; backward over sorted ids, one owner each
    gemm             ``kernels/gemm.cu``: tiled C = A·B (+ b) and its backward products
    rope             ``kernels/rope.cu``: RoPE in both conventions, offsets, position ids
    adamw            ``kernels/adamw.cu``: one fused AdamW step over a flat parameter buffer
"""
