/*
 * cross_entropy.cu — cross-entropy from logits with ignored targets, forward and fused
 * forward + backward, in the Crosscheck kernel dialect.
 *
 * The fused kernel follows llm.c's classifier kernel (Karpathy, llm.c, fused_classifier in
 * train_gpt2.cu): one block per row computes the loss and the gradient of the logits in one
 * pass over the row's normaliser and one over its gradient, so the (N, C) probabilities are
 * never stored. ref_numpy/cross_entropy.py is the NumPy reference, gpu_cupy/cross_entropy.py the
 * launcher (validation, the count of valid targets, the reduction); DIALECT.md describes the
 * dialect. Per row n with target t = targets[n]:
 *
 *     m = max_j x_j,  l = sum_j exp(x_j - m)    (the online normaliser: one read of the row)
 *     loss_n   = log l - (x_t - m)               (= -log_softmax(x)_t), 0 when t = ignore_index
 *     dlogits  = g_n (exp(x_j - m) / l - [j = t]),   g_n = dloss[n * dloss_stride] * dloss_scale
 *                                                     and 0 when t = ignore_index
 *
 * The launcher sets g_n: dloss_stride = 1, scale 1 for reduction "none" (one upstream gradient
 * per row); dloss_stride = 0 for "sum" (scale 1) and "mean" (scale 1 / the number of valid
 * targets, 1 when there are none, so the mean over no rows is 0 with zero gradient). A -inf logit
 * is a masked class; a fully -inf row is shifted by 0 (so l = 0, which stands for 1 in the log
 * and the division) and gives the NumPy copy's loss (+inf at a valid target) and gradient.
 *
 * Shapes (row-major, C-contiguous):
 *     logits, dlogits   (N, C)       C classes, any size (50257, a prime multiple, included)
 *     targets           (N,) int     each in [0, C) or ignore_index
 *     losses            (N,)         the per-row losses (reduction "none" returns them)
 *     dloss             (N,) or (1,)
 *     loss              (1,)         the sum or mean of losses
 *
 * Compile-time defines (set by the launcher):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     NUM_THREADS      threads per block, a power of two (the launcher uses 256)
 *
 * Kernels:
 *
 * cross_entropy_forward
 *     One block per row, grid (N,): the online normaliser (each thread streams its entries j =
 *     tid, tid + NUM_THREADS, ... keeping (m, l) with one exp per entry, then the block merges
 *     the threads' states in a tree, as softmax.cu's softmax_forward_v2), then thread 0 writes
 *     losses[n].
 *
 * cross_entropy_fused
 *     cross_entropy_forward and then, in a second pass over the row, dlogits (llm.c's fused
 *     classifier): the probabilities are recomputed from (m, l), never stored.
 *
 * cross_entropy_reduce
 *     One block, grid (1,): loss = scale * sum_n losses[n] (scale 1 for "sum", 1 / the number of
 *     valid targets for "mean"), each thread summing a strided share, then a tree over the block.
 *
 * Block reductions: every thread puts its partial result in shared memory and the block halves
 * the array log2(NUM_THREADS) times with a barrier after each step, in an order fixed by the
 * thread indices alone, so every launch gives the same bits. Every thread of the block calls
 * them (the barriers are in uniform control flow).
 */

/* The state of a piece of a row: m = its max, l = sum exp(x_j - m); (-inf, 0) when empty. */
typedef struct {
    real m;
    real l;
} softmax_state;

/* The state after entry x: a new maximum rescales l once; a -inf entry changes nothing. */
DEVICE softmax_state push_entry(softmax_state s, real x)
{
    if (x > s.m) {
        s.l = s.l * exp(s.m - x) + (real)1;   /* s.m = -inf: exp(-inf) = 0 */
        s.m = x;
    } else if (x > -INFINITY) {
        s.l += exp(x - s.m);
    }
    return s;
}

/* The state of the union of two disjoint pieces (ref_numpy/online_softmax.py merge_states). */
DEVICE softmax_state merge_states(softmax_state a, softmax_state b)
{
    softmax_state r;
    r.m = fmax(a.m, b.m);
    const real shift = r.m == -INFINITY ? (real)0 : r.m;
    r.l = a.l * exp(a.m - shift) + b.l * exp(b.m - shift);
    return r;
}

