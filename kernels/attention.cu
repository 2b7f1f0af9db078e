// Multi-head scaled dot-product attention, forward and backward: the plain tiled reference
// kernels (f32 math, no tensor cores, no atomics, deterministic). The [Lq, Lk] score matrix
// is never stored: it exists one [rows, 32] tile at a time in shared memory.
//
// Shapes (row-major, T = float or __half): q [B, Lq, H·d], k [B, Lk, H·d], v [B, Lk, H·dv],
// o and dO [B, Lq, H·dv], lse and D [B, H, Lq] (f32). Head h of token row i is the column
// slice h·w..(h+1)·w of that row. s = 1/sqrt(d) (passed in as `scale`). d, dv <= 256
// (ATT_MAX_D); dv may be 0. Causal: query i sees keys 0..=i (the host checks Lq == Lk).
//
// Forward, per (b, h) and query row i:
//   S_ij  = s·q_i·k_j                              (-inf where masked)
//   m_i   = max_j S_ij,  l_i = Σ_j exp(S_ij - m_i)  (online: running max and sum, in f32)
//   O_i   = Σ_j exp(S_ij - m_i)·v_j / l_i,   lse_i = m_i + log l_i
// Backward, with P_ij = exp(S_ij - lse_i) recomputed from the saved lse:
//   D_i   = Σ_c dO_ic·O_ic
//   dS_ij = P_ij·(dO_i·v_j - D_i)
//   dQ_i  = s·Σ_j dS_ij·k_j,   dK_j = s·Σ_i dS_ij·q_i,   dV_j = Σ_i P_ij·dO_i
//
// Kernels (every one writes its outputs with =, each element by exactly one thread):
//   attention_fwd_T      grid B·H·ceil(Lq/16) blocks of 128 threads; block (bh, query tile of
//                        16 rows) stages its Q rows once, then key/value tiles of 32 rows, and
//                        keeps the O accumulators in registers (thread: row t/8, columns
//                        t%8 + 8u). Writes o (T) and lse (f32).
//   attention_bwd_dot_T  one thread per (b, h, i), 1-D grid: writes D (f32, [B, H, Lq]).
//   attention_bwd_dq_T   grid B·H·ceil(Lq/16) blocks of 128 threads; block (bh, query tile)
//                        stages Q, dO, lse, D once, loops over key/value tiles of 32: writes dq.
//   attention_bwd_dkv_T  grid B·H·ceil(Lk/16) blocks of 128 threads; block (bh, key tile of
//                        16 rows) stages K, V once, loops over query tiles of 32 (causal: from
//                        the tile's first key on): writes dk and dv (`parts` 3), or dk only
//                        (1: no P tile) or dv only (2: no V, no dS tile), the two launches
//                        the host makes when both together exceed the device's shared memory
//                        (heads of 160 on 64 KiB, sm_75).
// Dynamic shared memory (f32), with odd strides (w | 1) where lanes walk rows:
//   fwd: Q [16][d] + K [32][d|1] + V [32][dv] + S [16][33] + 3·16
//   dq:  Q [16][d] + dO [16][dv] + K [32][d|1] + V [32][dv|1] + dS [16][33] + 2·16
//   dkv: K [16][d] + V [16][dv] + Q [32][d|1] + dO [32][dv|1] + P, dS [16][33] + 2·32
//        (dk only: no P; dv only: no V, no dS)
// (In bytes: ATT_FWD_SMEM, ATT_DQ_SMEM, ATT_DKV_SMEM in tiles.h, which the launcher uses.)
#include "common.cuh"

// Tiles and the shared memory of each kernel: ATT_* in tiles.h.
// Accumulator columns per thread: 8 threads share a row, column c = t % 8 + 8u.
#define ATT_COLS (ATT_MAX_D / 8)

// Row i of head h of batch b in a [B, L, H·w] tensor.
__device__ __forceinline__ size_t att_row(int b, int i, int h, int len, int heads, int w) {
    return ((size_t(b) * size_t(len) + size_t(i)) * size_t(heads) + size_t(h)) * size_t(w);
}

