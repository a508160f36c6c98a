/*
 * softmax.cu — softmax and log-softmax along the last axis, forward and backward, in the
 * Crosscheck kernel dialect.
 *
 * ref_numpy/softmax.py and ref_numpy/online_softmax.py are the NumPy references,
 * gpu_cupy/softmax.py the launcher (validation, the version dispatch); DIALECT.md describes the
 * dialect. Per row x of N entries:
 *
 *     m = max_j x_j,   s = sum_j exp(x_j - m),   y_i = exp(x_i - m) / s,   z_i = (x_i - m) - log s
 *
 * Masked entries (-inf) get y = 0 and z = -inf. A fully -inf row has no softmax; as in the NumPy
 * copy it is shifted by 0 instead of m = -inf (so exp(-inf - 0) = 0 and s = 0, which marks the
 * row), gives y = 0 and z = -inf, and passes zero gradient.
 *
 * Shapes (row-major, C-contiguous; the caller's leading dimensions flattened into R rows):
 *     x, y, z, dy, dx    (R, N)
 *
 * Compile-time defines (set by the launcher):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     NUM_THREADS      threads per block, a power of two (the launcher uses 256)
 *
 * Kernels (one block per row, grid (R,); thread t handles entries t, t + NUM_THREADS, ..., so a
 * row may have any length, longer than the block or not a multiple of it):
 *
 * softmax_forward_v1
 *     Three passes over the row: the block max m, the block sum s of exp(x - m), then the write
 *     of y (log_out = 0) or z (log_out = 1).
 *
 * softmax_forward_v2
 *     The online softmax (Milakov & Gimelshein 2018, arXiv:1805.02867, Algorithm 3): each thread
 *     streams its entries once keeping its state (m, l), l = sum exp(x_j - m), with one exp per
 *     entry (a new maximum rescales l by exp(m_old - m_new)); the block then merges the threads'
 *     states with the merge of ref_numpy/online_softmax.py,
 *         m = max(m_a, m_b),   l = l_a exp(m_a - m) + l_b exp(m_b - m)   (shift 0 when m = -inf),
 *     and writes y or z as v1 does: two passes over the row instead of three.
 *
 * softmax_backward
 *     dx = y (dy - sum_i dy_i y_i).
 *
 * log_softmax_backward
 *     dx = dy - exp(z) sum_i dy_i; a fully -inf row (max z = -inf) gets dx = 0.
 *
 * Block reductions (block_sum, block_max, block_merge): every thread puts its partial result in
 * shared memory and the block halves the array log2(NUM_THREADS) times with a barrier after each
 * step. The order of the additions is fixed by the thread indices alone, so every launch gives
 * the same bits. Every thread of the block calls them (their barriers are in uniform control
 * flow): no kernel returns early.
 */

/* The state of a piece of a row: m = its max, l = sum exp(x_j - m); (-inf, 0) when empty. */
typedef struct {
    real m;
    real l;
} softmax_state;

/* The state after entry x: a new maximum rescales l once (one exp per entry); a -inf entry
 * changes nothing, so a piece that is all -inf keeps (-inf, 0). */
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

/* The max of every thread's v over the block; every thread gets it. */
DEVICE real block_max(SHARED_PARAM real* scratch, real v)
{
    const int tid = THREAD_IDX_X;
    scratch[tid] = v;
    BARRIER();
    for (int span = NUM_THREADS / 2; span > 0; span /= 2) {
        if (tid < span)
            scratch[tid] = fmax(scratch[tid], scratch[tid + span]);
        BARRIER();
    }
    const real top = scratch[0];
    BARRIER();
    return top;
}

/* The merge of every thread's state over the block; every thread gets it. */
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
    BARRIER();
    return total;
}

/* y_i = exp(x_i - shift) / s, or z_i = (x_i - shift) - log s, for one row; s = 0 (a fully -inf
 * row, shift 0) divides by 1 instead, giving y = 0 and z = -inf. */
DEVICE void write_row(GLOBAL const real* x, GLOBAL real* out, int N, real m, real s, int log_out)
{
    const real shift = m == -INFINITY ? (real)0 : m;
    const real denom = s == (real)0 ? (real)1 : s;
    const real log_denom = log(denom);
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS) {
        const real xs = x[j] - shift;
        out[j] = log_out ? xs - log_denom : exp(xs) / denom;
    }
}

KERNEL void softmax_forward_v1(GLOBAL const real* x, GLOBAL real* out, int N, int log_out)
{
    SHARED real scratch[NUM_THREADS];
    const int row = BLOCK_IDX_X * N;
    real m = -INFINITY;
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS)
        m = fmax(m, x[row + j]);
    m = block_max(scratch, m);
    const real shift = m == -INFINITY ? (real)0 : m;
    real s = 0;
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS)
        s += exp(x[row + j] - shift);
    s = block_sum(scratch, s);
    write_row(x + row, out + row, N, m, s, log_out);
}

KERNEL void softmax_forward_v2(GLOBAL const real* x, GLOBAL real* out, int N, int log_out)
{
    SHARED real m_s[NUM_THREADS];
    SHARED real l_s[NUM_THREADS];
    const int row = BLOCK_IDX_X * N;
    softmax_state s = {-INFINITY, 0};
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS)
        s = push_entry(s, x[row + j]);
    s = block_merge(m_s, l_s, s);
    write_row(x + row, out + row, N, s.m, s.l, log_out);
}

KERNEL void softmax_backward(GLOBAL const real* y, GLOBAL const real* dy, GLOBAL real* dx, int N)
{
    SHARED real scratch[NUM_THREADS];
    const int row = BLOCK_IDX_X * N;
    real dot = 0;
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS)
        dot += dy[row + j] * y[row + j];
    dot = block_sum(scratch, dot);
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS)
        dx[row + j] = y[row + j] * (dy[row + j] - dot);
}

KERNEL void log_softmax_backward(GLOBAL const real* z, GLOBAL const real* dy, GLOBAL real* dx,
                                 int N)
{
    SHARED real scratch[NUM_THREADS];
    const int row = BLOCK_IDX_X * N;
    real total = 0;
    real top = -INFINITY;
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS) {
        total += dy[row + j];
        top = fmax(top, z[row + j]);
    }
    total = block_sum(scratch, total);
    top = block_max(scratch, top);
    for (int j = THREAD_IDX_X; j < N; j += NUM_THREADS)
        dx[row + j] = top == -INFINITY ? (real)0 : dy[row + j] - exp(z[row + j]) * total;
}
