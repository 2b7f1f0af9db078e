// GroupNorm (with an optional fused SiLU) and LayerNorm, forward and input gradient; gamma and
// beta are frozen (no gradient). f32 math and f32 statistics for every storage type.
//
// Both normalize contiguous blocks of m = cpg·inner elements, made of cpg channels of `inner`
// elements that share one gamma[c], beta[c]:
//   GroupNorm, x [N, C, ...spatial]: block b = (n, g), n = b / groups, g = b % groups, its
//     channels g·cpg .. (g+1)·cpg (cpg = C/groups), inner = spatial; stats [N, groups].
//   LayerNorm, x [rows, C]: groups = 1, cpg = C, inner = 1, block b = row b; stats [rows].
// Element i of block b is x[b·m + i], of channel c = g·cpg + i / inner.
//
// Grid: one thread block per normalized block (N·groups or rows blocks, 1-D), blockDim.x
// threads (a multiple of 32, at most 1024) striding over its m elements; the per-thread
// partial sums are combined through static shared memory (block_sums: 1024 floats per sum,
// 4 KB forward, 8 KB backward), the first warp adding them up; no dynamic shared memory.
//
// norm_forward_T (writes y, mean, rstd with =):
//   pass 1: mean = Σx / m
//   pass 2: var = Σ(x - mean)² / m  (two-pass, biased as PyTorch),  rstd = 1 / sqrt(var + eps)
//   pass 3: pre = (x - mean)·(gamma[c]·rstd) + beta[c],  y = pre, or silu(pre) = pre·σ(pre)
// norm_backward_T (writes dx with =; reads dy, x, gamma, beta (only with silu), mean, rstd):
//   x̂ = (x - mean)·rstd,  dpre = dy, or dy·silu'(gamma[c]·x̂ + beta[c]) with silu,
//   dx̂ = dpre·gamma[c]
//   pass 1: s1 = Σdx̂,  s2 = Σdx̂·x̂
//   pass 2: dx = rstd·(dx̂ - s1/m - x̂·s2/m)   (dx̂ recomputed from x, not stored)
#include "common.cuh"

// NORM_MAX_THREADS in tiles.h.

__device__ __forceinline__ float sigmoid_f(float v) { return 1.0f / (1.0f + expf(-v)); }

// Replaces each of the K per-thread values v[k] by its sum over the block (every thread gets
// the sums). Through shared memory rather than block_sum's two rounds of warp shuffles: three
// barriers for the block and the shuffles in the first warp only (the emulator pays per
// thread per barrier). `red` is K x NORM_MAX_THREADS floats, free on entry and exit.
template <int K>
__device__ __forceinline__ void block_sums(float (&v)[K], float (*red)[NORM_MAX_THREADS]) {
    const unsigned t = threadIdx.x;
    for (int k = 0; k < K; ++k) red[k][t] = v[k];
    __syncthreads();
    if (t < 32) {
        for (int k = 0; k < K; ++k) {
            float s = 0.0f;
            for (unsigned j = t; j < blockDim.x; j += 32) s += red[k][j];
            s = warp_sum(s);  // every lane has read its entries before lane 0 writes below
            if (t == 0) red[k][0] = s;
        }
    }
    __syncthreads();
    for (int k = 0; k < K; ++k) v[k] = red[k][0];
    __syncthreads();
}

template <typename T>
__device__ void norm_forward_impl(const T* __restrict__ x, const T* __restrict__ gamma,
                                  const T* __restrict__ beta, T* __restrict__ y,
                                  float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                  int groups, int cpg, int inner, float eps, int silu) {
    __shared__ float red[1][NORM_MAX_THREADS];
    const int b = blockIdx.x;
    const int m = cpg * inner;
    const int c0 = (b % groups) * cpg;
    const T* xb = x + (long long)b * m;
    T* yb = y + (long long)b * m;

    float s[1] = {0.0f};
    for (int i = threadIdx.x; i < m; i += blockDim.x) s[0] += to_f32(xb[i]);
    block_sums(s, red);
    const float mean = s[0] / (float)m;

    float q[1] = {0.0f};
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        float d = to_f32(xb[i]) - mean;
        q[0] += d * d;
    }
    block_sums(q, red);
    const float var = q[0] / (float)m;
    const float rstd = 1.0f / sqrtf(var + eps);
    if (threadIdx.x == 0) {
        mean_out[b] = mean;
        rstd_out[b] = rstd;
    }

    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const int c = c0 + (inner == 1 ? i : i / inner);
        const float a = to_f32(gamma[c]) * rstd;
        float v = (to_f32(xb[i]) - mean) * a + to_f32(beta[c]);
        if (silu) v = v * sigmoid_f(v);
        yb[i] = from_f32<T>(v);
    }
}

