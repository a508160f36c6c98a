/*
 * gemm.cu — tiled matrix products for the linear layers in the Crosscheck kernel dialect:
 * C = op(A) op(B) (+ bias) and the bias gradient.
 *
 * ref_numpy/linear.py is the NumPy reference of the layer; gpu_cupy/gemm.py is the launcher
 * (validation, tile sizes, which product each pass uses). DIALECT.md describes the dialect. With
 * W stored (C_in, C_out) as in ref_numpy/linear.py and x flattened to (M, C_in):
 *
 *     forward   y  = x W + b        gemm_nn   (M, C_in)  (C_in, C_out)
 *     backward  dx = dy W^T         gemm_nt   (M, C_out) (C_in, C_out)^T
 *               dW = x^T dy         gemm_tn   (M, C_in)^T (M, C_out)
 *               db = sum_m dy[m]    bias_grad
 *
 * Shapes (row-major, C-contiguous), for C (M, N) = op(A) (M, K) op(B) (K, N):
 *     gemm_nn   a (M, K), b (K, N)
 *     gemm_nt   a (M, K), b (N, K)       op(B) = B^T
 *     gemm_tn   a (K, M), b (K, N)       op(A) = A^T
 *     bias      (N,), read when has_bias (otherwise any pointer, never read)
 *     c         (M, N)
 *     bias_grad dc (M, N) -> db (N,)
 * Any M, N, K >= 1 (the launcher handles empty products without a launch): tiles at the ragged
 * edges are padded with zeros when staged, and their rows and columns past M, N are not
 * written.
 *
 * Compile-time defines (set by the launcher; one program per tiling and dtype):
 *     REAL_IS_DOUBLE       real = double (else float)
 *     TILE_M, TILE_N       the block's tile of C; any positive values, not only powers of two
 *     TILE_K               depth of the A and B tiles staged per step
 *     THREAD_M, THREAD_N   each thread's sub-tile of C, in registers; divide TILE_M, TILE_N
 *     NUM_THREADS          (TILE_M / THREAD_M) * (TILE_N / THREAD_N)
 *
 * Kernels (one version each; the three products share one body, gemm_block):
 *
 * gemm_nn, gemm_nt, gemm_tn
 *     One block per (TILE_M, TILE_N) tile of C, grid (ceil(N / TILE_N), ceil(M / TILE_M)). The
 *     block walks K in steps of TILE_K and per step
 *       1. stages the (TILE_M, TILE_K) tile of op(A) and the (TILE_K, TILE_N) tile of op(B) in
 *          shared memory; consecutive threads read consecutive addresses of A and B whichever
 *          way each is stored (along k for a row-major A, along m for a transposed one);
 *       2. each thread multiplies its THREAD_M x THREAD_N sub-tile out of the staged tiles:
 *          rows ty + i * (TILE_M / THREAD_M), columns tx + j * (TILE_N / THREAD_N), so that
 *          neighbouring threads read neighbouring shared words and write neighbouring columns.
 *     Shared tiles are stored k-major with rows padded by one word (TILE_M + 1, TILE_N + 1), so
 *     that the staging writes of both layouts fall into different banks.
 *     At the end c = sum (+ bias[n]) is written for the rows and columns inside C.
 *
 * bias_grad
 *     db[n] = sum_m dc[m, n]. A block owns BIAS_COLS consecutive columns (coalesced reads) and
 *     splits the rows into ROW_SPLIT interleaved slices of ROW_CHUNK rows; each slice sums its
 *     rows as the products do (below), and one thread per column adds the slices in order.
 *
 * How the sums are kept. Each element of C (and of db) is summed in two levels, as in
 * flash_attention.cu: a step's TILE_K products (ROW_CHUNK rows for db) are summed from zero, and
 * that partial sum is added into the running sum with Kahan's compensated addition (kahan_add;
 * Kahan 1965, Higham 2002 section 4.3). The error of an element is then that of one step's sum
 * plus a few roundings, however long K is: the backward of a vocabulary projection sums dx over
 * 50257 columns, where one running float32 sum would add a rounding per step. kahan_add has no
 * multiplication, so FMA contraction (NVRTC by default, clang within an expression) can fuse
 * only the products inside a step's partial sum, which makes them more accurate, not less.
 *
 * No float atomics and no split of K across blocks: every element of C and db has one owner,
 * which sums in a fixed order, so two launches give bit-identical results.
 */