// rows [r0, r0 + rows) of head h as f32 into dst [rows][stride] (columns >= w untouched);
// rows >= len are zero-filled.
template <typename T>
__device__ __forceinline__ void att_stage(float* dst, int stride, const T* src, int b, int h,
                                          int r0, int rows, int len, int heads, int w) {
    for (int e = threadIdx.x; e < rows * w; e += blockDim.x) {
        int r = e / w, c = e % w;
        int i = r0 + r;
        dst[r * stride + c] = i < len ? to_f32(src[att_row(b, i, h, len, heads, w) + c]) : 0.0f;
    }
}

// ---- forward ----

template <typename T>
__device__ void attention_fwd_impl(const T* q, const T* k, const T* v, T* o, float* lse,
                                   int heads, int lq, int lk, int d, int dv, int causal,
                                   float scale) {
    DYN_SHARED(float, sm);
    const int ks = d | 1;
    float* Qs = sm;                       // [BQ][d]
    float* Ks = Qs + ATT_BQ * d;          // [BK][ks]
    float* Vs = Ks + ATT_BK * ks;         // [BK][dv]
    float* Ss = Vs + ATT_BK * dv;         // [BQ][BK + 1]: scores, then exp(S - m)
    float* Ms = Ss + ATT_BQ * (ATT_BK + 1);  // [BQ] running max
    float* Ls = Ms + ATT_BQ;              // [BQ] running sum
    float* As = Ls + ATT_BQ;              // [BQ] this tile's rescale of the old sums

    const int tid = threadIdx.x;
    const int q_tiles = (lq + ATT_BQ - 1) / ATT_BQ;
    const int bh = blockIdx.x / q_tiles;
    const int q0 = (blockIdx.x % q_tiles) * ATT_BQ;
    const int b = bh / heads, h = bh % heads;

    att_stage(Qs, d, q, b, h, q0, ATT_BQ, lq, heads, d);
    if (tid < ATT_BQ) {
        Ms[tid] = -INFINITY;
        Ls[tid] = 0.0f;
    }
    // Score mapping: key jj = lane, rows warp + 4u. Accumulator mapping: row t/8, cols t%8+8u.
    const int jj = tid & 31, rw = tid >> 5;
    const int ar = tid >> 3, acl = tid & 7;
    float acc[ATT_COLS];
UNROLL
    for (int u = 0; u < ATT_COLS; ++u) acc[u] = 0.0f;

    const int kend = causal && q0 + ATT_BQ < lk ? q0 + ATT_BQ : lk;
    for (int j0 = 0; j0 < kend; j0 += ATT_BK) {
        att_stage(Ks, ks, k, b, h, j0, ATT_BK, lk, heads, d);
        att_stage(Vs, dv, v, b, h, j0, ATT_BK, lk, heads, dv);
        __syncthreads();

        float s[ATT_BQ / 4];
UNROLL
        for (int u = 0; u < ATT_BQ / 4; ++u) s[u] = 0.0f;
        for (int c = 0; c < d; ++c) {
            float kc = Ks[jj * ks + c];
UNROLL
            for (int u = 0; u < ATT_BQ / 4; ++u) s[u] += Qs[(rw + 4 * u) * d + c] * kc;
        }
        const int j = j0 + jj;
UNROLL
        for (int u = 0; u < ATT_BQ / 4; ++u) {
            int r = rw + 4 * u, i = q0 + r;
            bool seen = i < lq && j < lk && (!causal || j <= i);
            Ss[r * (ATT_BK + 1) + jj] = seen ? scale * s[u] : -INFINITY;
        }
        __syncthreads();

        if (tid < ATT_BQ) {
            float* row = Ss + tid * (ATT_BK + 1);
            float m_old = Ms[tid];
            float mx = -INFINITY;
            for (int t = 0; t < ATT_BK; ++t) mx = fmaxf(mx, row[t]);
            float m = fmaxf(m_old, mx);
            float alpha = 1.0f, sum = 0.0f;
            if (m == -INFINITY) {  // nothing seen yet (a row past Lq): all weights 0
                for (int t = 0; t < ATT_BK; ++t) row[t] = 0.0f;
            } else {
                alpha = expf(m_old - m);  // 0 while m_old is -inf
                for (int t = 0; t < ATT_BK; ++t) {
                    float p = expf(row[t] - m);  // masked: exp(-inf) = 0
                    row[t] = p;
                    sum += p;
                }
            }
            Ms[tid] = m;
            Ls[tid] = Ls[tid] * alpha + sum;
            As[tid] = alpha;
        }
        __syncthreads();

        {
            const float alpha = As[ar];
            const float* prow = Ss + ar * (ATT_BK + 1);
UNROLL
            for (int u = 0; u < ATT_COLS; ++u) acc[u] *= alpha;
            for (int t = 0; t < ATT_BK; ++t) {
                float p = prow[t];
                const float* vrow = Vs + t * dv;
UNROLL
                for (int u = 0; u < ATT_COLS; ++u) {
                    int c = acl + 8 * u;
                    if (c >= dv) break;
                    acc[u] += p * vrow[c];
                }
            }
        }
        __syncthreads();
    }

    const int i = q0 + ar;
    if (i < lq) {
        const float inv = 1.0f / Ls[ar];
        T* orow = o + att_row(b, i, h, lq, heads, dv);
UNROLL
        for (int u = 0; u < ATT_COLS; ++u) {
            int c = acl + 8 * u;
            if (c >= dv) break;
            orow[c] = from_f32<T>(acc[u] * inv);
        }
    }
    if (tid < ATT_BQ && q0 + tid < lq) lse[size_t(bh) * lq + q0 + tid] = Ms[tid] + logf(Ls[tid]);
}

