/*
 * adamw.cu — one fused AdamW step over many parameter arrays in the Crosscheck kernel dialect.
 *
 * Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (arXiv:1711.05101),
 * Algorithm 2, with the moments of Kingma & Ba 2015 (arXiv:1412.6980) and amsgrad from Reddi,
 * Kale & Kumar 2018. ref_numpy/optim.py (AdamW) is the NumPy reference and follows torch's
 * single-tensor path (torch/optim/adam.py); this kernel performs the same operations in the same
 * order. gpu_cupy/adamw.py is the launcher (validation, the coefficient table, the grid).
 * DIALECT.md describes the dialect.
 *
 * The parameters of a model are laid end to end in one flat buffer (llm.c keeps its parameters
 * the same way): segment s, one parameter array, is elements offsets[s] .. offsets[s + 1] - 1,
 * and the gradient and state buffers use the same layout. One launch updates every segment;
 * each segment has its own row of coefficients, so parameter groups with their own lr, weight
 * decay, betas and eps, and arrays at different step counts, all go in the same launch. At step
 * t of segment s, for each of its elements:
 *
 *     g ← −g                                         if maximize
 *     θ ← θ (1 − γ λ)                                decoupled weight decay
 *     m ← β1 m + (1 − β1) g                          as torch's lerp (below)
 *     v ← β2 v + ((1 − β2) g) g                      as torch's addcmul
 *     v_max ← max(v_max, v), v ← v_max               if amsgrad (NaN propagates, as torch.maximum)
 *     θ ← θ + (−γ / (1 − β1^t)) m / (√v / √(1 − β2^t) + ε)
 *
 * The scalars (1 − γλ, 1 − β1, β2, 1 − β2, γ / (1 − β1^t), √(1 − β2^t), ε) are formed by the
 * launcher in float64 and rounded once to real, as torch rounds its Python-float scalars to the
 * tensor's dtype, so a float32 step does float32 arithmetic only. torch's lerp m + w (g − m)
 * switches, for w = 1 − β1 >= 0.5, to g − (g − m)(1 − w), which keeps m exact when w = 1; the
 * kernel takes the same branch.
 *
 * Shapes (C-contiguous; int is 32-bit on both runtimes):
 *     param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq    (P,)     P = offsets[S]
 *     offsets                                             (S + 1,) offsets[0] = 0, nondecreasing
 *     coef                                                (S, NUM_COEFS), the row of segment s
 * max_exp_avg_sq is read and written only when amsgrad (otherwise any buffer, never touched).
 * One thread per element, grid ceil(P / NUM_THREADS); the launcher keeps P + NUM_THREADS within
 * int32 and checks the offsets, so every index here is in bounds.
 *
 * Compile-time defines (set by the launcher; one program per dtype):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     NUM_THREADS      threads per block (the launcher uses 256)
 *
 * Kernels (one version):
 *
 * adamw_step
 *     Each thread finds the segment of its element by a binary search of the offsets (log2 S
 *     reads of a small table that stays in cache; empty segments are skipped by it), reads that
 *     segment's coefficient row and updates its element of param, exp_avg, exp_avg_sq (and
 *     max_exp_avg_sq). Every element has one owner and no thread reads another's element, so
 *     there are no barriers, no atomics, and two launches give the same bits.
 */

/* The columns of a segment's coefficient row (gpu_cupy/adamw.py COEFFICIENTS). */
#define C_DECAY 0          /* 1 − γ λ */
#define C_W 1              /* 1 − β1, the lerp weight */
#define C_BETA2 2          /* β2 */
#define C_ONE_MINUS_BETA2 3
#define C_STEP_SIZE 4      /* γ / (1 − β1^t) */
#define C_BC2_SQRT 5       /* √(1 − β2^t) */
#define C_EPS 6            /* ε */
#define NUM_COEFS 7

/* The segment s with offsets[s] <= i < offsets[s + 1] (the last such s: empty segments, whose
 * two offsets are equal, are never it). */
DEVICE int find_segment(GLOBAL const int* offsets, int n_segments, int i)
{
    int lo = 0;               /* offsets[lo] <= i */
    int hi = n_segments;      /* i < offsets[hi] */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (offsets[mid] <= i)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

KERNEL void adamw_step(GLOBAL real* param, GLOBAL const real* grad, GLOBAL real* exp_avg,
                       GLOBAL real* exp_avg_sq, GLOBAL real* max_exp_avg_sq,
                       GLOBAL const int* offsets, GLOBAL const real* coef, int n_segments,
                       int total, int amsgrad, int maximize)
{
    int i = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    if (i >= total)
        return;
    GLOBAL const real* c = coef + find_segment(offsets, n_segments, i) * NUM_COEFS;

    real g = grad[i];
    if (maximize)
        g = -g;
    /* θ ← θ (1 − γ λ): decoupled, the decay never enters m or v (exactly θ when λ = 0) */
    real p = param[i] * c[C_DECAY];

    /* m ← m + w (g − m), or g − (g − m)(1 − w) for w >= 0.5 (torch's lerp) */
    real m = exp_avg[i];
    real w = c[C_W];
    real d = g - m;
    m = w < (real)0.5 ? m + w * d : g - d * ((real)1 - w);

    /* v ← β2 v + ((1 − β2) g) g */
    real v = exp_avg_sq[i] * c[C_BETA2] + (g * c[C_ONE_MINUS_BETA2]) * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (amsgrad) {
        /* v_max ← max(v_max, v), a NaN in either kept (np.maximum, torch.maximum) */
        real vmax = max_exp_avg_sq[i];
        vmax = (vmax != vmax || vmax >= v) ? vmax : v;
        max_exp_avg_sq[i] = vmax;
        v = vmax;
    }

    /* θ ← θ + (−step_size m) / (√v / √(1 − β2^t) + ε) */
    real denom = sqrt(v) / c[C_BC2_SQRT] + c[C_EPS];
    param[i] = p + (m * -c[C_STEP_SIZE]) / denom;
}