#define THREADS_M (TILE_M / THREAD_M)          /* threads along the rows of the tile */
#define THREADS_N (TILE_N / THREAD_N)          /* threads along its columns */
#define A_STRIDE (TILE_M + 1)                  /* a_tile[k][m], rows padded by one word */
#define B_STRIDE (TILE_N + 1)                  /* b_tile[k][n] */
#define PER_THREAD (THREAD_M * THREAD_N)       /* accumulators per thread */
/* bias_grad: columns per block, row slices per column, rows per partial sum. */
#define BIAS_COLS (NUM_THREADS < 32 ? NUM_THREADS : 32)
#define ROW_SPLIT (NUM_THREADS / BIAS_COLS)
#define ROW_CHUNK 32

/* A running sum with Kahan's compensation: the value is sum - comp. */
typedef struct {
    real sum;
    real comp;
} kahan_t;

DEVICE kahan_t kahan_add(kahan_t a, real x)
{
    real y = x - a.comp;
    real t = a.sum + y;
    a.comp = (t - a.sum) - y;
    a.sum = t;
    return a;
}

/* a_tile[k][m] = op(A)[m0 + m][k0 + k], zero outside (M, K). A is (M, K) row-major, or (K, M)
 * when trans (op(A) = A^T); the index order makes consecutive threads read consecutive
 * addresses either way. */
DEVICE void load_a_tile(SHARED_PARAM real* a_tile, GLOBAL const real* a, int m0, int k0, int M,
                        int K, int trans)
{
    for (int e = THREAD_IDX_X; e < TILE_M * TILE_K; e += NUM_THREADS) {
        int m = trans ? e % TILE_M : e / TILE_K;
        int k = trans ? e / TILE_M : e % TILE_K;
        int gm = m0 + m;
        int gk = k0 + k;
        a_tile[k * A_STRIDE + m] =
            (gm < M && gk < K) ? a[trans ? gk * M + gm : gm * K + gk] : (real)0;
    }
}

/* b_tile[k][n] = op(B)[k0 + k][n0 + n], zero outside (K, N). B is (K, N) row-major, or (N, K)
 * when trans (op(B) = B^T). */
DEVICE void load_b_tile(SHARED_PARAM real* b_tile, GLOBAL const real* b, int k0, int n0, int K,
                        int N, int trans)
{
    for (int e = THREAD_IDX_X; e < TILE_K * TILE_N; e += NUM_THREADS) {
        int k = trans ? e % TILE_K : e / TILE_N;
        int n = trans ? e / TILE_K : e % TILE_N;
        int gk = k0 + k;
        int gn = n0 + n;
        b_tile[k * B_STRIDE + n] =
            (gk < K && gn < N) ? b[trans ? gn * K + gk : gk * N + gn] : (real)0;
    }
}

/* The block's (TILE_M, TILE_N) tile of C = op(A) op(B) (+ bias). Every thread of the block
 * calls it; trans_a, trans_b and has_bias are the same for all of them. */
