// The fast GroupNorm (+ optional fused SiLU) and LayerNorm kernels for 16-bit storage, each a
// template on T (__half: the `_f16` entry points named below; bf16_t: their `_bf16` twins,
// launched on compute capability 8.0+ only; "halves" below are elements of T): 16-byte
// vector loads and stores (8 halves), f32 math, f32 statistics in the simple kernels'
// convention (kernels/norm.cu: mean and rstd = 1/sqrt(var + eps), var biased, per normalized
// block: [N, groups] for GroupNorm, [rows] for LayerNorm). gamma and beta are frozen.
//
// Preconditions (checked by the host, src/backend/cuda/ops/norm/fast.rs, which otherwise runs
// the simple kernels): every normalized block's span m is a multiple of 8 halves and the
// tensors' base pointers are 16-byte aligned, so each block starts on a 16-byte boundary and
// every access is a whole uint4. LayerNorm also needs C <= 8·32·V (V = 8: C <= 2048).
//
// ---- GroupNorm: x [N, C, ...spatial] as N·groups blocks of m = cpg·inner contiguous elements
// (cpg = C/groups channels of inner = spatial elements; element i of block b has channel
// (b % groups)·cpg + i / inner). Each block is cut into nchunks <= 32 chunks of `chunk`
// elements (a multiple of 8; the last one may be shorter), and every launch has one thread
// block of GN_THREADS threads per (block, chunk): grid.x = N·groups·nchunks, blockIdx.x =
// b·nchunks + k. So a batch-1 SD1.5 layer (32 groups) runs hundreds of thread blocks, not 32.
// Each thread strides over its chunk one 8-half vector at a time.
//
// Forward, two launches, deterministic (fixed merge orders, no atomics):
//   gn_fast_stats_f16:   part[b, k] = (mean_k, M2_k) of chunk k (M2 = Σ(x - mean_k)²): each
//                        8-vector's exact two-pass (mean, M2), merged with Chan et al.'s
//                        pairwise formula per thread, then down a shuffle tree per warp, then
//                        over the warps in order by thread 0. Writes part with =.
//   gn_fast_forward_f16: every warp merges the nchunks partials of its block b (lane j holds
//                        chunk j, shuffle tree) into (mean, M2) -> var = M2 / m, rstd; all
//                        warps of all the block's chunks compute the same bits. Then
//                        y = (x - mean)·gamma[c]·rstd + beta[c] (silu: y·σ(y)) over the chunk,
//                        reading x a second time. Writes y, and mean/rstd[b] (chunk 0, thread
//                        0), with =.
// Backward, two launches (x̂ = (x - mean)·rstd, dpre = dy or dy·silu'(gamma·x̂ + beta),
// dx̂ = dpre·gamma[c], as in norm.cu):
//   gn_fast_bwd_partials_f16: part[b, k] = (Σ dx̂, Σ dx̂·x̂) over chunk k (f32, thread sums,
//                        warp shuffle sums, warps in order). Writes part with =.
//   gn_fast_backward_f16: every warp sums its block's partials (lane j chunk j, shuffle tree):
//                        s1, s2; dx = rstd·(dx̂ - s1/m - x̂·s2/m) over the chunk. Writes dx
//                        with =.
// Shared memory: 4 partial records per block (static, <= 48 bytes). No dynamic smem.
//
// ---- LayerNorm: x [rows, C], one warp per row, LN_ROWS = 4 rows (warps) per 128-thread
// block, grid.x = ceil(rows / 4). Lane l holds the vectors l, l+32, .. (at most V of them, C/8
// in all) in registers as raw halves, so x (and dy) are read from memory once:
//   ln_fast_forward_f16_vV:  mean = Σx / C, var = Σ(x - mean)² / C (two passes over the
//                            registers), y = (x - mean)·rstd·gamma + beta. Writes y, mean[row],
//                            rstd[row] with =.
//   ln_fast_backward_f16_vV: s1 = Σ dx̂, s2 = Σ dx̂·x̂ (dx̂ = dy·gamma) by warp shuffles, then
//                            dx = rstd·(dx̂ - s1/C - x̂·s2/C). Writes dx with =.
// V = 2, 4, 8 (C <= 512, 1024, 2048). No shared memory, no block barriers.
#include "common.cuh"