KERNEL void attention_fwd_f32(const float* q, const float* k, const float* v, float* o,
                              float* lse, int heads, int lq, int lk, int d, int dv, int causal,
                              float scale) {
    attention_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale);
}
KERNEL void attention_fwd_f16(const __half* q, const __half* k, const __half* v, __half* o,
                              float* lse, int heads, int lq, int lk, int d, int dv, int causal,
                              float scale) {
    attention_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale);
}
KERNEL void attention_fwd_bf16(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o,
                               float* lse, int heads, int lq, int lk, int d, int dv, int causal,
                               float scale) {
    attention_fwd_impl(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale);
}

// ---- backward: D = rowsum(dO ⊙ O) ----

template <typename T>
__device__ void attention_bwd_dot_impl(const T* o, const T* d_o, float* dsum, int heads, int lq,
                                       int dv, int n) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    int i = idx % lq, bh = idx / lq;
    size_t off = att_row(bh / heads, i, bh % heads, lq, heads, dv);
    float acc = 0.0f;
    for (int c = 0; c < dv; ++c) acc += to_f32(d_o[off + c]) * to_f32(o[off + c]);
    dsum[idx] = acc;
}
KERNEL void attention_bwd_dot_f32(const float* o, const float* d_o, float* dsum, int heads,
                                  int lq, int dv, int n) {
    attention_bwd_dot_impl(o, d_o, dsum, heads, lq, dv, n);
}
KERNEL void attention_bwd_dot_f16(const __half* o, const __half* d_o, float* dsum, int heads,
                                  int lq, int dv, int n) {
    attention_bwd_dot_impl(o, d_o, dsum, heads, lq, dv, n);
}
KERNEL void attention_bwd_dot_bf16(const bf16_t* o, const bf16_t* d_o, float* dsum, int heads,
                                   int lq, int dv, int n) {
    attention_bwd_dot_impl(o, d_o, dsum, heads, lq, dv, n);
}

// ---- backward: dQ, one block per (b, h, query tile) ----

