/*
 * rope.cu — rotary position embedding (RoPE) forward and backward in the Crosscheck kernel
 * dialect, in both pairing conventions, from precomputed cos/sin tables.
 *
 * Su et al. 2021 ("RoFormer", arXiv:2104.09864, section 3.4). ref_numpy/rope.py is the NumPy
 * reference (rope_forward, rope_backward) and builds the tables (rope_tables): the positions
 * (offset + arange(T), or per-row position ids), the frequencies and any scaling's attention
 * factor are all in them, so the kernels only rotate. gpu_cupy/rope.py is the launcher.
 * DIALECT.md describes the dialect.
 *
 * Feature pair i of the first R = 2 * n_freq features of a head (n_freq = R/2 frequencies), at
 * table row r, with c = cos[r][i], s = sin[r][i]:
 *     forward    a' = a c - b s,   b' = a s + b c
 *     backward   da = da' c + db' s,   db = -da' s + db' c    (the rotation by -theta: s -> -s)
 * where (a, b) = (x[2i], x[2i + 1]) when interleaved (RoFormer, GPT-J), else (x[i],
 * x[i + n_freq]) (half-split: GPT-NeoX, Hugging Face Llama). Features R .. D - 1 are copied
 * (partial rotary).
 *
 * Shapes (row-major, C-contiguous):
 *     x, out        (B, H, T, D)     D even, 2 <= R <= D
 *     cos, sin      (T, R/2), or (B, T, R/2) when batched (per-row position ids)
 * One thread per output element, grid ceil(B H T D / NUM_THREADS); each reads its own feature
 * and its partner's. The launcher keeps B H T D + NUM_THREADS within int32.
 *
 * Compile-time defines (set by the launcher; one program per dtype):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     NUM_THREADS      threads per block (the launcher uses 256)
 *
 * Kernels (one version each):
 *     rope_forward    out = the rotation of x by +theta
 *     rope_backward   out = the rotation of dout by -theta, the gradient with respect to x
 */

/* out[e] for the element e of x: rotated by +theta (direction = 1) or -theta
 * (direction = -1). */
DEVICE void rope_element(GLOBAL const real* x, GLOBAL const real* cos_t,
                         GLOBAL const real* sin_t, GLOBAL real* out, int total, int H, int T,
                         int D, int n_freq, int interleaved, int batched, int direction)
{
    int e = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    if (e >= total)
        return;
    int row = e / D;                      /* (b, h, t) flattened */
    int d = e - row * D;
    if (d >= 2 * n_freq) {
        out[e] = x[e];                    /* past the rotary features */
        return;
    }
    int t = row % T;
    int b = row / (H * T);
    int second = interleaved ? d & 1 : d >= n_freq;   /* feature b of its pair, not a */
    int i = interleaved ? d >> 1 : (second ? d - n_freq : d);
    int at_a = interleaved ? 2 * i : i;
    int at_b = interleaved ? 2 * i + 1 : i + n_freq;
    int r = (batched ? b * T + t : t) * n_freq + i;
    real c = cos_t[r];
    real s = direction > 0 ? sin_t[r] : -sin_t[r];
    real xa = x[row * D + at_a];
    real xb = x[row * D + at_b];
    out[e] = second ? xa * s + xb * c : xa * c - xb * s;
}

KERNEL void rope_forward(GLOBAL const real* x, GLOBAL const real* cos_t,
                         GLOBAL const real* sin_t, GLOBAL real* out, int total, int H, int T,
                         int D, int n_freq, int interleaved, int batched)
{
    rope_element(x, cos_t, sin_t, out, total, H, T, D, n_freq, interleaved, batched, 1);
}

KERNEL void rope_backward(GLOBAL const real* dout, GLOBAL const real* cos_t,
                          GLOBAL const real* sin_t, GLOBAL real* dx, int total, int H, int T,
                          int D, int n_freq, int interleaved, int batched)
{
    rope_element(dout, cos_t, sin_t, dx, total, H, T, D, n_freq, interleaved, batched, -1);
}
