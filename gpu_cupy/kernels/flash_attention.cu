/*
 * flash_attention.cu — FlashAttention forward and backward in the Crosscheck kernel dialect.
 *
 * Follows FlashAttention (Dao, Fu, Ermon, Rudra, Ré 2022, arXiv:2205.14135) in the loop order of
 * FlashAttention-2 (Dao 2023, arXiv:2307.08691); ref_numpy/flash_attention.py is the step-by-step
 * NumPy reference of the same tiling, gpu_cupy/flash_attention.py the launcher (validation, block
 * sizes, the version dispatch). The same text runs on CUDA (CuPy) and on OpenCL (PoCL on a CPU);
 * the dialect is described in DIALECT.md.
 *
 *     S = scale * Q K^T + mask          (Tq, Tk) per (batch, head), never stored whole
 *     O = softmax(S) V                  lse = log(sum_j exp(S_ij)) per query row
 *
 * Shapes (row-major, C-contiguous):
 *     q, out, dout, dq   (B, H, Tq, D)
 *     k, v, dk, dv       (B, Hkv, Tk, D)      GQA: query head h reads kv head h / (H / Hkv)
 *     lse, drow          (B, H, Tq)
 * Causal masking is bottom-right aligned: query i sees key j iff j <= i + (Tk - Tq). A query row
 * that sees no key gets O = 0, lse = -inf and zero gradient.
 *
 * Compile-time defines (set by the launcher; a program is built once per combination):
 *     REAL_IS_DOUBLE     real = double (else float)
 *     HEAD_DIM           D, 1..256
 *     BLOCK_Q, BLOCK_K   query / key rows per tile; any positive value, not only powers of two
 *     NUM_THREADS        threads per block (the launcher uses 128)
 *     FLASH_FORWARD or FLASH_BACKWARD   which pass the program holds: the two passes choose
 *                        their tiles separately, and a program holds only kernels whose shared
 *                        memory fits at its tile sizes
 * Every tile row in shared memory has stride HEAD_DIM + 1: threads that read different rows at
 * the same column then fall into different shared-memory banks.
 *
 * Kernels (the launcher's `version` picks the forward; the backward has one version):
 *
 * flash_attention_forward_v1
 *     One block per (query tile, head, batch). The Q tile is staged in shared memory once; the
 *     block walks the K/V tiles, staging each in shared memory, and per tile
 *       1. all threads compute the score tile S = scale Q K^T (masked entries -inf),
 *       2. one thread per query row runs the online-softmax step (running max m, running sum l,
 *          rescale factor alpha = exp(m_old - m_new)) and turns the row of S into P = exp(S - m),
 *       3. all threads update their share of the output accumulator O = alpha O + P V, which
 *          lives in registers (ceil(BLOCK_Q * D / NUM_THREADS) values per thread).
 *     Causal: key tiles wholly right of the staircase are skipped (the loop stops early).
 *     At the end O / l is written, and lse = m + log(l).
 *
 * flash_attention_backward_rows
 *     Two numbers per query row, one block per (query tile, head, batch), by the same walk
 *     over key tiles as the forward:
 *       Drow_i = sum_j P_ij dP_ij, P_ij = exp(S_ij - lse_i) / psum_i and dP_ij = dO_i . V_j,
 *         the term that the softmax backward subtracts, dS = P (dP - Drow), computed once
 *         instead of once per key tile. Mathematically it is dO_i . O_i (FlashAttention's
 *         form), but that takes O's own rounding into dP - Drow, which cancels where a row sees
 *         few keys: at Tq = 799, Tk = 3, D = 160, causal, float32, the dk of the last key (one
 *         term) was 1.025 x FlashAttention's bar with dO . O and is 0.33 with this sum. Here
 *         the dP are those of the gradient kernels (the same dot_rows), so where a row has a
 *         single visible key (P = 1) Drow = dP exactly and dP - Drow, that row's dS, is 0;
 *       psum_i = sum_j exp(S_ij - lse_i), 1 up to rounding, by the same walk over key tiles as
 *         the forward. The other two kernels use P_ij = exp(S_ij - lse_i) / psum_i. The lse that
 *         the forward returns is rounded to the element type and carries the rounding of every
 *         online-softmax rescale (alpha = exp(m_old - m_new) multiplies l), a few ulps of |lse|
 *         in float32; exp(S - lse) turns that into the same relative error in every P of the
 *         row, which dQ, dK and dV inherit. Dividing by psum cancels it, as the naive softmax's
 *         division by its own sum does. Measured on PoCL, float32, flash_gpu/causal-tq>tk
 *         (Tq = 29, Tk = 13, D = 64, tiles 12 x 5): dq error / FlashAttention's bar 1.52 with
 *         exp(S - lse), 0.76 with the forward's lse replaced by the float64 one rounded to
 *         float32, 0.63 with the division by psum. The price is one dot product per (query,
 *         key) pair more, and Drow's sum another, about 2/7 of the backward's arithmetic.
 *
 * flash_attention_backward_dkdv
 *     One block per (key tile, kv head, batch); dK and dV of the tile live in registers. The block
 *     loops over every query head of its GQA group and every query tile that can see the key tile
 *     (causal: earlier query tiles are skipped), recomputing P = exp(S - lse) / psum from the
 *     saved lse and the rows kernel's psum,
 *         dV += P^T dO,   dP = dO V^T,   dS = P (dP - Drow),   dK += scale dS^T Q.
 *
 * flash_attention_backward_dq
 *     One block per (query tile, head, batch); dQ of the tile lives in registers. Same walk over
 *     key tiles as the forward, recomputing P (as the dK/dV kernel) and dS, dQ += scale dS K.
 *
 * How the running sums are kept. Every accumulator (O and l in the forward, psum, dQ, dK and dV
 * in the backward) is summed in two levels: each tile's contribution is first summed on its
 * own, from zero, over the tile's BLOCK_Q (dK, dV) or BLOCK_K (O, l, psum, dQ) terms, and that
 * partial sum is then added into the running sum with Kahan's compensated addition (kahan_add;
 * Kahan 1965, Higham 2002 section 4.3). The error of an element is then that of one tile's sum
 * plus a few roundings, whatever the number of tiles. A plain running sum adds one rounding per
 * term: a dK/dV element sums the G * Tq query rows of its GQA group, and its float32 error grew
 * with G * Tq until it was several times that of a BLAS matmul (which sums in blocks). Measured
 * on PoCL, float32, MQA (H = 4, Hkv = 1), Tk = 64, D = 64, tiles 12 x 10, one draw per length,
 * error of dk against float64 divided by FlashAttention's bar (2 x the naive float32 attention's
 * error + 2 max|(r + 0.3) - 0.3 - r|; above 1 fails):
 *
 *     G * Tq                  128    512   2048   8192  16384
 *     one running sum        0.40   0.92   1.43   2.50   5.65
 *     tile sums + Kahan      0.09   0.17   0.19   0.11   0.16
 *
 * (max |dk error| 8.2e-7 -> 7.2e-5 with one running sum, 1.9e-7 -> 2.0e-6 now, against the naive
 * attention's 9.2e-7 -> 5.9e-6.) The Kahan pair and the psum pass did not slow the kernels on
 * PoCL: B = 1, H = 4, Hkv = 2, Tq = Tk = 512, causal, float32, default tiles, forward + backward
 * 484 -> 311 ms at D = 64 and 1442 -> 986 ms at D = 128 (the smaller default tiles that the
 * register budget now picks give PoCL more work-groups; timings on a shared 2-core machine).
 *
 * Why this survives FMA contraction (NVRTC contracts a * b + c into an FMA by default, PoCL's
 * clang within one expression): kahan_add has no multiplication, so none of its additions can
 * be fused, and the partial sums it is given may be FMA chains (more accurate, not less). The
 * one product that feeds it, the forward's rescaling sum = alpha * sum, may be fused with the
 * next addition on CUDA; the value the pair represents (sum - comp) is the same either way,
 * alpha * sum rounded once plus the tile's partial sum, because the compensation is computed
 * against the rounded product in both cases. So no __fadd_rn-style helper is needed, and CUDA
 * and OpenCL keep the same arithmetic. The price is a second register per accumulator, which
 * the launcher counts against its register budget (smaller default tiles).
 *
 * Why two backward passes instead of one with atomics: in FlashAttention-2's single backward
 * pass, every key-tile block adds into all of dQ, so dQ needs atomicAdd on floating point.
 * OpenCL C has no floating-point atomic add (cl_ext_float_atomics is optional and absent on
 * PoCL), and float atomics make the summation order, and so the float32 result, differ from run
 * to run. Splitting the work so that every output element has exactly one owner — dK/dV by key
 * tile, dQ by query tile — is race-free, deterministic and needs nothing beyond barriers. The
 * price is computing S, P and dS twice (once per pass), about 1.4x the FLOPs of a fused pass.
 * GQA needs no atomics either: a dK/dV block owns one kv head and sums over the query heads of
 * its group itself.
 */

