/*
 * paged_kv.cu — the paged KV cache's kernels in the Crosscheck kernel dialect: cache write,
 * gather, and decode attention through page tables (PagedAttention v1 and v2).
 *
 * Follows PagedAttention (Kwon et al. 2023, "Efficient Memory Management for Large Language
 * Model Serving with PagedAttention", SOSP 2023, arXiv:2309.06180) and the partitioned decode of
 * vLLM's paged_attention_v2. ref_numpy/paged_attention.py holds the NumPy references (write,
 * gather, decode) and ref_numpy/paged_kv.py the block manager that fills the pools;
 * gpu_cupy/paged_kv.py is the launcher (validation, partition sizes, the version dispatch).
 * DIALECT.md describes the dialect.
 *
 * Position t of sequence s lives in physical block b = block_tables[s][t / BLOCK_SIZE] at offset
 * t % BLOCK_SIZE, i.e. at slot b * BLOCK_SIZE + t % BLOCK_SIZE. Decode: the query of sequence s
 * is its newest token, at position n - 1 (n = lengths[s]), and sees positions lo .. n - 1 with
 * lo = max(0, n - window) (window = 0: lo = 0), with the score
 *     s_j = scale * q . k_j - slope_h * (n - 1 - j)      (slope_h = 0 without ALiBi).
 *
 * Shapes (row-major, C-contiguous; int is 32-bit on both runtimes):
 *     k_pool, v_pool         (N, Hkv, BLOCK_SIZE, D)   N physical blocks
 *     k_new, v_new           (T, Hkv, D)               new tokens, token-major
 *     slot_mapping           (T,) int                  a negative slot skips its token
 *     block_tables           (S, M) int                entries past ceil(n / BLOCK_SIZE) unread
 *     lengths                (S,) int
 *     k_out, v_out           (S, Hkv, L, D)            gathered, zero past each length
 *     q, out                 (S, H, D)                 GQA: head h reads kv head h / (H / Hkv)
 *     alibi_slopes           (H,)                      zeros without ALiBi
 *     part_max, part_sum     (S, H, P)                 v2: per partition
 *     part_out               (S, H, P, D)              v2: per partition, normalised
 *
 * Compile-time defines (set by the launcher; one program per combination):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     HEAD_DIM         D
 *     BLOCK_SIZE       positions per KV block; any positive value, not only powers of two
 *     NUM_THREADS      threads per block (the launcher uses 128)
 *
 * Kernels:
 *
 * paged_kv_write
 *     One block per new token t; its threads copy the Hkv * D values of k_new[t] and v_new[t]
 *     to slot slot_mapping[t] of every head (nothing when the slot is negative). The launcher
 *     rejects a slot that appears twice, which would make two blocks write the same elements.
 *
 * paged_kv_gather
 *     One block per (logical block j, kv head, sequence): it copies the rows j * BLOCK_SIZE ..
 *     of the sequence's physical block block_tables[s][j] into k_out, v_out and writes zeros in
 *     the rows past the length, so each output element has exactly one writer.
 *
 * paged_attention_decode_v1
 *     One block per (query head, sequence), grid (1, H, S). The query is staged in shared
 *     memory; the block walks the sequence's KV blocks through its page table and per block
 *       1. stages the block's K rows in shared memory (coalesced; rows outside lo .. n - 1 are
 *          zero and never read from the pool),
 *       2. computes the scores with DOT_SPLIT threads per row, each summing every DOT_SPLIT-th
 *          product, then one thread per row adds the partial sums, the ALiBi term and the mask,
 *       3. one thread runs the online-softmax step (running max m, running sum l, rescale
 *          alpha = exp(m_old - m_new)) and turns the scores into p_j = exp(s_j - m_new),
 *       4. thread d updates output dimension d, o_d = alpha o_d + sum_j p_j v_jd, reading V
 *          straight from the pool (consecutive threads read consecutive addresses).
 *     Every block walked holds a visible position, so m_new is finite from the first block on.
 *     At the end out = o / l.
 *
 * paged_attention_decode_v2_partition, paged_attention_decode_v2_reduce
 *     vLLM's partitioned form, for long contexts and few sequences: the context is cut into
 *     partitions of partition_blocks * BLOCK_SIZE positions and one block per (partition, head,
 *     sequence), grid (P, H, S), runs the walk of v1 over its partition only, writing the
 *     partition's max m_p, sum l_p and normalised output o_p = o / l_p. A partition past the
 *     length or wholly before the window returns at once (the same for every thread of the
 *     block) and writes nothing. The reduce kernel, grid (1, H, S), merges the partitions that
 *     hold a visible position with the online-softmax merge of ref_numpy/online_softmax.py:
 *         m = max(m, m_p),  acc = exp(m_old - m) acc + exp(m_p - m) l_p o_p,
 *         l = exp(m_old - m) l + exp(m_p - m) l_p,  out = acc / l.
 *     Thread d merges dimension d; every thread reads the same m_p, l_p (a broadcast).
 */