// `#pragma unroll` for nvcc only (the emulator's host compiler would warn about it).
#ifdef __CUDACC__
#define NF_UNROLL _Pragma("unroll")
#else
#define NF_UNROLL
#endif

// GN_THREADS, LN_ROWS in tiles.h.
#define GN_WARPS (GN_THREADS / 32)

// ---- 16-bit vectors: 8 elements of T (__half or bf16_t) in one uint4 ----

__device__ __forceinline__ uint4 make_uint4_(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    uint4 u;
    u.x = a;
    u.y = b;
    u.z = c;
    u.w = d;
    return u;
}

// The 8 elements of `u` as f32, element 0 first (the lowest address).
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float v[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
NF_UNROLL
    for (int j = 0; j < 4; ++j) {
        v[2 * j] = bits_f32<T>(w[j]);
        v[2 * j + 1] = bits_f32<T>(w[j] >> 16);
    }
}
template <typename T>
__device__ __forceinline__ uint4 pack8(const float v[8]) {
    uint32_t w[4];
NF_UNROLL
    for (int j = 0; j < 4; ++j) w[j] = pack2_f32<T>(v[2 * j], v[2 * j + 1]);
    return make_uint4_(w[0], w[1], w[2], w[3]);
}
template <typename T>
__device__ __forceinline__ uint4 load16(const T* p) {
    return *reinterpret_cast<const uint4*>(p);
}
template <typename T>
__device__ __forceinline__ void store16(T* p, uint4 u) {
    *reinterpret_cast<uint4*>(p) = u;
}

__device__ __forceinline__ float sigmoid_fast(float v) { return 1.0f / (1.0f + expf(-v)); }

// ---- (count, mean, M2) records merged pairwise (Chan, Golub, LeVeque) ----

