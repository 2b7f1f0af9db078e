// The optimizer's kernels on the flat f32 buffers of all LoRA parameters.
//
//   sum_squares_T: partial[b] = Σ x² over block b's chunk of SQ_CHUNK elements, accumulated in
//                  f64 (so a large but finite gradient never overflows into a false "overflow");
//                  the host adds the partials in order: deterministic. Block 256 threads, grid
//                  ceil(n / SQ_CHUNK). Writes partial with =.
//   adamw_f32:     PyTorch's AdamW with decoupled weight decay, one thread per 4 parameters
//                  (float4 loads and stores) plus one per tail element:
//                  g = grad·gs (gs = 1/loss_scale × clip coefficient), m = b1·m + (1-b1)·g,
//                  v = b2·v + (1-b2)·g², p = p·decay − step·m / (sqrt(v)·rbc2 + eps),
//                  decay = 1 − lr·wd, step = lr / (1 − b1^t), rbc2 = 1/sqrt(1 − b2^t).
//                  Reads grad, reads and writes p, m, v in place.
#include "common.cuh"

// SQ_CHUNK in tiles.h.

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

// One parameter's update (the formula in the header; the CPU backend's order of operations).
__device__ __forceinline__ void adamw_one(float& p, float grad, float& m, float& v, float b1,
                                          float b2, float c1, float c2, float eps, float decay,
                                          float step, float rbc2, float gs) {
    const float g = grad * gs;
    const float mi = b1 * m + c1 * g;
    const float vi = b2 * v + c2 * g * g;
    m = mi;
    v = vi;
    p = p * decay - step * mi / (sqrtf(vi) * rbc2 + eps);
}

// Grid: n4 + (n - 4·n4) threads, n4 = n / 4 (host: one thread per float4 plus one per tail
// element). Thread t < n4 updates elements 4t..4t+3 through float4 loads and stores when all
// four buffers are 16-byte aligned (pool buffers are; otherwise it loads them one by one);
// thread n4 + j updates tail element 4·n4 + j. Same formula per element either way.
KERNEL void adamw_f32(float* p, const float* grad, float* m, float* v, float b1, float b2,
                      float c1, float c2, float eps, float decay, float step, float rbc2,
                      float gs, int n) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n4 = n / 4;
    if (t < n4) {
        const bool vec = ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(grad) |
                           reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v)) &
                          15u) == 0;
        const long long i = 4 * t;
        if (vec) {
            float4 pp = *reinterpret_cast<const float4*>(p + i);
            const float4 gg = *reinterpret_cast<const float4*>(grad + i);
            float4 mm = *reinterpret_cast<const float4*>(m + i);
            float4 vv = *reinterpret_cast<const float4*>(v + i);
            adamw_one(pp.x, gg.x, mm.x, vv.x, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            adamw_one(pp.y, gg.y, mm.y, vv.y, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            adamw_one(pp.z, gg.z, mm.z, vv.z, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            adamw_one(pp.w, gg.w, mm.w, vv.w, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            *reinterpret_cast<float4*>(p + i) = pp;
            *reinterpret_cast<float4*>(m + i) = mm;
            *reinterpret_cast<float4*>(v + i) = vv;
        } else {
            for (long long j = i; j < i + 4; ++j)
                adamw_one(p[j], grad[j], m[j], v[j], b1, b2, c1, c2, eps, decay, step, rbc2, gs);
        }
    } else {
        const long long j = 4 * n4 + (t - n4);
        if (j < n)
            adamw_one(p[j], grad[j], m[j], v[j], b1, b2, c1, c2, eps, decay, step, rbc2, gs);
    }
}
