/* prelude_opencl.h — the Crosscheck kernel dialect on OpenCL C (PyOpenCL; PoCL on a CPU).
 *
 * Prepended to every kernel source by gpu_cupy.runtime. The same names are defined for CUDA in
 * prelude_cuda.h; DIALECT.md lists the rules.
 */

/* Element type: float64 when the launcher defines REAL_IS_DOUBLE (needs cl_khr_fp64). */
#ifdef REAL_IS_DOUBLE
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double real;
#else
typedef float real;
#endif

/* Function qualifiers. */
#define KERNEL __kernel
#define DEVICE static inline

/* Address spaces (see prelude_cuda.h). OpenCL uses __local for both the declaration and the
 * pointer parameter. */
#define GLOBAL __global
#define SHARED __local
#define SHARED_PARAM __local

#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE)

/* No unrolling hint: on a CPU the accumulator arrays live in memory either way, and unrolling
 * makes PoCL's first launch of a kernel several times slower to compile. */
#define UNROLL

/* A CUDA block is an OpenCL work-group, a CUDA thread a work-item. */
#define THREAD_IDX_X ((int)get_local_id(0))
#define BLOCK_IDX_X ((int)get_group_id(0))
#define BLOCK_IDX_Y ((int)get_group_id(1))
#define BLOCK_IDX_Z ((int)get_group_id(2))
#define BLOCK_DIM_X ((int)get_local_size(0))

/* INFINITY and the overloaded exp, log, fmax, sqrt are built into OpenCL C. */