#define ROW_STRIDE (HEAD_DIM + 1)
/* Register accumulators per thread: a (BLOCK_Q, D) or (BLOCK_K, D) tile spread over the block. */
#define Q_TILE_PER_THREAD ((BLOCK_Q * HEAD_DIM + NUM_THREADS - 1) / NUM_THREADS)
#define K_TILE_PER_THREAD ((BLOCK_K * HEAD_DIM + NUM_THREADS - 1) / NUM_THREADS)

/* A running sum with Kahan's compensation: the value is sum - comp, comp being what the last
 * additions rounded away. */
typedef struct {
    real sum;
    real comp;
} kahan_t;

/* a + x, compensated: x is first corrected by the previous rounding error, and the error of
 * this addition, (t - sum) - y, is kept for the next one. */
DEVICE kahan_t kahan_add(kahan_t a, real x)
{
    real y = x - a.comp;
    real t = a.sum + y;
    a.comp = (t - a.sum) - y;
    a.sum = t;
    return a;
}

/* An empty running sum. */
DEVICE kahan_t kahan_zero(void)
{
    kahan_t z;
    z.sum = 0;
    z.comp = 0;
    return z;
}

/* Query i may attend key j: both in range and, when causal, j <= i + (Tk - Tq). */
DEVICE int visible(int i, int j, int Tq, int Tk, int causal)
{
    return i < Tq && j < Tk && (!causal || j <= i + (Tk - Tq));
}