template <typename T>
__device__ void attention_bwd_dq_impl(const T* q, const T* k, const T* v, const float* lse,
                                      const T* d_o, const float* dsum, T* dq, int heads, int lq,
                                      int lk, int d, int dv, int causal, float scale) {
    DYN_SHARED(float, sm);
    const int ks = d | 1, vs = dv | 1;
    float* Qs = sm;                      // [BQ][d]
    float* Os = Qs + ATT_BQ * d;         // [BQ][dv]: dO
    float* Ks = Os + ATT_BQ * dv;        // [BK][ks]
    float* Vs = Ks + ATT_BK * ks;        // [BK][vs]
    float* Ss = Vs + ATT_BK * vs;        // [BQ][BK + 1]: dS
    float* Ls = Ss + ATT_BQ * (ATT_BK + 1);  // [BQ] lse
    float* Ds = Ls + ATT_BQ;             // [BQ] D

    const int tid = threadIdx.x;
    const int q_tiles = (lq + ATT_BQ - 1) / ATT_BQ;
    const int bh = blockIdx.x / q_tiles;
    const int q0 = (blockIdx.x % q_tiles) * ATT_BQ;
    const int b = bh / heads, h = bh % heads;

    att_stage(Qs, d, q, b, h, q0, ATT_BQ, lq, heads, d);
    att_stage(Os, dv, d_o, b, h, q0, ATT_BQ, lq, heads, dv);
    if (tid < ATT_BQ) {
        int i = q0 + tid;
        Ls[tid] = i < lq ? lse[size_t(bh) * lq + i] : 0.0f;
        Ds[tid] = i < lq ? dsum[size_t(bh) * lq + i] : 0.0f;
    }
    const int jj = tid & 31, rw = tid >> 5;
    const int ar = tid >> 3, acl = tid & 7;
    float acc[ATT_COLS];
UNROLL
    for (int u = 0; u < ATT_COLS; ++u) acc[u] = 0.0f;

    const int kend = causal && q0 + ATT_BQ < lk ? q0 + ATT_BQ : lk;
    for (int j0 = 0; j0 < kend; j0 += ATT_BK) {
        att_stage(Ks, ks, k, b, h, j0, ATT_BK, lk, heads, d);
        att_stage(Vs, vs, v, b, h, j0, ATT_BK, lk, heads, dv);
        __syncthreads();

        float s[ATT_BQ / 4], dp[ATT_BQ / 4];
UNROLL
        for (int u = 0; u < ATT_BQ / 4; ++u) s[u] = dp[u] = 0.0f;
        for (int c = 0; c < d; ++c) {
            float kc = Ks[jj * ks + c];
UNROLL
            for (int u = 0; u < ATT_BQ / 4; ++u) s[u] += Qs[(rw + 4 * u) * d + c] * kc;
        }
        for (int c = 0; c < dv; ++c) {
            float vc = Vs[jj * vs + c];
UNROLL
            for (int u = 0; u < ATT_BQ / 4; ++u) dp[u] += Os[(rw + 4 * u) * dv + c] * vc;
        }
        const int j = j0 + jj;
UNROLL
        for (int u = 0; u < ATT_BQ / 4; ++u) {
            int r = rw + 4 * u, i = q0 + r;
            bool seen = i < lq && j < lk && (!causal || j <= i);
            float p = seen ? expf(scale * s[u] - Ls[r]) : 0.0f;
            Ss[r * (ATT_BK + 1) + jj] = p * (dp[u] - Ds[r]);
        }
        __syncthreads();

        {
            const float* srow = Ss + ar * (ATT_BK + 1);
            for (int t = 0; t < ATT_BK; ++t) {
                float g = srow[t];
                const float* krow = Ks + t * ks;
UNROLL
                for (int u = 0; u < ATT_COLS; ++u) {
                    int c = acl + 8 * u;
                    if (c >= d) break;
                    acc[u] += g * krow[c];
                }
            }
        }
        __syncthreads();
    }

    const int i = q0 + ar;
    if (i < lq) {
        T* row = dq + att_row(b, i, h, lq, heads, d);
UNROLL
        for (int u = 0; u < ATT_COLS; ++u) {
            int c = acl + 8 * u;
            if (c >= d) break;
            row[c] = from_f32<T>(scale * acc[u]);
        }
    }
}