#define ROW_STRIDE (HEAD_DIM + 1)   /* shared K rows: threads at one column hit different banks */
/* Threads per score row: the products of one row are summed in DOT_SPLIT interleaved parts. */
#define DOT_SPLIT_ALL (NUM_THREADS / BLOCK_SIZE > 0 ? NUM_THREADS / BLOCK_SIZE : 1)
#define DOT_SPLIT (DOT_SPLIT_ALL < HEAD_DIM ? DOT_SPLIT_ALL : HEAD_DIM)
/* Output dimensions per thread: d = THREAD_IDX_X + u * NUM_THREADS. */
#define O_PER_THREAD ((HEAD_DIM + NUM_THREADS - 1) / NUM_THREADS)

/* The first position a query at n - 1 sees: n - window, or 0 without a window (window = 0). */
DEVICE int first_visible(int length, int window)
{
    return window > 0 ? max(0, length - window) : 0;
}

KERNEL void paged_kv_write(GLOBAL const real* k_new, GLOBAL const real* v_new,
                           GLOBAL real* k_pool, GLOBAL real* v_pool,
                           GLOBAL const int* slot_mapping, int Hkv)
{
    const int t = BLOCK_IDX_X;
    const int slot = slot_mapping[t];
    if (slot < 0)
        return;  /* padding: the whole block skips the token */
    const int block = slot / BLOCK_SIZE;
    const int offset = slot % BLOCK_SIZE;
    for (int e = THREAD_IDX_X; e < Hkv * HEAD_DIM; e += NUM_THREADS) {
        int h = e / HEAD_DIM;
        int at = ((block * Hkv + h) * BLOCK_SIZE + offset) * HEAD_DIM + e % HEAD_DIM;
        k_pool[at] = k_new[t * Hkv * HEAD_DIM + e];
        v_pool[at] = v_new[t * Hkv * HEAD_DIM + e];
    }
}

KERNEL void paged_kv_gather(GLOBAL const real* k_pool, GLOBAL const real* v_pool,
                            GLOBAL const int* block_tables, GLOBAL const int* lengths,
                            GLOBAL real* k_out, GLOBAL real* v_out, int Hkv, int max_blocks,
                            int L)
{
    const int j = BLOCK_IDX_X;
    const int h = BLOCK_IDX_Y;
    const int s = BLOCK_IDX_Z;
    const int first = j * BLOCK_SIZE;
    const int rows = min(BLOCK_SIZE, L - first);                /* output rows of this block */
    const int valid = max(0, min(rows, lengths[s] - first));    /* of them, rows with a token */
    /* The page-table entry is read only for a block that holds tokens. */
    const int src = valid > 0
        ? (block_tables[s * max_blocks + j] * Hkv + h) * BLOCK_SIZE * HEAD_DIM : 0;
    const int dst = ((s * Hkv + h) * L + first) * HEAD_DIM;
    for (int e = THREAD_IDX_X; e < rows * HEAD_DIM; e += NUM_THREADS) {
        int keep = e / HEAD_DIM < valid;
        k_out[dst + e] = keep ? k_pool[src + e] : (real)0;
        v_out[dst + e] = keep ? v_pool[src + e] : (real)0;
    }
}

/* The softmax state of positions lo .. hi - 1 of one (sequence, query head), read block by block
 * through the sequence's page table `table`, with four barriers per block. Every thread of the
 * block calls it. Expects q_s loaded, stats[0] = -inf, stats[1] = 0 and o_acc = 0; leaves
 * stats[0] = m, stats[1] = l and o_acc[u] = sum_j exp(s_j - m) v_jd for d = tid + u NUM_THREADS. */