struct Moments {
    float n, mean, m2;
};
__device__ __forceinline__ Moments merge(Moments a, Moments b) {
    const float n = a.n + b.n;
    if (n == 0.0f) return a;
    const float d = b.mean - a.mean;
    const float f = b.n / n;
    return {n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}
// Lane 0 ends with the merge of all 32 lanes' records in a fixed tree order (other lanes hold
// partial merges).
__device__ __forceinline__ Moments warp_merge(Moments a) {
    for (int o = 16; o > 0; o >>= 1) {
        Moments b;
        b.n = __shfl_down_sync(0xffffffffu, a.n, o);
        b.mean = __shfl_down_sync(0xffffffffu, a.mean, o);
        b.m2 = __shfl_down_sync(0xffffffffu, a.m2, o);
        a = merge(a, b);
    }
    return a;
}

// The channel of element i of a GroupNorm block, tracked over a vector: (ci, r) = (i / inner,
// i % inner), advanced one element at a time.
struct ChannelCursor {
    int ci, r;
    __device__ __forceinline__ void step(int inner) {
        if (++r == inner) {
            r = 0;
            ++ci;
        }
    }
};

// gamma and beta of the 8 elements i..i+7 of a GroupNorm block whose channels start at c0:
// one channel for the whole vector when inner is a multiple of 8 (every SD1.5 plane), else
// tracked element by element.
template <typename T>
__device__ __forceinline__ void gn_affine8(const T* gamma, const T* beta, int c0, int i,
                                          int inner, float g[8], float b[8]) {
    if (inner % 8 == 0) {
        const int c = c0 + i / inner;
        const float gc = to_f32(gamma[c]), bc = to_f32(beta[c]);
NF_UNROLL
        for (int j = 0; j < 8; ++j) {
            g[j] = gc;
            b[j] = bc;
        }
    } else {
        ChannelCursor cur = {i / inner, i % inner};
NF_UNROLL
        for (int j = 0; j < 8; ++j) {
            g[j] = to_f32(gamma[c0 + cur.ci]);
            b[j] = to_f32(beta[c0 + cur.ci]);
            cur.step(inner);
        }
    }
}

// The chunk [lo, hi) of block b and its thread block's indices.
struct GnChunk {
    int b, k, lo, hi;
};
__device__ __forceinline__ GnChunk gn_chunk(int m, int chunk, int nchunks) {
    GnChunk c;
    c.b = blockIdx.x / nchunks;
    c.k = blockIdx.x % nchunks;
    c.lo = c.k * chunk;
    c.hi = min(m, c.lo + chunk);
    return c;
}

template <typename T>
__device__ void gn_stats(const T* __restrict__ x, float* __restrict__ part, int m, int chunk,
                         int nchunks) {
    __shared__ Moments warp_acc[GN_WARPS];
    const GnChunk ch = gn_chunk(m, chunk, nchunks);
    const T* xb = x + (long long)ch.b * m;
    Moments acc = {0.0f, 0.0f, 0.0f};
    for (int i = ch.lo + 8 * (int)threadIdx.x; i < ch.hi; i += 8 * GN_THREADS) {
        float v[8];
        unpack8<T>(load16(xb + i), v);
        float s = 0.0f;
NF_UNROLL
        for (int j = 0; j < 8; ++j) s += v[j];
        const float mu = s * 0.125f;
        float q = 0.0f;
NF_UNROLL
        for (int j = 0; j < 8; ++j) q += (v[j] - mu) * (v[j] - mu);
        acc = merge(acc, Moments{8.0f, mu, q});
    }
    acc = warp_merge(acc);
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) warp_acc[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        Moments t = warp_acc[0];
        for (int w = 1; w < GN_WARPS; ++w) t = merge(t, warp_acc[w]);
        part[2 * blockIdx.x] = t.mean;
        part[2 * blockIdx.x + 1] = t.m2;
    }
}

template <typename T>
__device__ void gn_forward(const T* __restrict__ x, const T* __restrict__ gamma,
                           const T* __restrict__ beta, const float* __restrict__ part,
                           T* __restrict__ y, float* __restrict__ mean_out,
                           float* __restrict__ rstd_out, int groups, int cpg, int inner,
                           int chunk, int nchunks, float eps, int silu) {
    const int m = cpg * inner;
    const GnChunk ch = gn_chunk(m, chunk, nchunks);
    const unsigned lane = threadIdx.x & 31u;

    // The block's statistics from its chunks' partials, by every warp alike.
    Moments p = {0.0f, 0.0f, 0.0f};
    if ((int)lane < nchunks) {
        const long long r = (long long)ch.b * nchunks + lane;
        p = {(float)(min(m, ((int)lane + 1) * chunk) - (int)lane * chunk), part[2 * r],
             part[2 * r + 1]};
    }
    p = warp_merge(p);
    const float mean = __shfl_sync(0xffffffffu, p.mean, 0);
    const float var = __shfl_sync(0xffffffffu, p.m2, 0) / (float)m;
    const float rstd = 1.0f / sqrtf(var + eps);
    if (ch.k == 0 && threadIdx.x == 0) {
        mean_out[ch.b] = mean;
        rstd_out[ch.b] = rstd;
    }

    const long long off = (long long)ch.b * m;
    const T* xb = x + off;
    T* yb = y + off;
    const int c0 = (ch.b % groups) * cpg;
    for (int i = ch.lo + 8 * (int)threadIdx.x; i < ch.hi; i += 8 * GN_THREADS) {
        float v[8], g[8], bt[8];
        unpack8<T>(load16(xb + i), v);
        gn_affine8(gamma, beta, c0, i, inner, g, bt);
NF_UNROLL
        for (int j = 0; j < 8; ++j) {
            float t = (v[j] - mean) * (g[j] * rstd) + bt[j];
            if (silu) t = t * sigmoid_fast(t);
            v[j] = t;
        }
        store16(yb + i, pack8<T>(v));
    }
}