/* tile[r][d] = src[row0 + r][d] for r < rows, zero for rows past n_rows (the ragged last tile).
 * Consecutive threads read consecutive addresses of src. */
DEVICE void load_rows(SHARED_PARAM real* tile, GLOBAL const real* src, int row0, int n_rows,
                      int rows)
{
    for (int e = THREAD_IDX_X; e < rows * HEAD_DIM; e += NUM_THREADS) {
        int r = e / HEAD_DIM;
        int d = e % HEAD_DIM;
        tile[r * ROW_STRIDE + d] = (row0 + r < n_rows) ? src[(row0 + r) * HEAD_DIM + d] : (real)0;
    }
}

/* One value per query row of the tile: vec[r] = src[row0 + r], `fill` past n_rows. */
DEVICE void load_row_values(SHARED_PARAM real* vec, GLOBAL const real* src, int row0, int n_rows,
                            real fill)
{
    for (int r = THREAD_IDX_X; r < BLOCK_Q; r += NUM_THREADS)
        vec[r] = (row0 + r < n_rows) ? src[row0 + r] : fill;
}

/* sum_d a[d] b[d] over one row of each of two shared tiles, in DOT_LANES interleaved partial
 * sums (lane l sums d = l, l + DOT_LANES, ...) added pairwise at the end: each partial sum has
 * HEAD_DIM / DOT_LANES terms, as in a SIMD BLAS dot product, instead of one chain of HEAD_DIM. */
#define DOT_LANES 8
DEVICE real dot_rows(SHARED_PARAM const real* a, SHARED_PARAM const real* b)
{
    real lane[DOT_LANES];
    UNROLL
    for (int l = 0; l < DOT_LANES; ++l)
        lane[l] = 0;
    for (int d0 = 0; d0 < HEAD_DIM; d0 += DOT_LANES) {
        UNROLL
        for (int l = 0; l < DOT_LANES; ++l)
            if (d0 + l < HEAD_DIM)
                lane[l] += a[d0 + l] * b[d0 + l];
    }
    UNROLL
    for (int width = DOT_LANES / 2; width > 0; width /= 2) {
        UNROLL
        for (int l = 0; l < width; ++l)
            lane[l] += lane[l + width];
    }
    return lane[0];
}

/* End of the key range a query tile needs: keys [0, k_end). Causal: the tile's last row
 * i_last sees keys j <= i_last + (Tk - Tq), so later key tiles are skipped. */
