// The optimizer's kernels on the flat f32 buffers of all LoRA parameters.
//
//   sum_squares_T: partial[b] = Σ x² over block b's chunk of SQ_CHUNK elements, accumulated in
//                  f64 (so a large but finite gradient never overflows into a false "overflow");
//                  the host adds the partials in order: deterministic. Block 256 threads, grid
//                  ceil(n / SQ_CHUNK). Writes partial with =.
//   adamw_f32:     one thread per parameter, PyTorch's AdamW with decoupled weight decay:
//                  g = grad·gs (gs = 1/loss_scale × clip coefficient), m = b1·m + (1-b1)·g,
//                  v = b2·v + (1-b2)·g², p = p·decay − step·m / (sqrt(v)·rbc2 + eps),
//                  decay = 1 − lr·wd, step = lr / (1 − b1^t), rbc2 = 1/sqrt(1 − b2^t).
//                  Reads grad, reads and writes p, m, v in place.
#include "common.cuh"

#define SQ_CHUNK 8192

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T>
__device__ void sum_squares_impl(const T* x, double* partial, int n) {
    __shared__ double scratch[32];
    int lo = blockIdx.x * SQ_CHUNK, hi = min(n, lo + SQ_CHUNK);
    double acc = 0.0;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double v = to_f32(x[i]);
        acc += v * v;
    }
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = (blockDim.x + 31u) >> 5;
    acc = warp_sum_f64(acc);
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        double t = lane < warps ? scratch[lane] : 0.0;
        t = warp_sum_f64(t);
        if (lane == 0) partial[blockIdx.x] = t;
    }
}
KERNEL void sum_squares_f32(const float* x, double* partial, int n) {
    sum_squares_impl(x, partial, n);
}
KERNEL void sum_squares_f16(const __half* x, double* partial, int n) {
    sum_squares_impl(x, partial, n);
}

KERNEL void adamw_f32(float* p, const float* grad, float* m, float* v, float b1, float b2,
                      float c1, float c2, float eps, float decay, float step, float rbc2,
                      float gs, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i] * gs;
    float mi = b1 * m[i] + c1 * g;
    float vi = b2 * v[i] + c2 * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step * mi / (sqrtf(vi) * rbc2 + eps);
}