DEVICE void attend_blocks(SHARED_PARAM const real* q_s, SHARED_PARAM real* k_tile,
                          SHARED_PARAM real* dot_part, SHARED_PARAM real* p_s,
                          SHARED_PARAM real* stats, GLOBAL const real* k_pool,
                          GLOBAL const real* v_pool, GLOBAL const int* table, int Hkv, int kvh,
                          int length, int lo, int hi, real scale, real slope, real* o_acc)
{
    const int tid = THREAD_IDX_X;
    for (int blk = lo / BLOCK_SIZE; blk * BLOCK_SIZE < hi; ++blk) {
        const int first = blk * BLOCK_SIZE;             /* position of the block's row 0 */
        const int c0 = max(0, lo - first);              /* rows c0 .. rows - 1 are visible */
        const int rows = min(BLOCK_SIZE, hi - first);
        const int base = (table[blk] * Hkv + kvh) * BLOCK_SIZE * HEAD_DIM;

        /* 1. K rows of the block. No barrier is needed before it: the previous block last read
         *    k_tile before the barrier that ends its step 2, and its step 4 reads only p_s and
         *    stats, which are rewritten after the next barrier. */
        for (int e = tid; e < BLOCK_SIZE * HEAD_DIM; e += NUM_THREADS) {
            int r = e / HEAD_DIM;
            k_tile[r * ROW_STRIDE + e % HEAD_DIM] =
                (r >= c0 && r < rows) ? k_pool[base + e] : (real)0;
        }
        BARRIER();

        /* 2. Partial dot products, then s_c = scale * q . k_c - slope (n - 1 - j), -inf where
         *    position j = first + c is not visible. */
        for (int e = tid; e < BLOCK_SIZE * DOT_SPLIT; e += NUM_THREADS) {
            int c = e / DOT_SPLIT;
            real acc = 0;
            for (int d = e % DOT_SPLIT; d < HEAD_DIM; d += DOT_SPLIT)
                acc += q_s[d] * k_tile[c * ROW_STRIDE + d];
            dot_part[e] = acc;
        }
        BARRIER();
        for (int c = tid; c < BLOCK_SIZE; c += NUM_THREADS) {
            real score = -INFINITY;
            if (c >= c0 && c < rows) {
                real dot = 0;
                for (int part = 0; part < DOT_SPLIT; ++part)
                    dot += dot_part[c * DOT_SPLIT + part];
                score = scale * dot - slope * (real)(length - 1 - (first + c));
            }
            p_s[c] = score;
        }
        BARRIER();

        /* 3. Online softmax: m_new = max(m_old, max_c s_c), alpha = exp(m_old - m_new),
         *    p_c = exp(s_c - m_new) (0 where masked), l = alpha l + sum_c p_c. */
        if (tid == 0) {
            real m_old = stats[0];
            real m_new = m_old;
            for (int c = 0; c < BLOCK_SIZE; ++c)
                m_new = fmax(m_new, p_s[c]);
            real p_sum = 0;
            for (int c = 0; c < BLOCK_SIZE; ++c) {
                real p = exp(p_s[c] - m_new);
                p_s[c] = p;
                p_sum += p;
            }
            real alpha = exp(m_old - m_new);
            stats[0] = m_new;
            stats[1] = alpha * stats[1] + p_sum;
            stats[2] = alpha;
        }
        BARRIER();

        /* 4. o_d = alpha o_d + sum_c p_c v_cd over the visible rows. */
        GLOBAL const real* v_blk = v_pool + base;
        UNROLL
        for (int u = 0; u < O_PER_THREAD; ++u) {
            int d = tid + u * NUM_THREADS;
            if (d < HEAD_DIM) {
                real acc = stats[2] * o_acc[u];
                for (int c = c0; c < rows; ++c)
                    acc += p_s[c] * v_blk[c * HEAD_DIM + d];
                o_acc[u] = acc;
            }
        }
    }
}

/* Setup common to the decode kernels: the query of head h of sequence s in q_s, the softmax
 * state reset, the output accumulators zeroed. */
DEVICE void decode_setup(SHARED_PARAM real* q_s, SHARED_PARAM real* stats,
                         GLOBAL const real* q_row, real* o_acc)
{
    for (int d = THREAD_IDX_X; d < HEAD_DIM; d += NUM_THREADS)
        q_s[d] = q_row[d];
    if (THREAD_IDX_X == 0) {
        stats[0] = -INFINITY;
        stats[1] = 0;
    }
    UNROLL
    for (int u = 0; u < O_PER_THREAD; ++u)
        o_acc[u] = 0;
}