// dx̂ and x̂ of the 8 elements of one vector starting at element i of GroupNorm block b.
template <typename T>
__device__ __forceinline__ void gn_dxhat8(const T* dyb, const T* xb, const T* gamma,
                                          const T* beta, int c0, int i,
                                          int inner, float mean, float rstd, int silu,
                                          float d[8], float xh[8]) {
    float xv[8], g[8], bt[8];
    unpack8<T>(load16(xb + i), xv);
    unpack8<T>(load16(dyb + i), d);
    gn_affine8(gamma, beta, c0, i, inner, g, bt);
NF_UNROLL
    for (int j = 0; j < 8; ++j) {
        xh[j] = (xv[j] - mean) * rstd;
        if (silu) {
            const float pre = g[j] * xh[j] + bt[j];
            const float sg = sigmoid_fast(pre);
            d[j] *= sg * (1.0f + pre * (1.0f - sg));
        }
        d[j] *= g[j];
    }
}

template <typename T>
__device__ void gn_bwd_partials(const T* __restrict__ dy, const T* __restrict__ x,
                                const T* __restrict__ gamma, const T* __restrict__ beta,
                                const float* __restrict__ mean_in,
                                const float* __restrict__ rstd_in, float* __restrict__ part,
                                int groups, int cpg, int inner, int chunk, int nchunks,
                                int silu) {
    __shared__ float warp_acc[2][GN_WARPS];
    const int m = cpg * inner;
    const GnChunk ch = gn_chunk(m, chunk, nchunks);
    const long long off = (long long)ch.b * m;
    const int c0 = (ch.b % groups) * cpg;
    const float mean = mean_in[ch.b], rstd = rstd_in[ch.b];
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = ch.lo + 8 * (int)threadIdx.x; i < ch.hi; i += 8 * GN_THREADS) {
        float d[8], xh[8];
        gn_dxhat8(dy + off, x + off, gamma, beta, c0, i, inner, mean, rstd, silu, d, xh);
NF_UNROLL
        for (int j = 0; j < 8; ++j) {
            s1 += d[j];
            s2 += d[j] * xh[j];
        }
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) {
        warp_acc[0][warp] = s1;
        warp_acc[1][warp] = s2;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float t1 = 0.0f, t2 = 0.0f;
        for (int w = 0; w < GN_WARPS; ++w) {
            t1 += warp_acc[0][w];
            t2 += warp_acc[1][w];
        }
        part[2 * blockIdx.x] = t1;
        part[2 * blockIdx.x + 1] = t2;
    }
}

template <typename T>
__device__ void gn_backward(const T* __restrict__ dy, const T* __restrict__ x,
                            const T* __restrict__ gamma, const T* __restrict__ beta,
                            const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                            const float* __restrict__ part, T* __restrict__ dx, int groups,
                            int cpg, int inner, int chunk, int nchunks, int silu) {
    const int m = cpg * inner;
    const GnChunk ch = gn_chunk(m, chunk, nchunks);
    const unsigned lane = threadIdx.x & 31u;
    float s1 = 0.0f, s2 = 0.0f;
    if ((int)lane < nchunks) {
        const long long r = (long long)ch.b * nchunks + lane;
        s1 = part[2 * r];
        s2 = part[2 * r + 1];
    }
    const float mean_dxh = warp_sum(s1) / (float)m;
    const float mean_dxh_xh = warp_sum(s2) / (float)m;
    const long long off = (long long)ch.b * m;
    const int c0 = (ch.b % groups) * cpg;
    const float mean = mean_in[ch.b], rstd = rstd_in[ch.b];
    for (int i = ch.lo + 8 * (int)threadIdx.x; i < ch.hi; i += 8 * GN_THREADS) {
        float d[8], xh[8];
        gn_dxhat8(dy + off, x + off, gamma, beta, c0, i, inner, mean, rstd, silu, d, xh);
NF_UNROLL
        for (int j = 0; j < 8; ++j) d[j] = rstd * (d[j] - mean_dxh - xh[j] * mean_dxh_xh);
        store16(dx + off + i, pack8<T>(d));
    }
}