DEVICE int key_end(int q0, int Tq, int Tk, int causal)
{
    int i_last = min(q0 + BLOCK_Q, Tq) - 1;
    return causal ? max(0, min(Tk, i_last + (Tk - Tq) + 1)) : Tk;
}

#ifdef FLASH_FORWARD

KERNEL void flash_attention_forward_v1(GLOBAL const real* q, GLOBAL const real* k,
                                       GLOBAL const real* v, GLOBAL real* out, GLOBAL real* lse,
                                       int H, int Hkv, int Tq, int Tk, real scale, int causal)
{
    SHARED real q_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real k_tile[BLOCK_K * ROW_STRIDE];
    SHARED real v_tile[BLOCK_K * ROW_STRIDE];
    SHARED real s_tile[BLOCK_Q * BLOCK_K];   /* scores, then probabilities P = exp(S - m) */
    SHARED real row_max[BLOCK_Q];            /* m: running max of the row's scores */
    SHARED kahan_t row_sum[BLOCK_Q];         /* l: running sum of exp(S - m), compensated */
    SHARED real row_rescale[BLOCK_Q];        /* alpha = exp(m_old - m_new) of the current tile */

    const int tid = THREAD_IDX_X;
    const int q0 = BLOCK_IDX_X * BLOCK_Q;
    const int h = BLOCK_IDX_Y;
    const int b = BLOCK_IDX_Z;
    const int kvh = h / (H / Hkv);
    GLOBAL const real* q_bh = q + (b * H + h) * Tq * HEAD_DIM;
    GLOBAL const real* k_bh = k + (b * Hkv + kvh) * Tk * HEAD_DIM;
    GLOBAL const real* v_bh = v + (b * Hkv + kvh) * Tk * HEAD_DIM;

    load_rows(q_tile, q_bh, q0, Tq, BLOCK_Q);
    for (int r = tid; r < BLOCK_Q; r += NUM_THREADS) {
        row_max[r] = -INFINITY;
        row_sum[r] = kahan_zero();
    }
    /* This thread's entries e = tid + u * NUM_THREADS of the (BLOCK_Q, D) output tile. */
    kahan_t o_acc[Q_TILE_PER_THREAD];
    UNROLL
    for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
        o_acc[u] = kahan_zero();
    }

    const int k_end = key_end(q0, Tq, Tk, causal);
    for (int k0 = 0; k0 < k_end; k0 += BLOCK_K) {
        BARRIER();  /* the previous tile's P and V are consumed; q_tile, row stats are written */
        load_rows(k_tile, k_bh, k0, Tk, BLOCK_K);
        load_rows(v_tile, v_bh, k0, Tk, BLOCK_K);
        BARRIER();

        /* 1. S_rc = scale * q_r . k_c, or -inf where query q0+r may not see key k0+c. */
        for (int e = tid; e < BLOCK_Q * BLOCK_K; e += NUM_THREADS) {
            int r = e / BLOCK_K;
            int c = e % BLOCK_K;
            s_tile[e] = visible(q0 + r, k0 + c, Tq, Tk, causal)
                            ? scale * dot_rows(q_tile + r * ROW_STRIDE, k_tile + c * ROW_STRIDE)
                            : -INFINITY;
        }
        BARRIER();

        /* 2. Online softmax, one thread per row:
         *    m_new = max(m_old, max_c S_rc),  alpha = exp(m_old - m_new),
         *    P_rc = exp(S_rc - m_new),        l = alpha l + sum_c P_rc.
         *    A row with no visible key so far keeps m = -inf and P = 0 (alpha = 1 avoids the
         *    exp(-inf - (-inf)) = NaN). */
        for (int r = tid; r < BLOCK_Q; r += NUM_THREADS) {
            real m_old = row_max[r];
            real m_new = m_old;
            for (int c = 0; c < BLOCK_K; ++c)
                m_new = fmax(m_new, s_tile[r * BLOCK_K + c]);
            real alpha = 1;
            real p_sum = 0;
            if (m_new == -INFINITY) {
                for (int c = 0; c < BLOCK_K; ++c)
                    s_tile[r * BLOCK_K + c] = 0;
            } else {
                alpha = exp(m_old - m_new);
                for (int c = 0; c < BLOCK_K; ++c) {
                    real p = exp(s_tile[r * BLOCK_K + c] - m_new);
                    s_tile[r * BLOCK_K + c] = p;
                    p_sum += p;
                }
            }
            kahan_t l = row_sum[r];
            l.sum = alpha * l.sum;
            l.comp = alpha * l.comp;
            row_max[r] = m_new;
            row_sum[r] = kahan_add(l, p_sum);
            row_rescale[r] = alpha;
        }
        BARRIER();

        /* 3. O_rd = alpha_r O_rd + sum_c P_rc V_cd for this thread's entries: the tile's sum
         *    from zero, then added into the rescaled running sum with compensation. */
        UNROLL
        for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
            int e = tid + u * NUM_THREADS;
            if (e < BLOCK_Q * HEAD_DIM) {
                int r = e / HEAD_DIM;
                int d = e % HEAD_DIM;
                real part = 0;
                for (int c = 0; c < BLOCK_K; ++c)
                    part += s_tile[r * BLOCK_K + c] * v_tile[c * ROW_STRIDE + d];
                kahan_t o = o_acc[u];
                o.sum = row_rescale[r] * o.sum;
                o.comp = row_rescale[r] * o.comp;
                o_acc[u] = kahan_add(o, part);
            }
        }
    }
    BARRIER();  /* row_sum, row_max final (also when the loop ran zero times) */

    /* O = O / l and lse = m + log(l); a row that saw no key (l = 0) gets O = 0, lse = -inf. */
    UNROLL
    for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
        int e = tid + u * NUM_THREADS;
        int r = e / HEAD_DIM;
        if (e < BLOCK_Q * HEAD_DIM && q0 + r < Tq) {
            real l = row_sum[r].sum - row_sum[r].comp;
            real o = l > 0 ? (o_acc[u].sum - o_acc[u].comp) / l : (real)0;
            out[((b * H + h) * Tq + q0 + r) * HEAD_DIM + e % HEAD_DIM] = o;
        }
    }
    for (int r = tid; r < BLOCK_Q; r += NUM_THREADS) {
        if (q0 + r < Tq) {
            real l = row_sum[r].sum - row_sum[r].comp;
            lse[(b * H + h) * Tq + q0 + r] = l > 0 ? row_max[r] + log(l) : -INFINITY;
        }
    }
}