KERNEL void __launch_bounds__(NORM_MAX_THREADS)
    norm_forward_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                     float* rstd, int groups, int cpg, int inner, float eps, int silu) {
    norm_forward_impl(x, gamma, beta, y, mean, rstd, groups, cpg, inner, eps, silu);
}
KERNEL void __launch_bounds__(NORM_MAX_THREADS)
    norm_forward_f16(const __half* x, const __half* gamma, const __half* beta, __half* y,
                     float* mean, float* rstd, int groups, int cpg, int inner, float eps,
                     int silu) {
    norm_forward_impl(x, gamma, beta, y, mean, rstd, groups, cpg, inner, eps, silu);
}
KERNEL void __launch_bounds__(NORM_MAX_THREADS)
    norm_forward_bf16(const bf16_t* x, const bf16_t* gamma, const bf16_t* beta, bf16_t* y,
                      float* mean, float* rstd, int groups, int cpg, int inner, float eps,
                      int silu) {
    norm_forward_impl(x, gamma, beta, y, mean, rstd, groups, cpg, inner, eps, silu);
}

// dx̂ and x̂ of element i (channel c) of a block.
template <typename T>
__device__ __forceinline__ float norm_dxhat(const T* dyb, const T* xb, const T* gamma,
                                            const T* beta, int i, int c, float mean, float rstd,
                                            int silu, float* xh_out) {
    const float g = to_f32(gamma[c]);
    const float xh = (to_f32(xb[i]) - mean) * rstd;
    float dpre = to_f32(dyb[i]);
    if (silu) {
        const float pre = g * xh + to_f32(beta[c]);
        const float sg = sigmoid_f(pre);
        dpre *= sg * (1.0f + pre * (1.0f - sg));
    }
    *xh_out = xh;
    return dpre * g;
}

template <typename T>
__device__ void norm_backward_impl(const T* __restrict__ dy, const T* __restrict__ x,
                                   const T* __restrict__ gamma, const T* __restrict__ beta,
                                   const float* __restrict__ mean_in,
                                   const float* __restrict__ rstd_in, T* __restrict__ dx,
                                   int groups, int cpg, int inner, int silu) {
    __shared__ float red[2][NORM_MAX_THREADS];
    const int b = blockIdx.x;
    const int m = cpg * inner;
    const int c0 = (b % groups) * cpg;
    const long long off = (long long)b * m;
    const T* xb = x + off;
    const T* dyb = dy + off;
    T* dxb = dx + off;
    const float mean = mean_in[b], rstd = rstd_in[b];

    float s[2] = {0.0f, 0.0f};
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const int c = c0 + (inner == 1 ? i : i / inner);
        float xh;
        const float d = norm_dxhat(dyb, xb, gamma, beta, i, c, mean, rstd, silu, &xh);
        s[0] += d;
        s[1] += d * xh;
    }
    block_sums(s, red);
    const float mean_dxh = s[0] / (float)m;
    const float mean_dxh_xh = s[1] / (float)m;

    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const int c = c0 + (inner == 1 ? i : i / inner);
        float xh;
        const float d = norm_dxhat(dyb, xb, gamma, beta, i, c, mean, rstd, silu, &xh);
        dxb[i] = from_f32<T>(rstd * (d - mean_dxh - xh * mean_dxh_xh));
    }
}

KERNEL void __launch_bounds__(NORM_MAX_THREADS)
    norm_backward_f32(const float* dy, const float* x, const float* gamma, const float* beta,
                      const float* mean, const float* rstd, float* dx, int groups, int cpg,
                      int inner, int silu) {
    norm_backward_impl(dy, x, gamma, beta, mean, rstd, dx, groups, cpg, inner, silu);
}
KERNEL void __launch_bounds__(NORM_MAX_THREADS)
    norm_backward_f16(const __half* dy, const __half* x, const __half* gamma,
                      const __half* beta, const float* mean, const float* rstd, __half* dx,
                      int groups, int cpg, int inner, int silu) {
    norm_backward_impl(dy, x, gamma, beta, mean, rstd, dx, groups, cpg, inner, silu);
}
KERNEL void __launch_bounds__(NORM_MAX_THREADS)
    norm_backward_bf16(const bf16_t* dy, const bf16_t* x, const bf16_t* gamma,
                       const bf16_t* beta, const float* mean, const float* rstd, bf16_t* dx,
                       int groups, int cpg, int inner, int silu) {
    norm_backward_impl(dy, x, gamma, beta, mean, rstd, dx, groups, cpg, inner, silu);
}