// ---- LayerNorm: one warp per row ----

template <typename T, int V>
__device__ void ln_fast_forward_impl(const T* __restrict__ x, const T* __restrict__ gamma,
                                     const T* __restrict__ beta, T* __restrict__ y,
                                     float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                     int rows, int cols, float eps) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * LN_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;  // the whole warp: no block barrier follows
    const int nvec = cols / 8;
    const T* xr = x + (long long)row * cols;
    uint4 raw[V];
    float s = 0.0f;
NF_UNROLL
    for (int k = 0; k < V; ++k) {
        const int e = (k * 32 + lane) * 8;
        raw[k] = make_uint4_(0u, 0u, 0u, 0u);
        if (k * 32 + lane < nvec) {
            raw[k] = load16(xr + e);
            float v[8];
            unpack8<T>(raw[k], v);
NF_UNROLL
            for (int j = 0; j < 8; ++j) s += v[j];
        }
    }
    const float mean = warp_sum(s) / (float)cols;
    float q = 0.0f;
NF_UNROLL
    for (int k = 0; k < V; ++k) {
        if (k * 32 + lane < nvec) {
            float v[8];
            unpack8<T>(raw[k], v);
NF_UNROLL
            for (int j = 0; j < 8; ++j) q += (v[j] - mean) * (v[j] - mean);
        }
    }
    const float rstd = 1.0f / sqrtf(warp_sum(q) / (float)cols + eps);
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
    T* yr = y + (long long)row * cols;
NF_UNROLL
    for (int k = 0; k < V; ++k) {
        const int e = (k * 32 + lane) * 8;
        if (k * 32 + lane < nvec) {
            float v[8], g[8], b[8];
            unpack8<T>(raw[k], v);
            unpack8<T>(load16(gamma + e), g);
            unpack8<T>(load16(beta + e), b);
NF_UNROLL
            for (int j = 0; j < 8; ++j) v[j] = (v[j] - mean) * (g[j] * rstd) + b[j];
            store16(yr + e, pack8<T>(v));
        }
    }
}

template <typename T, int V>
__device__ void ln_fast_backward_impl(const T* __restrict__ dy, const T* __restrict__ x,
                                      const T* __restrict__ gamma,
                                      const float* __restrict__ mean_in,
                                      const float* __restrict__ rstd_in, T* __restrict__ dx,
                                      int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * LN_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;  // the whole warp: no block barrier follows
    const int nvec = cols / 8;
    const long long off = (long long)row * cols;
    const float mean = mean_in[row], rstd = rstd_in[row];
    uint4 rx[V], rdy[V];
    float s1 = 0.0f, s2 = 0.0f;
NF_UNROLL
    for (int k = 0; k < V; ++k) {
        const int e = (k * 32 + lane) * 8;
        rx[k] = make_uint4_(0u, 0u, 0u, 0u);
        rdy[k] = rx[k];
        if (k * 32 + lane < nvec) {
            rx[k] = load16(x + off + e);
            rdy[k] = load16(dy + off + e);
            float xv[8], d[8], g[8];
            unpack8<T>(rx[k], xv);
            unpack8<T>(rdy[k], d);
            unpack8<T>(load16(gamma + e), g);
NF_UNROLL
            for (int j = 0; j < 8; ++j) {
                const float dxh = d[j] * g[j];
                s1 += dxh;
                s2 += dxh * ((xv[j] - mean) * rstd);
            }
        }
    }
    const float mean_dxh = warp_sum(s1) / (float)cols;
    const float mean_dxh_xh = warp_sum(s2) / (float)cols;
NF_UNROLL
    for (int k = 0; k < V; ++k) {
        const int e = (k * 32 + lane) * 8;
        if (k * 32 + lane < nvec) {
            float xv[8], d[8], g[8];
            unpack8<T>(rx[k], xv);
            unpack8<T>(rdy[k], d);
            unpack8<T>(load16(gamma + e), g);
NF_UNROLL
            for (int j = 0; j < 8; ++j) {
                const float xh = (xv[j] - mean) * rstd;
                d[j] = rstd * (d[j] * g[j] - mean_dxh - xh * mean_dxh_xh);
            }
            store16(dx + off + e, pack8<T>(d));
        }
    }
}