KERNEL void attention_bwd_dq_f32(const float* q, const float* k, const float* v,
                                 const float* lse, const float* d_o, const float* dsum,
                                 float* dq, int heads, int lq, int lk, int d, int dv, int causal,
                                 float scale) {
    attention_bwd_dq_impl(q, k, v, lse, d_o, dsum, dq, heads, lq, lk, d, dv, causal, scale);
}
KERNEL void attention_bwd_dq_f16(const __half* q, const __half* k, const __half* v,
                                 const float* lse, const __half* d_o, const float* dsum,
                                 __half* dq, int heads, int lq, int lk, int d, int dv, int causal,
                                 float scale) {
    attention_bwd_dq_impl(q, k, v, lse, d_o, dsum, dq, heads, lq, lk, d, dv, causal, scale);
}
KERNEL void attention_bwd_dq_bf16(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                  const float* lse, const bf16_t* d_o, const float* dsum,
                                  bf16_t* dq, int heads, int lq, int lk, int d, int dv, int causal,
                                  float scale) {
    attention_bwd_dq_impl(q, k, v, lse, d_o, dsum, dq, heads, lq, lk, d, dv, causal, scale);
}

// ---- backward: dK and dV, one block per (b, h, key tile) ----

template <typename T>
__device__ void attention_bwd_dkv_impl(const T* q, const T* k, const T* v, const float* lse,
                                       const T* d_o, const float* dsum, T* dk, T* dvo, int heads,
                                       int lq, int lk, int d, int dv, int causal, float scale,
                                       int parts) {
    DYN_SHARED(float, sm);
    const bool want_k = parts & 1, want_v = parts & 2;
    const int qs = d | 1, os = dv | 1;
    float* Ks = sm;                                          // [KB][d]
    float* Vs = Ks + ATT_KB * d;                             // [KB][dv] (dK only)
    float* Qs = Vs + (want_k ? ATT_KB * dv : 0);             // [QT][qs]
    float* Os = Qs + ATT_QT * qs;                            // [QT][os]: dO
    float* Ps = Os + ATT_QT * os;                            // [KB][QT + 1]: P (dV only)
    float* Gs = Ps + (want_v ? ATT_KB * (ATT_QT + 1) : 0);   // [KB][QT + 1]: dS (dK only)
    float* Ls = Gs + (want_k ? ATT_KB * (ATT_QT + 1) : 0);   // [QT] lse
    float* Ds = Ls + ATT_QT;                                 // [QT] D

    const int tid = threadIdx.x;
    const int k_tiles = (lk + ATT_KB - 1) / ATT_KB;
    const int bh = blockIdx.x / k_tiles;
    const int k0 = (blockIdx.x % k_tiles) * ATT_KB;
    const int b = bh / heads, h = bh % heads;

    att_stage(Ks, d, k, b, h, k0, ATT_KB, lk, heads, d);
    if (want_k) att_stage(Vs, dv, v, b, h, k0, ATT_KB, lk, heads, dv);
    // Score mapping: query ii = lane, keys warp + 4u. Accumulator mapping: key t/8, cols t%8+8u.
    const int ii = tid & 31, rw = tid >> 5;
    const int ar = tid >> 3, acl = tid & 7;
    float acc_k[ATT_COLS], acc_v[ATT_COLS];
UNROLL
    for (int u = 0; u < ATT_COLS; ++u) acc_k[u] = acc_v[u] = 0.0f;

    for (int i0 = causal ? k0 : 0; i0 < lq; i0 += ATT_QT) {
        att_stage(Qs, qs, q, b, h, i0, ATT_QT, lq, heads, d);
        att_stage(Os, os, d_o, b, h, i0, ATT_QT, lq, heads, dv);
        if (tid < ATT_QT) {
            int i = i0 + tid;
            Ls[tid] = i < lq ? lse[size_t(bh) * lq + i] : 0.0f;
            Ds[tid] = i < lq ? dsum[size_t(bh) * lq + i] : 0.0f;
        }
        __syncthreads();

        float s[ATT_KB / 4], dp[ATT_KB / 4];
UNROLL
        for (int u = 0; u < ATT_KB / 4; ++u) s[u] = dp[u] = 0.0f;
        for (int c = 0; c < d; ++c) {
            float qc = Qs[ii * qs + c];
UNROLL
            for (int u = 0; u < ATT_KB / 4; ++u) s[u] += qc * Ks[(rw + 4 * u) * d + c];
        }
        for (int c = 0; want_k && c < dv; ++c) {
            float oc = Os[ii * os + c];
UNROLL
            for (int u = 0; u < ATT_KB / 4; ++u) dp[u] += oc * Vs[(rw + 4 * u) * dv + c];
        }
        const int i = i0 + ii;
UNROLL
        for (int u = 0; u < ATT_KB / 4; ++u) {
            int r = rw + 4 * u, j = k0 + r;
            bool seen = i < lq && j < lk && (!causal || j <= i);
            float p = seen ? expf(scale * s[u] - Ls[ii]) : 0.0f;
            if (want_v) Ps[r * (ATT_QT + 1) + ii] = p;
            if (want_k) Gs[r * (ATT_QT + 1) + ii] = p * (dp[u] - Ds[ii]);
        }
        __syncthreads();

        {
            const float* prow = Ps + ar * (ATT_QT + 1);
            const float* grow = Gs + ar * (ATT_QT + 1);
            for (int t = 0; t < ATT_QT; ++t) {
                const float* qrow = Qs + t * qs;
                const float* orow = Os + t * os;
                if (want_k) {
                    float g = grow[t];
UNROLL
                    for (int u = 0; u < ATT_COLS; ++u) {
                        int c = acl + 8 * u;
                        if (c >= d) break;
                        acc_k[u] += g * qrow[c];
                    }
                }
                if (want_v) {
                    float p = prow[t];
UNROLL
                    for (int u = 0; u < ATT_COLS; ++u) {
                        int c = acl + 8 * u;
                        if (c >= dv) break;
                        acc_v[u] += p * orow[c];
                    }
                }
            }
        }
        __syncthreads();
    }

    const int j = k0 + ar;
    if (j < lk) {
        T* krow = dk + att_row(b, j, h, lk, heads, d);
        T* vrow = dvo + att_row(b, j, h, lk, heads, dv);
UNROLL
        for (int u = 0; u < ATT_COLS; ++u) {
            int c = acl + 8 * u;
            if (want_k && c < d) krow[c] = from_f32<T>(scale * acc_k[u]);
            if (want_v && c < dv) vrow[c] = from_f32<T>(acc_v[u]);
        }
    }
}

