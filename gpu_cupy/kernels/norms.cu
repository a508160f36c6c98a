/*
 * norms.cu — RMSNorm and LayerNorm over the last dimension, forward and backward, in the
 * Crosscheck kernel dialect.
 *
 * ref_numpy/norms.py is the NumPy reference (eps placed as in torch, inside the square root),
 * gpu_cupy/norms.py the launcher (validation, the split of the rows for the weight gradients);
 * DIALECT.md describes the dialect. Per row x of C entries:
 *
 *     RMSNorm:    r = 1 / sqrt(sum_c x_c^2 / C + eps),          xhat = x r,         y = xhat w
 *     LayerNorm:  mu = sum_c x_c / C,
 *                 r = 1 / sqrt(sum_c (x_c - mu)^2 / C + eps),   xhat = (x - mu) r,  y = xhat w + b
 *
 * The forward saves the row statistics (rstd = r, and mean = mu for LayerNorm); the backward
 * recomputes xhat from them. With g = dy w:
 *
 *     RMSNorm:    dx = r (g - xhat sum_c(g_c xhat_c) / C)
 *     LayerNorm:  dx = r (g - sum_c g_c / C - xhat sum_c(g_c xhat_c) / C)
 *     dw = sum over rows of dy xhat,   db = sum over rows of dy
 *
 * Shapes (row-major, C-contiguous; the caller's leading dimensions flattened into R rows):
 *     x, y, dy, dx       (R, C)
 *     weight, bias       (C,)
 *     rstd, mean         (R,)
 *     partial            (P, K, C)    K = 1 (dw) or 2 (dw, db); P row chunks
 *     dparams            (K, C)
 *
 * Compile-time defines (set by the launcher):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     NUM_THREADS      threads per block, a power of two (the launcher uses 256)
 *
 * Kernels:
 *
 * rmsnorm_forward, layernorm_forward, rmsnorm_backward_dx, layernorm_backward_dx
 *     One block per row, grid (R,): thread t handles entries t, t + NUM_THREADS, ... (a row may
 *     have any length, longer than the block or not a multiple of it); the row sums are block
 *     reductions (block_sum). The forward's thread 0 writes the row's statistics.
 *
 * rmsnorm_backward_dweight_partial, layernorm_backward_dweight_partial
 *     Stage 1 of the weight (and bias) gradients, a two-stage reduction over the rows without
 *     atomics: grid (ceil(C / NUM_THREADS), P); the block at (cb, p) owns columns cb·NUM_THREADS
 *     ... and rows p·rows_per_chunk ... (the last chunk may be shorter), and its thread for
 *     column c sums that column's terms over the chunk's rows in row order into
 *     partial[p][k][c] (consecutive threads read consecutive addresses of each row).
 *
 * norm_backward_dweight_reduce
 *     Stage 2: grid (ceil(K·C / NUM_THREADS),); the thread for entry k of (K, C) sums
 *     partial[0][k], partial[1][k], ... in chunk order into dparams[k].
 *
 * Determinism: every output element has exactly one writer, and every sum has an order fixed by
 * the shapes and rows_per_chunk alone (the block reductions halve an array of the threads'
 * partial sums log2(NUM_THREADS) times, a barrier after each step), so repeated launches give
 * the same bits. Every thread of a block calls block_sum (its barriers are in uniform control
 * flow); the kernels without a barrier let the threads past the last column return.
 */

/* The sum of every thread's v over the block, in a fixed tree order; every thread gets it. */
DEVICE real block_sum(SHARED_PARAM real* scratch, real v)
{
    const int tid = THREAD_IDX_X;
    scratch[tid] = v;
    BARRIER();
    for (int span = NUM_THREADS / 2; span > 0; span /= 2) {
        if (tid < span)
            scratch[tid] += scratch[tid + span];
        BARRIER();
    }
    const real total = scratch[0];
    BARRIER();   /* every thread has read scratch[0] before a next reduction overwrites it */
    return total;
}

KERNEL void rmsnorm_forward(GLOBAL const real* x, GLOBAL const real* weight, GLOBAL real* out,
                            GLOBAL real* rstd, int C, real eps)
{
    SHARED real scratch[NUM_THREADS];
    const int row = BLOCK_IDX_X * C;
    real sq = 0;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        sq += x[row + j] * x[row + j];
    sq = block_sum(scratch, sq);
    const real r = (real)1 / sqrt(sq / (real)C + eps);
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        out[row + j] = x[row + j] * r * weight[j];
    if (THREAD_IDX_X == 0)
        rstd[BLOCK_IDX_X] = r;
}

