// Attention forward for heads wider than the tiled kernels take (d or dv > 256): the VAE's
// single-head 512-wide mid-block attention. Forward only (the VAE is frozen and never trained
// through), f32 math, deterministic. Shapes and conventions as kernels/attention.cu:
// q [B, Lq, H·d], k [B, Lk, H·d], v [B, Lk, H·dv], o [B, Lq, H·dv] (T), lse [B, H, Lq] (f32).
//
// attention_wide_fwd_T: one block of 256 threads per (b, h, query row i), grid B·H·Lq.
//   The query row is staged in shared memory (d floats). The keys are taken in chunks of
//   `chunk` (all of them when their scores fit the shared memory, as on sm_80+ for the VAE
//   at 1024x1024; a 64 KiB Turing block takes them in two): warp w computes the scores of the
//   chunk's keys w, w + 8, ...: S_j = scale·q·k_j (lanes split the row, warp_sum), kept in
//   shared memory. Per chunk, the online softmax: the chunk's max m_c (block reduction),
//   m' = max(m, m_c), P_j = exp(S_j - m'), the running sum l = l·exp(m - m') + Σ_j P_j, and
//   thread t's output columns c = t, t + 256, ... (at most WIDE_PER_THREAD) rescaled by
//   exp(m - m') before adding Σ_j P_j·v_j[c] (coalesced reads of V rows). At the end
//   O[i][c] = acc_c / l and lse_i = m + log l. With one chunk this is the plain softmax,
//   computed in the same order. Keys past the causal limit are not visited.
//   Dynamic shared memory: 4·(d + chunk) bytes (+ 32 floats of reduction scratch, static).
//   Writes o and lse with =, each element once.
#include "common.cuh"

// WIDE_THREADS, WIDE_SMEM, WIDE_STATIC_SMEM in tiles.h.

template <typename T>
__device__ void attention_wide_fwd_impl(const T* q, const T* k, const T* v, T* o, float* lse,
                                        int heads, int lq, int lk, int d, int dv, int causal,
                                        float scale, int chunk) {
    __shared__ float scratch[WIDE_STATIC_SMEM / 4];
    DYN_SHARED(float, smem);
    float* qs = smem;      // [d]
    float* s = smem + d;   // [chunk]
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
    const int kmax = causal ? min(lk, i + 1) : lk;
    float m = -INFINITY, l = 0.0f;
    float acc[WIDE_PER_THREAD];
UNROLL
    for (int r = 0; r < WIDE_PER_THREAD; ++r) acc[r] = 0.0f;
    for (int j0 = 0; j0 < kmax; j0 += chunk) {
        const int n = min(chunk, kmax - j0);
        __syncthreads();  // the query row is staged; the last chunk's P is read
        for (int j = warp; j < n; j += warps) {
            const T* krow = kbase + (long)(j0 + j) * qk_stride;
            float dot = 0.0f;
            for (int c = lane; c < d; c += 32) dot += qs[c] * to_f32(krow[c]);
            dot = warp_sum(dot);
            if (lane == 0) s[j] = dot * scale;
        }
        __syncthreads();
        float mc = -INFINITY;
        for (int j = tid; j < n; j += blockDim.x) mc = fmaxf(mc, s[j]);
        mc = block_max(mc, scratch);
        const float m_new = fmaxf(m, mc);
        const float rescale = m == -INFINITY ? 0.0f : expf(m - m_new);
        float lc = 0.0f;
        for (int j = tid; j < n; j += blockDim.x) {
            float p = expf(s[j] - m_new);
            s[j] = p;
            lc += p;
        }
        lc = block_sum(lc, scratch);  // ends with a barrier: every P_j is in s
        l = l * rescale + lc;
        m = m_new;
UNROLL
        for (int r = 0; r < WIDE_PER_THREAD; ++r) {
            const int c = tid + r * blockDim.x;
            if (c < dv) {
                float a = 0.0f;
                for (int j = 0; j < n; ++j) a += s[j] * to_f32(vbase[(long)(j0 + j) * v_stride + c]);
                acc[r] = acc[r] * rescale + a;
            }
        }
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T* orow = o + ((long)b * lq + i) * v_stride + (long)h * dv;
UNROLL
    for (int r = 0; r < WIDE_PER_THREAD; ++r) {
        const int c = tid + r * blockDim.x;
        if (c < dv) orow[c] = from_f32<T>(acc[r] * inv);
    }
    if (tid == 0) lse[row] = l > 0.0f ? m + logf(l) : -INFINITY;
}

KERNEL void attention_wide_fwd_f32(const float* q, const float* k, const float* v, float* o,
                                   float* lse, int heads, int lq, int lk, int d, int dv,
                                   int causal, float scale, int chunk) {
    attention_wide_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale, chunk);
}
KERNEL void attention_wide_fwd_f16(const __half* q, const __half* k, const __half* v, __half* o,
                                   float* lse, int heads, int lq, int lk, int d, int dv,
                                   int causal, float scale, int chunk) {
    attention_wide_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale, chunk);
}
KERNEL void attention_wide_fwd_bf16(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o,
                                    float* lse, int heads, int lq, int lk, int d, int dv,
                                    int causal, float scale, int chunk) {
    attention_wide_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale, chunk);
}
