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
 *     HEAD_DIM           D, 1..128
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
 * flash_attention_backward_drow
 *     Drow_i = sum_d dO_id O_id, one thread per query row: the term that the softmax backward
 *     subtracts, dS = P (dP - Drow), computed once instead of once per key tile.
 *
 * flash_attention_backward_dkdv
 *     One block per (key tile, kv head, batch); dK and dV of the tile live in registers. The block
 *     loops over every query head of its GQA group and every query tile that can see the key tile
 *     (causal: earlier query tiles are skipped), recomputing P = exp(S - lse) from the saved lse,
 *         dV += P^T dO,   dP = dO V^T,   dS = P (dP - Drow),   dK += scale dS^T Q.
 *
 * flash_attention_backward_dq
 *     One block per (query tile, head, batch); dQ of the tile lives in registers. Same walk over
 *     key tiles as the forward, recomputing P and dS, dQ += scale dS K.
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

/* sum_d a[d] b[d] over one row of each of two shared tiles. */
DEVICE real dot_rows(SHARED_PARAM const real* a, SHARED_PARAM const real* b)
{
    real acc = 0;
    for (int d = 0; d < HEAD_DIM; ++d)
        acc += a[d] * b[d];
    return acc;
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
    SHARED real row_sum[BLOCK_Q];            /* l: running sum of exp(S - m) */
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
        row_sum[r] = 0;
    }
    /* This thread's entries e = tid + u * NUM_THREADS of the (BLOCK_Q, D) output tile. */
    real o_acc[Q_TILE_PER_THREAD];
    UNROLL
    for (int u = 0; u < Q_TILE_PER_THREAD; ++u)
        o_acc[u] = 0;

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
            row_max[r] = m_new;
            row_sum[r] = alpha * row_sum[r] + p_sum;
            row_rescale[r] = alpha;
        }
        BARRIER();

        /* 3. O_rd = alpha_r O_rd + sum_c P_rc V_cd for this thread's entries. */
        UNROLL
        for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
            int e = tid + u * NUM_THREADS;
            if (e < BLOCK_Q * HEAD_DIM) {
                int r = e / HEAD_DIM;
                int d = e % HEAD_DIM;
                real acc = row_rescale[r] * o_acc[u];
                for (int c = 0; c < BLOCK_K; ++c)
                    acc += s_tile[r * BLOCK_K + c] * v_tile[c * ROW_STRIDE + d];
                o_acc[u] = acc;
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
            real l = row_sum[r];
            real o = l > 0 ? o_acc[u] / l : (real)0;
            out[((b * H + h) * Tq + q0 + r) * HEAD_DIM + e % HEAD_DIM] = o;
        }
    }
    for (int r = tid; r < BLOCK_Q; r += NUM_THREADS) {
        if (q0 + r < Tq) {
            real l = row_sum[r];
            lse[(b * H + h) * Tq + q0 + r] = l > 0 ? row_max[r] + log(l) : -INFINITY;
        }
    }
}

#endif /* FLASH_FORWARD */

#ifdef FLASH_BACKWARD

KERNEL void flash_attention_backward_drow(GLOBAL const real* out, GLOBAL const real* dout,
                                          GLOBAL real* drow, int n_rows)
{
    /* Drow_i = sum_d dO_id O_id, one thread per row of the (B * H * Tq, D) view. */
    int i = BLOCK_IDX_X * BLOCK_DIM_X + THREAD_IDX_X;
    if (i < n_rows) {
        real acc = 0;
        for (int d = 0; d < HEAD_DIM; ++d)
            acc += dout[i * HEAD_DIM + d] * out[i * HEAD_DIM + d];
        drow[i] = acc;
    }
}

