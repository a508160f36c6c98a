/*
 * embedding.cu — the embedding lookup and its deterministic backward in the Crosscheck kernel
 * dialect.
 *
 * ref_numpy/linear.py (embedding_forward, embedding_backward) is the NumPy reference;
 * gpu_cupy/embedding.py is the launcher (validation, the sort of the ids, grids). DIALECT.md
 * describes the dialect.
 *
 *     out[p, c]   = table[ids[p], c]                          for every position p
 *     dtable[v, c] = sum over positions p with ids[p] = v of dout[p, c]   (0 if v never occurs)
 *
 * The backward is a scatter-add, and an id that occurs k times receives k gradient rows. With
 * one thread per position adding into dtable[ids[p]], two threads would add into the same
 * element: that needs floating-point atomics, which OpenCL C lacks (cl_ext_float_atomics is
 * optional, absent on PoCL) and which make the float32 sum's order, so its value, change from
 * run to run. Here the launcher sorts the positions by id instead (the keys id * n + p are
 * distinct, so the order is unique whatever the sort), giving
 *     order    (n,)     the positions, by id, then by position
 *     offsets  (V + 1,) the positions of id v are order[offsets[v] .. offsets[v + 1] - 1]
 * and every element dtable[v, c] has exactly one owner, a thread that adds its rows in position
 * order, from zero. That is the order of np.add.at in the NumPy copy, and there is no
 * multiplication to fuse, so the kernel and the NumPy copy agree bit for bit, in both dtypes.
 *
 * Shapes (row-major, C-contiguous; int is 32-bit on both runtimes):
 *     ids      (n,) int         every id in [0, V) (the launcher checks), any shape flattened
 *     table    (V, C)
 *     out      (n, C)
 *     dout     (n, C)
 *     dtable   (V, C)
 * One thread per output element, consecutive threads on consecutive columns (coalesced), grid
 * ceil(elements / NUM_THREADS); the launcher keeps the element counts + NUM_THREADS within int32.
 *
 * Compile-time defines (set by the launcher; one program per dtype):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     NUM_THREADS      threads per block (the launcher uses 256)
 *
 * Kernels (one version each):
 *     embedding_forward    out from ids and table
 *     embedding_backward   dtable from order, offsets and dout, one owner per element
 */

KERNEL void embedding_forward(GLOBAL const int* ids, GLOBAL const real* table, GLOBAL real* out,
                              int n, int C)
{
    int e = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    if (e < n * C) {
        int p = e / C;
        out[e] = table[ids[p] * C + (e - p * C)];
    }
}

KERNEL void embedding_backward(GLOBAL const int* order, GLOBAL const int* offsets,
                               GLOBAL const real* dout, GLOBAL real* dtable, int V, int C)
{
    int e = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    if (e < V * C) {
        int v = e / C;
        int c = e - v * C;
        real acc = 0;
        for (int j = offsets[v]; j < offsets[v + 1]; ++j)
            acc += dout[order[j] * C + c];
        dtable[e] = acc;
    }
}