#endif /* FLASH_FORWARD */

#ifdef FLASH_BACKWARD

/* exp(scale q_r . k_c - lse_r), the unnormalised P of one visible (query, key) pair, from rows
 * of the staged tiles. The rows kernel sums it into psum; the gradient kernels divide it by
 * psum. All three take it from here, so they round it alike, and so do their dP (dot_rows). */
DEVICE real p_unnormalised(SHARED_PARAM const real* q_row, SHARED_PARAM const real* k_row,
                           real scale, real lse_r)
{
    return exp(scale * dot_rows(q_row, k_row) - lse_r);
}

KERNEL void flash_attention_backward_rows(GLOBAL const real* q, GLOBAL const real* k,
                                          GLOBAL const real* v, GLOBAL const real* dout,
                                          GLOBAL const real* lse, GLOBAL real* drow,
                                          GLOBAL real* psum,
                                          int H, int Hkv, int Tq, int Tk, real scale, int causal)
{
    /* Per query row: psum_i = sum_j exp(S_ij - lse_i) and
     * Drow_i = sum_j exp(S_ij - lse_i) dP_ij / psum_i, dP_ij = dO_i . V_j. */
    SHARED real q_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real do_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real k_tile[BLOCK_K * ROW_STRIDE];
    SHARED real v_tile[BLOCK_K * ROW_STRIDE];
    SHARED real p_tile[BLOCK_Q * BLOCK_K];      /* exp(S - lse) */
    SHARED real pdp_tile[BLOCK_Q * BLOCK_K];    /* exp(S - lse) dP */
    SHARED real lse_tile[BLOCK_Q];
    SHARED kahan_t row_psum[BLOCK_Q];
    SHARED kahan_t row_drow[BLOCK_Q];

    const int tid = THREAD_IDX_X;
    const int q0 = BLOCK_IDX_X * BLOCK_Q;
    const int h = BLOCK_IDX_Y;
    const int b = BLOCK_IDX_Z;
    const int kvh = h / (H / Hkv);
    const int bh = b * H + h;
    GLOBAL const real* k_bh = k + (b * Hkv + kvh) * Tk * HEAD_DIM;
    GLOBAL const real* v_bh = v + (b * Hkv + kvh) * Tk * HEAD_DIM;

    load_rows(q_tile, q + bh * Tq * HEAD_DIM, q0, Tq, BLOCK_Q);
    load_rows(do_tile, dout + bh * Tq * HEAD_DIM, q0, Tq, BLOCK_Q);
    load_row_values(lse_tile, lse + bh * Tq, q0, Tq, 0);
    for (int r = tid; r < BLOCK_Q; r += NUM_THREADS) {
        row_psum[r] = kahan_zero();
        row_drow[r] = kahan_zero();
    }

    const int k_end = key_end(q0, Tq, Tk, causal);
    for (int k0 = 0; k0 < k_end; k0 += BLOCK_K) {
        BARRIER();  /* the previous tile's P, P dP, K and V are consumed */
        load_rows(k_tile, k_bh, k0, Tk, BLOCK_K);
        load_rows(v_tile, v_bh, k0, Tk, BLOCK_K);
        BARRIER();
        for (int e = tid; e < BLOCK_Q * BLOCK_K; e += NUM_THREADS) {
            int r = e / BLOCK_K;
            int c = e % BLOCK_K;
            real p = 0;
            real pdp = 0;
            if (visible(q0 + r, k0 + c, Tq, Tk, causal)) {
                p = p_unnormalised(q_tile + r * ROW_STRIDE, k_tile + c * ROW_STRIDE, scale,
                                   lse_tile[r]);
                pdp = p * dot_rows(do_tile + r * ROW_STRIDE, v_tile + c * ROW_STRIDE);
            }
            p_tile[e] = p;
            pdp_tile[e] = pdp;
        }
        BARRIER();
        /* psum and the numerator of Drow += the tile's row sums, from zero, compensated */
        for (int r = tid; r < BLOCK_Q; r += NUM_THREADS) {
            real part = 0;
            real part_dp = 0;
            for (int c = 0; c < BLOCK_K; ++c) {
                part += p_tile[r * BLOCK_K + c];
                part_dp += pdp_tile[r * BLOCK_K + c];
            }
            row_psum[r] = kahan_add(row_psum[r], part);
            row_drow[r] = kahan_add(row_drow[r], part_dp);
        }
    }
    BARRIER();  /* row_psum and row_drow final */
    for (int r = tid; r < BLOCK_Q; r += NUM_THREADS)
        if (q0 + r < Tq) {
            real total = row_psum[r].sum - row_psum[r].comp;
            psum[bh * Tq + q0 + r] = total;
            drow[bh * Tq + q0 + r] = total > 0 ? (row_drow[r].sum - row_drow[r].comp) / total
                                               : (real)0;
        }
}

