/* prelude_cuda.h — the Crosscheck kernel dialect on CUDA (CuPy RawModule, NVRTC).
 *
 * Prepended to every kernel source by gpu_cupy.runtime (CuPy) and gpu_cupy.nvrtc (ptxas report).
 * The same names are defined for OpenCL in prelude_opencl.h; DIALECT.md lists the rules.
 */

/* Element type: float64 when the launcher defines REAL_IS_DOUBLE, float32 otherwise. */
#ifdef REAL_IS_DOUBLE
typedef double real;
#else
typedef float real;
#endif

/* Function qualifiers. KERNEL functions are extern "C" so their names are not mangled. */
#define KERNEL extern "C" __global__
#define DEVICE static __device__ __forceinline__

/* Address spaces. GLOBAL on pointer parameters into device memory; SHARED on arrays declared at
 * kernel scope; SHARED_PARAM on pointer parameters of DEVICE functions that point into them. */
#define GLOBAL
#define SHARED __shared__
#define SHARED_PARAM

/* Every thread of the block waits here; shared-memory writes before it are visible after it. */
#define BARRIER() __syncthreads()

/* Before a loop over a per-thread accumulator array: unrolled, the array lives in registers. */
#define UNROLL _Pragma("unroll")

/* Thread and block indices as int (the CUDA built-ins are unsigned). */
#define THREAD_IDX_X ((int)threadIdx.x)
#define BLOCK_IDX_X ((int)blockIdx.x)
#define BLOCK_IDX_Y ((int)blockIdx.y)
#define BLOCK_IDX_Z ((int)blockIdx.z)
#define BLOCK_DIM_X ((int)blockDim.x)

/* NVRTC has no <math.h> macros: +infinity from its IEEE-754 single-precision bit pattern (it
 * converts exactly to the double infinity). exp, log, fmax, sqrt are overloaded for float and
 * double by CUDA itself. */
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
