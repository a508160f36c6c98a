/* scaled_tanh.cu: y = a * tanh(b * x), elementwise, and its backward.
 *
 * Kernels (one element per thread; grid = ceil(n / NUM_THREADS) blocks of NUM_THREADS):
 *   scaled_tanh_forward   y[i]  = a * tanh(b * x[i])
 *   scaled_tanh_backward  dx[i] = dout[i] * a * b * (1 - tanh(b * x[i])^2)
 * Defines: NUM_THREADS (threads per block), REAL_IS_DOUBLE (float64).
 */

KERNEL void scaled_tanh_forward(GLOBAL const real* x, GLOBAL real* y, real a, real b, int n)
{
    int i = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    if (i < n)
        y[i] = a * tanh(b * x[i]);
}

KERNEL void scaled_tanh_backward(GLOBAL const real* x, GLOBAL const real* dout, GLOBAL real* dx,
                                 real a, real b, int n)
{
    int i = BLOCK_IDX_X * NUM_THREADS + THREAD_IDX_X;
    if (i < n) {
        real t = tanh(b * x[i]);
        dx[i] = dout[i] * a * b * ((real)1 - t * t);
    }
}