KERNEL void flash_attention_backward_dkdv(GLOBAL const real* q, GLOBAL const real* k,
                                          GLOBAL const real* v, GLOBAL const real* dout,
                                          GLOBAL const real* lse, GLOBAL const real* drow,
                                          GLOBAL const real* psum,
                                          GLOBAL real* dk, GLOBAL real* dv,
                                          int H, int Hkv, int Tq, int Tk, real scale, int causal)
{
    SHARED real q_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real do_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real k_tile[BLOCK_K * ROW_STRIDE];
    SHARED real v_tile[BLOCK_K * ROW_STRIDE];
    SHARED real p_tile[BLOCK_Q * BLOCK_K];    /* P = exp(S - lse) */
    SHARED real ds_tile[BLOCK_Q * BLOCK_K];   /* dS = P (dP - Drow) */
    SHARED real lse_tile[BLOCK_Q];
    SHARED real drow_tile[BLOCK_Q];
    SHARED real psum_tile[BLOCK_Q];

    const int tid = THREAD_IDX_X;
    const int k0 = BLOCK_IDX_X * BLOCK_K;
    const int kvh = BLOCK_IDX_Y;
    const int b = BLOCK_IDX_Z;
    const int group = H / Hkv;

    load_rows(k_tile, k + (b * Hkv + kvh) * Tk * HEAD_DIM, k0, Tk, BLOCK_K);
    load_rows(v_tile, v + (b * Hkv + kvh) * Tk * HEAD_DIM, k0, Tk, BLOCK_K);
    /* This thread's entries e = tid + u * NUM_THREADS of the (BLOCK_K, D) dK and dV tiles. */
    kahan_t dk_acc[K_TILE_PER_THREAD];
    kahan_t dv_acc[K_TILE_PER_THREAD];
    UNROLL
    for (int u = 0; u < K_TILE_PER_THREAD; ++u) {
        dk_acc[u] = kahan_zero();
        dv_acc[u] = kahan_zero();
    }

    /* Causal: key k0 is first seen by query i = k0 - (Tk - Tq); start at that query's tile. */
    const int first_query = causal ? max(0, k0 - (Tk - Tq)) : 0;
    const int q_start = (first_query / BLOCK_Q) * BLOCK_Q;
    for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
        GLOBAL const real* q_bh = q + (b * H + h) * Tq * HEAD_DIM;
        GLOBAL const real* do_bh = dout + (b * H + h) * Tq * HEAD_DIM;
        for (int q0 = q_start; q0 < Tq; q0 += BLOCK_Q) {
            BARRIER();  /* the previous tile's P, dS, Q, dO are consumed */
            load_rows(q_tile, q_bh, q0, Tq, BLOCK_Q);
            load_rows(do_tile, do_bh, q0, Tq, BLOCK_Q);
            load_row_values(lse_tile, lse + (b * H + h) * Tq, q0, Tq, 0);
            load_row_values(drow_tile, drow + (b * H + h) * Tq, q0, Tq, 0);
            load_row_values(psum_tile, psum + (b * H + h) * Tq, q0, Tq, 1);
            BARRIER();

            /* P_rc = exp(scale q_r . k_c - lse_r) / psum_r, dS_rc = P_rc (dO_r . v_c - Drow_r);
             * both zero where query q0+r may not see key k0+c. */
            for (int e = tid; e < BLOCK_Q * BLOCK_K; e += NUM_THREADS) {
                int r = e / BLOCK_K;
                int c = e % BLOCK_K;
                real p = 0;
                real ds = 0;
                if (visible(q0 + r, k0 + c, Tq, Tk, causal)) {
                    p = p_unnormalised(q_tile + r * ROW_STRIDE, k_tile + c * ROW_STRIDE, scale,
                                       lse_tile[r]) / psum_tile[r];
                    real dp = dot_rows(do_tile + r * ROW_STRIDE, v_tile + c * ROW_STRIDE);
                    ds = p * (dp - drow_tile[r]);
                }
                p_tile[e] = p;
                ds_tile[e] = ds;
            }
            BARRIER();

            /* dV_cd += sum_r P_rc dO_rd,  dK_cd += sum_r dS_rc Q_rd  (scale applied at the end):
             * the tile's sums from zero, then added into the running sums with compensation. */
            UNROLL
            for (int u = 0; u < K_TILE_PER_THREAD; ++u) {
                int e = tid + u * NUM_THREADS;
                if (e < BLOCK_K * HEAD_DIM) {
                    int c = e / HEAD_DIM;
                    int d = e % HEAD_DIM;
                    real dv_part = 0;
                    real dk_part = 0;
                    for (int r = 0; r < BLOCK_Q; ++r) {
                        dv_part += p_tile[r * BLOCK_K + c] * do_tile[r * ROW_STRIDE + d];
                        dk_part += ds_tile[r * BLOCK_K + c] * q_tile[r * ROW_STRIDE + d];
                    }
                    dv_acc[u] = kahan_add(dv_acc[u], dv_part);
                    dk_acc[u] = kahan_add(dk_acc[u], dk_part);
                }
            }
        }
    }

    /* dK = scale * sum dS^T Q (dS was taken with respect to the scaled scores). */
    UNROLL
    for (int u = 0; u < K_TILE_PER_THREAD; ++u) {
        int e = tid + u * NUM_THREADS;
        int c = e / HEAD_DIM;
        if (e < BLOCK_K * HEAD_DIM && k0 + c < Tk) {
            int at = ((b * Hkv + kvh) * Tk + k0 + c) * HEAD_DIM + e % HEAD_DIM;
            dk[at] = scale * (dk_acc[u].sum - dk_acc[u].comp);
            dv[at] = dv_acc[u].sum - dv_acc[u].comp;
        }
    }
}