KERNEL void flash_attention_backward_dkdv(GLOBAL const real* q, GLOBAL const real* k,
                                          GLOBAL const real* v, GLOBAL const real* dout,
                                          GLOBAL const real* lse, GLOBAL const real* drow,
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

    const int tid = THREAD_IDX_X;
    const int k0 = BLOCK_IDX_X * BLOCK_K;
    const int kvh = BLOCK_IDX_Y;
    const int b = BLOCK_IDX_Z;
    const int group = H / Hkv;

    load_rows(k_tile, k + (b * Hkv + kvh) * Tk * HEAD_DIM, k0, Tk, BLOCK_K);
    load_rows(v_tile, v + (b * Hkv + kvh) * Tk * HEAD_DIM, k0, Tk, BLOCK_K);
    /* This thread's entries e = tid + u * NUM_THREADS of the (BLOCK_K, D) dK and dV tiles. */
    real dk_acc[K_TILE_PER_THREAD];
    real dv_acc[K_TILE_PER_THREAD];
    UNROLL
    for (int u = 0; u < K_TILE_PER_THREAD; ++u) {
        dk_acc[u] = 0;
        dv_acc[u] = 0;
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
            BARRIER();

            /* P_rc = exp(scale q_r . k_c - lse_r), dS_rc = P_rc (dO_r . v_c - Drow_r);
             * both zero where query q0+r may not see key k0+c. */
            for (int e = tid; e < BLOCK_Q * BLOCK_K; e += NUM_THREADS) {
                int r = e / BLOCK_K;
                int c = e % BLOCK_K;
                real p = 0;
                real ds = 0;
                if (visible(q0 + r, k0 + c, Tq, Tk, causal)) {
                    real s = scale * dot_rows(q_tile + r * ROW_STRIDE, k_tile + c * ROW_STRIDE);
                    p = exp(s - lse_tile[r]);
                    real dp = dot_rows(do_tile + r * ROW_STRIDE, v_tile + c * ROW_STRIDE);
                    ds = p * (dp - drow_tile[r]);
                }
                p_tile[e] = p;
                ds_tile[e] = ds;
            }
            BARRIER();

            /* dV_cd += sum_r P_rc dO_rd,  dK_cd += sum_r dS_rc Q_rd  (scale applied at the end). */
            UNROLL
            for (int u = 0; u < K_TILE_PER_THREAD; ++u) {
                int e = tid + u * NUM_THREADS;
                if (e < BLOCK_K * HEAD_DIM) {
                    int c = e / HEAD_DIM;
                    int d = e % HEAD_DIM;
                    real dv_e = dv_acc[u];
                    real dk_e = dk_acc[u];
                    for (int r = 0; r < BLOCK_Q; ++r) {
                        dv_e += p_tile[r * BLOCK_K + c] * do_tile[r * ROW_STRIDE + d];
                        dk_e += ds_tile[r * BLOCK_K + c] * q_tile[r * ROW_STRIDE + d];
                    }
                    dv_acc[u] = dv_e;
                    dk_acc[u] = dk_e;
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
            dk[at] = scale * dk_acc[u];
            dv[at] = dv_acc[u];
        }
    }
}

KERNEL void flash_attention_backward_dq(GLOBAL const real* q, GLOBAL const real* k,
                                        GLOBAL const real* v, GLOBAL const real* dout,
                                        GLOBAL const real* lse, GLOBAL const real* drow,
                                        GLOBAL real* dq,
                                        int H, int Hkv, int Tq, int Tk, real scale, int causal)
{
    SHARED real q_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real do_tile[BLOCK_Q * ROW_STRIDE];
    SHARED real k_tile[BLOCK_K * ROW_STRIDE];
    SHARED real v_tile[BLOCK_K * ROW_STRIDE];
    SHARED real ds_tile[BLOCK_Q * BLOCK_K];   /* dS = P (dP - Drow) */
    SHARED real lse_tile[BLOCK_Q];
    SHARED real drow_tile[BLOCK_Q];

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
    /* This thread's entries e = tid + u * NUM_THREADS of the (BLOCK_Q, D) dQ tile. */
    real dq_acc[Q_TILE_PER_THREAD];
    UNROLL
    for (int u = 0; u < Q_TILE_PER_THREAD; ++u)
        dq_acc[u] = 0;

    const int k_end = key_end(q0, Tq, Tk, causal);
    for (int k0 = 0; k0 < k_end; k0 += BLOCK_K) {
        BARRIER();  /* the previous tile's dS and K are consumed */
        load_rows(k_tile, k_bh, k0, Tk, BLOCK_K);
        load_rows(v_tile, v_bh, k0, Tk, BLOCK_K);
        BARRIER();

        /* dS_rc = P_rc (dO_r . v_c - Drow_r) with P_rc = exp(scale q_r . k_c - lse_r). */
        for (int e = tid; e < BLOCK_Q * BLOCK_K; e += NUM_THREADS) {
            int r = e / BLOCK_K;
            int c = e % BLOCK_K;
            real ds = 0;
            if (visible(q0 + r, k0 + c, Tq, Tk, causal)) {
                real s = scale * dot_rows(q_tile + r * ROW_STRIDE, k_tile + c * ROW_STRIDE);
                real p = exp(s - lse_tile[r]);
                real dp = dot_rows(do_tile + r * ROW_STRIDE, v_tile + c * ROW_STRIDE);
                ds = p * (dp - drow_tile[r]);
            }
            ds_tile[e] = ds;
        }
        BARRIER();

        /* dQ_rd += sum_c dS_rc K_cd  (scale applied at the end). */
        UNROLL
        for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
            int e = tid + u * NUM_THREADS;
            if (e < BLOCK_Q * HEAD_DIM) {
                int r = e / HEAD_DIM;
                int d = e % HEAD_DIM;
                real acc = dq_acc[u];
                for (int c = 0; c < BLOCK_K; ++c)
                    acc += ds_tile[r * BLOCK_K + c] * k_tile[c * ROW_STRIDE + d];
                dq_acc[u] = acc;
            }
        }
    }

    UNROLL
    for (int u = 0; u < Q_TILE_PER_THREAD; ++u) {
        int e = tid + u * NUM_THREADS;
        int r = e / HEAD_DIM;
        if (e < BLOCK_Q * HEAD_DIM && q0 + r < Tq)
            dq[((b * H + h) * Tq + q0 + r) * HEAD_DIM + e % HEAD_DIM] = scale * dq_acc[u];
    }
}

#endif /* FLASH_BACKWARD */