KERNEL void layernorm_forward(GLOBAL const real* x, GLOBAL const real* weight,
                              GLOBAL const real* bias, GLOBAL real* out, GLOBAL real* mean,
                              GLOBAL real* rstd, int C, real eps)
{
    SHARED real scratch[NUM_THREADS];
    const int row = BLOCK_IDX_X * C;
    real sum = 0;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        sum += x[row + j];
    const real mu = block_sum(scratch, sum) / (real)C;
    real sq = 0;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS) {
        const real xc = x[row + j] - mu;
        sq += xc * xc;
    }
    sq = block_sum(scratch, sq);
    const real r = (real)1 / sqrt(sq / (real)C + eps);
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        out[row + j] = (x[row + j] - mu) * r * weight[j] + bias[j];
    if (THREAD_IDX_X == 0) {
        mean[BLOCK_IDX_X] = mu;
        rstd[BLOCK_IDX_X] = r;
    }
}

KERNEL void rmsnorm_backward_dx(GLOBAL const real* dy, GLOBAL const real* x,
                                GLOBAL const real* weight, GLOBAL const real* rstd,
                                GLOBAL real* dx, int C)
{
    SHARED real scratch[NUM_THREADS];
    const int row = BLOCK_IDX_X * C;
    const real r = rstd[BLOCK_IDX_X];
    real dot = 0;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        dot += dy[row + j] * weight[j] * (x[row + j] * r);
    const real mean_dot = block_sum(scratch, dot) / (real)C;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        dx[row + j] = r * (dy[row + j] * weight[j] - x[row + j] * r * mean_dot);
}

KERNEL void layernorm_backward_dx(GLOBAL const real* dy, GLOBAL const real* x,
                                  GLOBAL const real* weight, GLOBAL const real* mean,
                                  GLOBAL const real* rstd, GLOBAL real* dx, int C)
{
    SHARED real scratch[NUM_THREADS];
    const int row = BLOCK_IDX_X * C;
    const real mu = mean[BLOCK_IDX_X];
    const real r = rstd[BLOCK_IDX_X];
    real sum = 0;
    real dot = 0;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS) {
        const real g = dy[row + j] * weight[j];
        sum += g;
        dot += g * ((x[row + j] - mu) * r);
    }
    const real mean_g = block_sum(scratch, sum) / (real)C;
    const real mean_dot = block_sum(scratch, dot) / (real)C;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        dx[row + j] = r * (dy[row + j] * weight[j] - mean_g
                           - (x[row + j] - mu) * r * mean_dot);
}

KERNEL void rmsnorm_backward_dweight_partial(GLOBAL const real* dy, GLOBAL const real* x,
                                             GLOBAL const real* rstd, GLOBAL real* partial,
                                             int R, int C, int rows_per_chunk)
{
    const int c = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    const int p = BLOCK_IDX_Y;
    if (c >= C)
        return;
    const int end = min(R, (p + 1) * rows_per_chunk);
    real dw = 0;
    for (int i = p * rows_per_chunk; i < end; ++i)
        dw += dy[i * C + c] * (x[i * C + c] * rstd[i]);
    partial[p * C + c] = dw;
}

KERNEL void layernorm_backward_dweight_partial(GLOBAL const real* dy, GLOBAL const real* x,
                                               GLOBAL const real* mean, GLOBAL const real* rstd,
                                               GLOBAL real* partial, int R, int C,
                                               int rows_per_chunk)
{
    const int c = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    const int p = BLOCK_IDX_Y;
    if (c >= C)
        return;
    const int end = min(R, (p + 1) * rows_per_chunk);
    real dw = 0;
    real db = 0;
    for (int i = p * rows_per_chunk; i < end; ++i) {
        dw += dy[i * C + c] * ((x[i * C + c] - mean[i]) * rstd[i]);
        db += dy[i * C + c];
    }
    partial[(2 * p) * C + c] = dw;
    partial[(2 * p + 1) * C + c] = db;
}

KERNEL void norm_backward_dweight_reduce(GLOBAL const real* partial, GLOBAL real* dparams, int P,
                                         int width)
{
    const int k = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    if (k >= width)
        return;
    real acc = 0;
    for (int p = 0; p < P; ++p)
        acc += partial[p * width + k];
    dparams[k] = acc;
}