KERNEL void paged_attention_decode_v1(GLOBAL const real* q, GLOBAL const real* k_pool,
                                      GLOBAL const real* v_pool, GLOBAL const int* block_tables,
                                      GLOBAL const int* lengths,
                                      GLOBAL const real* alibi_slopes, GLOBAL real* out,
                                      int H, int Hkv, int max_blocks, real scale, int window)
{
    SHARED real q_s[HEAD_DIM];
    SHARED real k_tile[BLOCK_SIZE * ROW_STRIDE];
    SHARED real dot_part[BLOCK_SIZE * DOT_SPLIT];
    SHARED real p_s[BLOCK_SIZE];                  /* scores, then p = exp(s - m) */
    SHARED real stats[3];                         /* m, l, alpha */
    real o_acc[O_PER_THREAD];
    const int h = BLOCK_IDX_Y;
    const int s = BLOCK_IDX_Z;
    const int length = lengths[s];
    decode_setup(q_s, stats, q + (s * H + h) * HEAD_DIM, o_acc);
    attend_blocks(q_s, k_tile, dot_part, p_s, stats, k_pool, v_pool,
                  block_tables + s * max_blocks, Hkv, h / (H / Hkv), length,
                  first_visible(length, window), length, scale, alibi_slopes[h], o_acc);
    /* stats are final: thread 0 last wrote them before the last block's final barrier. */
    UNROLL
    for (int u = 0; u < O_PER_THREAD; ++u) {
        int d = THREAD_IDX_X + u * NUM_THREADS;
        if (d < HEAD_DIM)
            out[(s * H + h) * HEAD_DIM + d] = o_acc[u] / stats[1];
    }
}

KERNEL void paged_attention_decode_v2_partition(
    GLOBAL const real* q, GLOBAL const real* k_pool, GLOBAL const real* v_pool,
    GLOBAL const int* block_tables, GLOBAL const int* lengths, GLOBAL const real* alibi_slopes,
    GLOBAL real* part_max, GLOBAL real* part_sum, GLOBAL real* part_out,
    int H, int Hkv, int max_blocks, real scale, int window, int partition_blocks,
    int max_partitions)
{
    SHARED real q_s[HEAD_DIM];
    SHARED real k_tile[BLOCK_SIZE * ROW_STRIDE];
    SHARED real dot_part[BLOCK_SIZE * DOT_SPLIT];
    SHARED real p_s[BLOCK_SIZE];                  /* scores, then p = exp(s - m) */
    SHARED real stats[3];                         /* m, l, alpha */
    real o_acc[O_PER_THREAD];
    const int p = BLOCK_IDX_X;
    const int h = BLOCK_IDX_Y;
    const int s = BLOCK_IDX_Z;
    const int length = lengths[s];
    const int part_lo = p * partition_blocks * BLOCK_SIZE;
    const int lo = max(part_lo, first_visible(length, window));
    const int hi = min(length, part_lo + partition_blocks * BLOCK_SIZE);
    if (lo >= hi)
        return;  /* past the length or wholly before the window: the reduce skips it */
    decode_setup(q_s, stats, q + (s * H + h) * HEAD_DIM, o_acc);
    attend_blocks(q_s, k_tile, dot_part, p_s, stats, k_pool, v_pool,
                  block_tables + s * max_blocks, Hkv, h / (H / Hkv), length, lo, hi, scale,
                  alibi_slopes[h], o_acc);
    const int at = (s * H + h) * max_partitions + p;
    UNROLL
    for (int u = 0; u < O_PER_THREAD; ++u) {
        int d = THREAD_IDX_X + u * NUM_THREADS;
        if (d < HEAD_DIM)
            part_out[at * HEAD_DIM + d] = o_acc[u] / stats[1];
    }
    if (THREAD_IDX_X == 0) {
        part_max[at] = stats[0];
        part_sum[at] = stats[1];
    }
}

KERNEL void paged_attention_decode_v2_reduce(GLOBAL const real* part_max,
                                             GLOBAL const real* part_sum,
                                             GLOBAL const real* part_out,
                                             GLOBAL const int* lengths, GLOBAL real* out,
                                             int H, int max_partitions, int partition_size,
                                             int window)
{
    const int h = BLOCK_IDX_Y;
    const int s = BLOCK_IDX_Z;
    const int length = lengths[s];
    const int p_first = first_visible(length, window) / partition_size;
    const int p_end = (length + partition_size - 1) / partition_size;
    const int base = (s * H + h) * max_partitions;
    UNROLL
    for (int u = 0; u < O_PER_THREAD; ++u) {
        int d = THREAD_IDX_X + u * NUM_THREADS;
        if (d < HEAD_DIM) {
            real m = -INFINITY;
            real l = 0;
            real acc = 0;
            for (int p = p_first; p < p_end; ++p) {
                real m_p = part_max[base + p];
                real m_new = fmax(m, m_p);
                real a = exp(m - m_new);                      /* 0 at the first partition */
                real b = exp(m_p - m_new) * part_sum[base + p];
                acc = a * acc + b * part_out[(base + p) * HEAD_DIM + d];
                l = a * l + b;
                m = m_new;
            }
            out[(s * H + h) * HEAD_DIM + d] = acc / l;
        }
    }
}