DEVICE void gemm_block(SHARED_PARAM real* a_tile, SHARED_PARAM real* b_tile,
                       GLOBAL const real* a, GLOBAL const real* b, GLOBAL const real* bias,
                       GLOBAL real* c, int M, int N, int K, int trans_a, int trans_b,
                       int has_bias)
{
    const int tid = THREAD_IDX_X;
    const int tx = tid % THREADS_N;
    const int ty = tid / THREADS_N;
    const int n0 = BLOCK_IDX_X * TILE_N;
    const int m0 = BLOCK_IDX_Y * TILE_M;
    /* acc[i * THREAD_N + j] is C[m0 + ty + i * THREADS_M][n0 + tx + j * THREADS_N]. */
    kahan_t acc[PER_THREAD];
    UNROLL
    for (int u = 0; u < PER_THREAD; ++u) {
        acc[u].sum = 0;
        acc[u].comp = 0;
    }

    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        BARRIER();  /* the previous step's tiles are consumed */
        load_a_tile(a_tile, a, m0, k0, M, K, trans_a);
        load_b_tile(b_tile, b, k0, n0, K, N, trans_b);
        BARRIER();

        real part[PER_THREAD];
        UNROLL
        for (int u = 0; u < PER_THREAD; ++u)
            part[u] = 0;
        for (int k = 0; k < TILE_K; ++k) {
            real a_frag[THREAD_M];
            real b_frag[THREAD_N];
            UNROLL
            for (int i = 0; i < THREAD_M; ++i)
                a_frag[i] = a_tile[k * A_STRIDE + ty + i * THREADS_M];
            UNROLL
            for (int j = 0; j < THREAD_N; ++j)
                b_frag[j] = b_tile[k * B_STRIDE + tx + j * THREADS_N];
            UNROLL
            for (int i = 0; i < THREAD_M; ++i) {
                UNROLL
                for (int j = 0; j < THREAD_N; ++j)
                    part[i * THREAD_N + j] += a_frag[i] * b_frag[j];
            }
        }
        UNROLL
        for (int u = 0; u < PER_THREAD; ++u)
            acc[u] = kahan_add(acc[u], part[u]);
    }

    UNROLL
    for (int i = 0; i < THREAD_M; ++i) {
        int m = m0 + ty + i * THREADS_M;
        UNROLL
        for (int j = 0; j < THREAD_N; ++j) {
            int n = n0 + tx + j * THREADS_N;
            if (m < M && n < N) {
                real value = acc[i * THREAD_N + j].sum - acc[i * THREAD_N + j].comp;
                c[m * N + n] = has_bias ? value + bias[n] : value;
            }
        }
    }
}

KERNEL void gemm_nn(GLOBAL const real* a, GLOBAL const real* b, GLOBAL const real* bias,
                    GLOBAL real* c, int M, int N, int K, int has_bias)
{
    SHARED real a_tile[TILE_K * A_STRIDE];
    SHARED real b_tile[TILE_K * B_STRIDE];
    gemm_block(a_tile, b_tile, a, b, bias, c, M, N, K, 0, 0, has_bias);
}

KERNEL void gemm_nt(GLOBAL const real* a, GLOBAL const real* b, GLOBAL const real* bias,
                    GLOBAL real* c, int M, int N, int K, int has_bias)
{
    SHARED real a_tile[TILE_K * A_STRIDE];
    SHARED real b_tile[TILE_K * B_STRIDE];
    gemm_block(a_tile, b_tile, a, b, bias, c, M, N, K, 0, 1, has_bias);
}

KERNEL void gemm_tn(GLOBAL const real* a, GLOBAL const real* b, GLOBAL const real* bias,
                    GLOBAL real* c, int M, int N, int K, int has_bias)
{
    SHARED real a_tile[TILE_K * A_STRIDE];
    SHARED real b_tile[TILE_K * B_STRIDE];
    gemm_block(a_tile, b_tile, a, b, bias, c, M, N, K, 1, 0, has_bias);
}

KERNEL void bias_grad(GLOBAL const real* dc, GLOBAL real* db, int M, int N)
{
    SHARED real slice_sums[ROW_SPLIT * BIAS_COLS];
    const int tid = THREAD_IDX_X;
    const int col = tid % BIAS_COLS;
    const int slice = tid / BIAS_COLS;             /* >= ROW_SPLIT: a spare thread, idle */
    const int n = BLOCK_IDX_X * BIAS_COLS + col;
    if (slice < ROW_SPLIT) {
        kahan_t acc;
        acc.sum = 0;
        acc.comp = 0;
        if (n < N) {
            /* Slice s sums the chunks of rows s, s + ROW_SPLIT, s + 2 ROW_SPLIT, ... */
            for (int r0 = slice * ROW_CHUNK; r0 < M; r0 += ROW_SPLIT * ROW_CHUNK) {
                int r_end = min(r0 + ROW_CHUNK, M);
                real part = 0;
                for (int m = r0; m < r_end; ++m)
                    part += dc[m * N + n];
                acc = kahan_add(acc, part);
            }
        }
        slice_sums[slice * BIAS_COLS + col] = acc.sum - acc.comp;
    }
    BARRIER();
    if (slice == 0 && n < N) {
        real total = 0;
        for (int s = 0; s < ROW_SPLIT; ++s)
            total += slice_sums[s * BIAS_COLS + col];
        db[n] = total;
    }
}
