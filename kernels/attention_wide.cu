// Attention forward for heads wider than the tiled kernels take (d or dv > 256): the VAE's
// single-head 512-wide mid-block attention. Forward only (the VAE is frozen and never trained
// through), f32 math, deterministic. Shapes and conventions as kernels/attention.cu:
// q [B, Lq, H·d], k [B, Lk, H·d], v [B, Lk, H·dv], o [B, Lq, H·dv] (T), lse [B, H, Lq] (f32).
//
// attention_wide_fwd_T: one block of 256 threads per (b, h, query row i), grid B·H·Lq.
//   The query row is staged in shared memory (d floats); warp w computes the scores of keys
//   w, w + 8, ...: S_j = scale·q·k_j (lanes split the row, warp_sum), kept in shared memory
//   (Lk floats; -inf past the causal limit). Then m = max_j S_j, P_j = exp(S_j - m),
//   l = Σ_j P_j (block reductions), lse_i = m + log l, and thread t writes
//   O[i][c] = Σ_j P_j·v_j[c] / l for c = t, t + 256, ... (coalesced reads of V rows).
//   Dynamic shared memory: 4·(d + Lk) bytes (+ 32 floats of reduction scratch, static).
//   Writes o and lse with =, each element once.
#include "common.cuh"

// WIDE_THREADS, WIDE_SMEM, WIDE_STATIC_SMEM in tiles.h.

template <typename T>
__device__ void attention_wide_fwd_impl(const T* q, const T* k, const T* v, T* o, float* lse,
                                        int heads, int lq, int lk, int d, int dv, int causal,
                                        float scale) {
    __shared__ float scratch[WIDE_STATIC_SMEM / 4];
    DYN_SHARED(float, smem);
    float* qs = smem;      // [d]
    float* s = smem + d;   // [lk]
    const int row = blockIdx.x;  // (b·H + h)·Lq + i
    const int i = row % lq;
    const int bh = row / lq;
    const int h = bh % heads, b = bh / heads;
    const long qk_stride = (long)heads * d, v_stride = (long)heads * dv;
    const T* qrow = q + ((long)b * lq + i) * qk_stride + (long)h * d;
    const T* kbase = k + (long)b * lk * qk_stride + (long)h * d;
    const T* vbase = v + (long)b * lk * v_stride + (long)h * dv;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    for (int c = tid; c < d; c += blockDim.x) qs[c] = to_f32(qrow[c]);
    __syncthreads();
    const int kmax = causal ? min(lk, i + 1) : lk;
    for (int j = warp; j < lk; j += warps) {
        float acc = 0.0f;
        if (j < kmax) {
            const T* krow = kbase + (long)j * qk_stride;
            for (int c = lane; c < d; c += 32) acc += qs[c] * to_f32(krow[c]);
        }
        acc = warp_sum(acc);
        if (lane == 0) s[j] = j < kmax ? acc * scale : -INFINITY;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int j = tid; j < lk; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_max(m, scratch);
    float l = 0.0f;
    for (int j = tid; j < lk; j += blockDim.x) {
        float p = s[j] == -INFINITY ? 0.0f : expf(s[j] - m);
        s[j] = p;
        l += p;
    }
    l = block_sum(l, scratch);  // ends with a barrier: every P_j is in s
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T* orow = o + ((long)b * lq + i) * v_stride + (long)h * dv;
    for (int c = tid; c < dv; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < kmax; ++j) acc += s[j] * to_f32(vbase[(long)j * v_stride + c]);
        orow[c] = from_f32<T>(acc * inv);
    }
    if (tid == 0) lse[row] = l > 0.0f ? m + logf(l) : -INFINITY;
}

KERNEL void attention_wide_fwd_f32(const float* q, const float* k, const float* v, float* o,
                                   float* lse, int heads, int lq, int lk, int d, int dv,
                                   int causal, float scale) {
    attention_wide_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale);
}
KERNEL void attention_wide_fwd_f16(const __half* q, const __half* k, const __half* v, __half* o,
                                   float* lse, int heads, int lq, int lk, int d, int dv,
                                   int causal, float scale) {
    attention_wide_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale);
}
KERNEL void attention_wide_fwd_bf16(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o,
                                    float* lse, int heads, int lq, int lk, int d, int dv,
                                    int causal, float scale) {
    attention_wide_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale);
}