KERNEL void flash_attention_backward_dq(GLOBAL const real* q, GLOBAL const real* k,
                                        GLOBAL const real* v, GLOBAL const real* dout,
                                        GLOBAL const real* lse, GLOBAL const real* drow,
                                        GLOBAL const real* psum, GLOBAL real* dq,
                                        int H, int Hkv, int Tq, int Tk, real scale, int causal)
{
    SHARED real q_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real do_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real k_tile[BLOCK_K * ROW_STRIDE];
    SHARED real v_tile[BLOCK_K * ROW_STRIDE];
    SHARED real ds_tile[BLOCK_Q * BLOCK_K];   /* dS = P (dP - Drow) */
    SHARED real lse_tile[BLOCK_Q];
    SHARED real drow_tile[BLOCK_Q];
    SHARED real psum_tile[BLOCK_Q];

    const int tid = THREAD_IDX_X;
    const int q0 = BLOCK_IDX_X * BLOCK_Q;
    const int h = BLOCK_IDX_Y;
    const int b = BLOCK_IDX_Z;
    const int kvh = h / (H / Hkv);
    GLOBAL const real* k_bh = k + (b * Hkv + kvh) * Tk * HEAD_DIM;
    GLOBAL const real* v_bh = v + (b * Hkv + kvh) * Tk * HEAD_DIM;

    load_rows(q_tile, q + (b * H + h) * Tq * HEAD_DIM, q0, Tq, BLOCK_Q);
    load_rows(do_tile, dout + (b * H + h) * Tq * HEAD_DIM, q0, Tq, BLOCK_Q);
    load_row_values(lse_tile, lse + (b * H + h) * Tq, q0, Tq, 0);
    load_row_values(drow_tile, drow + (b * H + h) * Tq, q0, Tq, 0);
    load_row_values(psum_tile, psum + (b * H + h) * Tq, q0, Tq, 1);
    /* This thread's entries e = tid + u * NUM_THREADS of the (BLOCK_Q, D) dQ tile. */
    kahan_t dq_acc[Q_TILE_PER_THREAD];
    UNROLL
    for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
        dq_acc[u] = kahan_zero();
    }

    const int k_end = key_end(q0, Tq, Tk, causal);
    for (int k0 = 0; k0 < k_end; k0 += BLOCK_K) {
        BARRIER();  /* the previous tile's dS and K are consumed */
        load_rows(k_tile, k_bh, k0, Tk, BLOCK_K);
        load_rows(v_tile, v_bh, k0, Tk, BLOCK_K);
        BARRIER();

        /* dS_rc = P_rc (dO_r . v_c - Drow_r) with P_rc = exp(scale q_r . k_c - lse_r) / psum_r. */
        for (int e = tid; e < BLOCK_Q * BLOCK_K; e += NUM_THREADS) {
            int r = e / BLOCK_K;
            int c = e % BLOCK_K;
            real ds = 0;
            if (visible(q0 + r, k0 + c, Tq, Tk, causal)) {
                real p = p_unnormalised(q_tile + r * ROW_STRIDE, k_tile + c * ROW_STRIDE,
                                        scale, lse_tile[r]) / psum_tile[r];
                real dp = dot_rows(do_tile + r * ROW_STRIDE, v_tile + c * ROW_STRIDE);
                ds = p * (dp - drow_tile[r]);
            }
            ds_tile[e] = ds;
        }
        BARRIER();

        /* dQ_rd += sum_c dS_rc K_cd  (scale applied at the end): the tile's sum from zero,
         * then added into the running sum with compensation. */
        UNROLL
        for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
            int e = tid + u * NUM_THREADS;
            if (e < BLOCK_Q * HEAD_DIM) {
                int r = e / HEAD_DIM;
                int d = e % HEAD_DIM;
                real part = 0;
                for (int c = 0; c < BLOCK_K; ++c)
                    part += ds_tile[r * BLOCK_K + c] * k_tile[c * ROW_STRIDE + d];
                dq_acc[u] = kahan_add(dq_acc[u], part);
            }
        }
    }

    UNROLL
    for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
        int e = tid + u * NUM_THREADS;
        int r = e / HEAD_DIM;
        if (e < BLOCK_Q * HEAD_DIM && q0 + r < Tq)
            dq[((b * H + h) * Tq + q0 + r) * HEAD_DIM + e % HEAD_DIM] =
                scale * (dq_acc[u].sum - dq_acc[u].comp);
    }
}

#endif /* FLASH_BACKWARD */