// Entry points: f16's names carry _f16, bf16's _bf16 (compute capability 8.0+ only).
#define GN_FAST_ENTRIES(T, DT)                                                                \
    KERNEL void __launch_bounds__(GN_THREADS)                                                 \
        gn_fast_stats_##DT(const T* x, float* part, int m, int chunk, int nchunks) {          \
        gn_stats<T>(x, part, m, chunk, nchunks);                                              \
    }                                                                                         \
    KERNEL void __launch_bounds__(GN_THREADS) gn_fast_forward_##DT(                           \
        const T* x, const T* gamma, const T* beta, const float* part, T* y, float* mean,      \
        float* rstd, int groups, int cpg, int inner, int chunk, int nchunks, float eps,       \
        int silu) {                                                                           \
        gn_forward<T>(x, gamma, beta, part, y, mean, rstd, groups, cpg, inner, chunk,         \
                      nchunks, eps, silu);                                                    \
    }                                                                                         \
    KERNEL void __launch_bounds__(GN_THREADS) gn_fast_bwd_partials_##DT(                      \
        const T* dy, const T* x, const T* gamma, const T* beta, const float* mean,            \
        const float* rstd, float* part, int groups, int cpg, int inner, int chunk,            \
        int nchunks, int silu) {                                                              \
        gn_bwd_partials<T>(dy, x, gamma, beta, mean, rstd, part, groups, cpg, inner, chunk,   \
                           nchunks, silu);                                                    \
    }                                                                                         \
    KERNEL void __launch_bounds__(GN_THREADS) gn_fast_backward_##DT(                          \
        const T* dy, const T* x, const T* gamma, const T* beta, const float* mean,            \
        const float* rstd, const float* part, T* dx, int groups, int cpg, int inner,          \
        int chunk, int nchunks, int silu) {                                                   \
        gn_backward<T>(dy, x, gamma, beta, mean, rstd, part, dx, groups, cpg, inner, chunk,   \
                       nchunks, silu);                                                        \
    }
GN_FAST_ENTRIES(__half, f16)
GN_FAST_ENTRIES(bf16_t, bf16)

#define LN_FAST_ENTRIES(T, DT, V)                                                             \
    KERNEL void __launch_bounds__(32 * LN_ROWS)                                               \
        ln_fast_forward_##DT##_v##V(const T* x, const T* gamma, const T* beta, T* y,          \
                                    float* mean, float* rstd, int rows, int cols, float eps) { \
        ln_fast_forward_impl<T, V>(x, gamma, beta, y, mean, rstd, rows, cols, eps);           \
    }                                                                                         \
    KERNEL void __launch_bounds__(32 * LN_ROWS)                                               \
        ln_fast_backward_##DT##_v##V(const T* dy, const T* x, const T* gamma,                 \
                                     const float* mean, const float* rstd, T* dx, int rows,   \
                                     int cols) {                                              \
        ln_fast_backward_impl<T, V>(dy, x, gamma, mean, rstd, dx, rows, cols);                \
    }

LN_FAST_ENTRIES(__half, f16, 2)
LN_FAST_ENTRIES(__half, f16, 4)
LN_FAST_ENTRIES(__half, f16, 8)
LN_FAST_ENTRIES(bf16_t, bf16, 2)
LN_FAST_ENTRIES(bf16_t, bf16, 4)
LN_FAST_ENTRIES(bf16_t, bf16, 8)
