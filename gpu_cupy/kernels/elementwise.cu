/*
 * elementwise.cu — the activations of the feed-forward blocks in the Crosscheck kernel dialect:
 * GELU (erf and tanh forms), SiLU and the SwiGLU gate, forward and backward.
 *
 * ref_numpy/activations.py and ref_numpy/swiglu.py are the NumPy references, and these kernels
 * evaluate the same formulas in the same way; gpu_cupy/elementwise.py is the launcher
 * (validation, grid). DIALECT.md describes the dialect.
 *
 *     gelu, erf form:   y = x Phi(x),  Phi(x) = erfc(-x / sqrt 2) / 2
 *                       dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
 *     gelu, tanh form:  y = x s,  s = sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *                       dy/dx = s + 2 x s sigmoid(-2u) sqrt(2/pi) (1 + 3 0.044715 x^2)
 *     silu:             y = x sigmoid(x),  dy/dx = s (1 + x (1 - s)),  s = sigmoid(x)
 *     swiglu gate:      h = silu(a) b,  da = dh b silu'(a),  db = dh silu(a)
 *
 * Evaluation in the tails, as in the NumPy copy:
 * - Phi(x) is erfc(-x / sqrt 2) / 2, not (1 + erf(x / sqrt 2)) / 2: for x = -6 the latter is
 *   1 - 1 = 0 in float32 while erfc keeps Phi(-6) = 9.9e-10 to full relative precision.
 * - 0.5 (1 + tanh u) is sigmoid(2u) and 1 - tanh(u)^2 is 4 sigmoid(2u) sigmoid(-2u): in float32
 *   tanh(-9.7) rounds to -1 + 6e-8, so 1 - t^2 would leave rounding noise where the sigmoids
 *   keep every digit.
 * - sigmoid(z) = 1 / (1 + exp(-z)): exp(-z) overflows to +inf for very negative z and the
 *   quotient is then 0, the correctly rounded limit; nothing divides inf by inf.
 * Every constant is cast to real, so the float32 kernels do no float64 arithmetic.
 *
 * Shapes: every array is a flat run of n elements (the launcher flattens any shape); outputs
 * and gradients have the length of the input. One thread per element, grid ceil(n /
 * NUM_THREADS); the launcher keeps n + NUM_THREADS within int32.
 *
 * Compile-time defines (set by the launcher; one program per dtype):
 *     REAL_IS_DOUBLE   real = double (else float)
 *     NUM_THREADS      threads per block (the launcher uses 256)
 *
 * Kernels (one version each):
 *     gelu_erf_forward,  gelu_erf_backward      y, dx = dy dy/dx from x (and dy)
 *     gelu_tanh_forward, gelu_tanh_backward
 *     silu_forward,      silu_backward
 *     swiglu_gate_forward   h from a, b
 *     swiglu_gate_backward  da and db from a, b, dh
 */

#define SQRT_HALF ((real)0.70710678118654752440)     /* 1 / sqrt 2 */
#define INV_SQRT_2PI ((real)0.39894228040143267794)  /* 1 / sqrt(2 pi) */
#define SQRT_2_OVER_PI ((real)0.79788456080286535588)
#define KAPPA ((real)0.044715)                       /* the cubic coefficient of the tanh form */

DEVICE int element_index(void)
{
    return BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
}

DEVICE real sigmoid(real z)
{
    return (real)1 / ((real)1 + exp(-z));
}

/* Phi(x), the standard normal CDF, through erfc in both tails. */
DEVICE real normal_cdf(real x)
{
    return (real)0.5 * erfc(-x * SQRT_HALF);
}

/* u = sqrt(2/pi) (x + 0.044715 x^3), the argument of tanh in the tanh form. */
DEVICE real gelu_tanh_arg(real x)
{
    return SQRT_2_OVER_PI * (x + KAPPA * x * x * x);
}

DEVICE real silu_grad(real x)
{
    real s = sigmoid(x);
    return s * ((real)1 + x * ((real)1 - s));
}

KERNEL void gelu_erf_forward(GLOBAL const real* x, GLOBAL real* y, int n)
{
    int i = element_index();
    if (i < n)
        y[i] = x[i] * normal_cdf(x[i]);
}

KERNEL void gelu_erf_backward(GLOBAL const real* x, GLOBAL const real* dy, GLOBAL real* dx,
                              int n)
{
    int i = element_index();
    if (i < n) {
        real v = x[i];
        dx[i] = dy[i] * (normal_cdf(v) + v * INV_SQRT_2PI * exp((real)-0.5 * v * v));
    }
}

KERNEL void gelu_tanh_forward(GLOBAL const real* x, GLOBAL real* y, int n)
{
    int i = element_index();
    if (i < n)
        y[i] = x[i] * sigmoid((real)2 * gelu_tanh_arg(x[i]));
}

KERNEL void gelu_tanh_backward(GLOBAL const real* x, GLOBAL const real* dy, GLOBAL real* dx,
                               int n)
{
    int i = element_index();
    if (i < n) {
        real v = x[i];
        real u = gelu_tanh_arg(v);
        real dudx = SQRT_2_OVER_PI * ((real)1 + (real)3 * KAPPA * v * v);
        real s = sigmoid((real)2 * u);
        dx[i] = dy[i] * (s + (real)2 * v * s * sigmoid((real)-2 * u) * dudx);
    }
}

KERNEL void silu_forward(GLOBAL const real* x, GLOBAL real* y, int n)
{
    int i = element_index();
    if (i < n)
        y[i] = x[i] * sigmoid(x[i]);
}

KERNEL void silu_backward(GLOBAL const real* x, GLOBAL const real* dy, GLOBAL real* dx, int n)
{
    int i = element_index();
    if (i < n)
        dx[i] = dy[i] * silu_grad(x[i]);
}

KERNEL void swiglu_gate_forward(GLOBAL const real* a, GLOBAL const real* b, GLOBAL real* h,
                                int n)
{
    int i = element_index();
    if (i < n)
        h[i] = a[i] * sigmoid(a[i]) * b[i];
}

KERNEL void swiglu_gate_backward(GLOBAL const real* a, GLOBAL const real* b,
                                 GLOBAL const real* dh, GLOBAL real* da, GLOBAL real* db, int n)
{
    int i = element_index();
    if (i < n) {
        real v = a[i];
        da[i] = dh[i] * b[i] * silu_grad(v);
        db[i] = dh[i] * (v * sigmoid(v));
    }
}