KERNEL void attention_bwd_dkv_f32(const float* q, const float* k, const float* v,
                                  const float* lse, const float* d_o, const float* dsum,
                                  float* dk, float* dv_out, int heads, int lq, int lk, int d,
                                  int dv, int causal, float scale, int parts) {
    attention_bwd_dkv_impl(q, k, v, lse, d_o, dsum, dk, dv_out, heads, lq, lk, d, dv, causal,
                           scale, parts);
}
KERNEL void attention_bwd_dkv_f16(const __half* q, const __half* k, const __half* v,
                                  const float* lse, const __half* d_o, const float* dsum,
                                  __half* dk, __half* dv_out, int heads, int lq, int lk, int d,
                                  int dv, int causal, float scale, int parts) {
    attention_bwd_dkv_impl(q, k, v, lse, d_o, dsum, dk, dv_out, heads, lq, lk, d, dv, causal,
                           scale, parts);
}
KERNEL void attention_bwd_dkv_bf16(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                   const float* lse, const bf16_t* d_o, const float* dsum,
                                   bf16_t* dk, bf16_t* dv_out, int heads, int lq, int lk, int d,
                                   int dv, int causal, float scale, int parts) {
    attention_bwd_dkv_impl(q, k, v, lse, d_o, dsum, dk, dv_out, heads, lq, lk, d, dv, causal,
                           scale, parts);
}