/* The merge of every thread's state over the block, in a fixed tree order; every thread gets
 * it. */
DEVICE softmax_state block_merge(SHARED_PARAM real* m_s, SHARED_PARAM real* l_s, softmax_state s)
{
    const int tid = THREAD_IDX_X;
    m_s[tid] = s.m;
    l_s[tid] = s.l;
    BARRIER();
    for (int span = NUM_THREADS / 2; span > 0; span /= 2) {
        if (tid < span) {
            softmax_state a = {m_s[tid], l_s[tid]};
            softmax_state b = {m_s[tid + span], l_s[tid + span]};
            softmax_state r = merge_states(a, b);
            m_s[tid] = r.m;
            l_s[tid] = r.l;
        }
        BARRIER();
    }
    softmax_state total = {m_s[0], l_s[0]};
    BARRIER();   /* every thread has read the result before the arrays are written again */
    return total;
}

/* The normaliser of row x (C entries) as the state (shift, l): shift = m, or 0 for a fully
 * -inf row, whose l = 0 is replaced by 1 (the NumPy copy's convention). Every thread gets it. */
DEVICE softmax_state row_normaliser(SHARED_PARAM real* m_s, SHARED_PARAM real* l_s,
                                    GLOBAL const real* x, int C)
{
    softmax_state s = {-INFINITY, 0};
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS)
        s = push_entry(s, x[j]);
    s = block_merge(m_s, l_s, s);
    if (s.m == -INFINITY) {
        s.m = 0;
        s.l = 1;
    }
    return s;
}

/* loss_n = log l - (x_t - shift), 0 at an ignored target; written by thread 0. */
DEVICE void write_loss(GLOBAL real* losses, GLOBAL const real* x, softmax_state s, int t,
                       int ignore_index)
{
    if (THREAD_IDX_X == 0)
        losses[BLOCK_IDX_X] = t == ignore_index ? (real)0 : log(s.l) - (x[t] - s.m);
}

KERNEL void cross_entropy_forward(GLOBAL const real* logits, GLOBAL const int* targets,
                                  GLOBAL real* losses, int C, int ignore_index)
{
    SHARED real m_s[NUM_THREADS];
    SHARED real l_s[NUM_THREADS];
    GLOBAL const real* x = logits + BLOCK_IDX_X * C;
    const int t = targets[BLOCK_IDX_X];
    const softmax_state s = row_normaliser(m_s, l_s, x, C);
    write_loss(losses, x, s, t, ignore_index);
}

KERNEL void cross_entropy_fused(GLOBAL const real* logits, GLOBAL const int* targets,
                                GLOBAL const real* dloss, int dloss_stride, real dloss_scale,
                                GLOBAL real* losses, GLOBAL real* dlogits, int C,
                                int ignore_index)
{
    SHARED real m_s[NUM_THREADS];
    SHARED real l_s[NUM_THREADS];
    const int n = BLOCK_IDX_X;
    GLOBAL const real* x = logits + n * C;
    GLOBAL real* dx = dlogits + n * C;
    const int t = targets[n];
    const softmax_state s = row_normaliser(m_s, l_s, x, C);
    write_loss(losses, x, s, t, ignore_index);
    const real g = t == ignore_index ? (real)0 : dloss[n * dloss_stride] * dloss_scale;
    for (int j = THREAD_IDX_X; j < C; j += NUM_THREADS) {
        const real p = exp(x[j] - s.m) / s.l;
        dx[j] = g * (j == t ? p - (real)1 : p);
    }
}

KERNEL void cross_entropy_reduce(GLOBAL const real* losses, GLOBAL real* loss, int N, real scale)
{
    SHARED real scratch[NUM_THREADS];
    const int tid = THREAD_IDX_X;
    real acc = 0;
    for (int n = tid; n < N; n += NUM_THREADS)
        acc += losses[n];
    scratch[tid] = acc;
    BARRIER();
    for (int span = NUM_THREADS / 2; span > 0; span /= 2) {
        if (tid < span)
            scratch[tid] += scratch[tid + span];
        BARRIER();
    }
    if (tid == 0)
        loss[0] = scratch[0] * scale;
}
