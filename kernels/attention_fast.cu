// Multi-head scaled dot-product attention on tensor cores, flash-attention-2 style: the fast
// f16 and bf16 twin of kernels/attention.cu (same math, same shapes, same lse convention, so
// either backward accepts either forward's lse). 16-bit storage T, mma.sync m16n8k16 with f32
// accumulation, softmax statistics in f32 registers; no atomics (deterministic). Every kernel
// is a template on T: __half for the entry points named below, bf16_t for the same names
// ending in _bf16 (compute capability 8.0+ only); "f16" below stands for T, and the tiles and
// shared memory are the same for both (2-byte elements).
//
// Shapes (row-major f16): q [B, Lq, H·d], k [B, Lk, H·d], v [B, Lk, H·dv], o and dO
// [B, Lq, H·dv], lse and D [B, H, Lq] (f32). s = 1/sqrt(d) (`scale`). Causal: query i sees
// keys 0..=i (the host checks Lq == Lk).
//
// Forward, per (b, h) and query row i (online over key tiles, in registers):
//   S_ij = s·q_i·k_j (-inf where masked),  m_i = running max,  l_i = Σ_j exp(S_ij - m_i)
//   O_i  = Σ_j exp(S_ij - m_i)·v_j / l_i  (P enters the P·V mma as two f16 terms, hi + lo),
//   lse_i = m_i + log l_i (natural log, as the simple kernel)
// Backward, P_ij = exp(S_ij - lse_i) recomputed from lse:
//   D_i = Σ_c dO_ic·O_ic,  dS_ij = P_ij·(dO_i·v_j - D_i)   (P, dS: hi + lo f16 terms)
//   dQ_i = s·Σ_j dS_ij·k_j,  dK_j = s·Σ_i dS_ij·q_i,  dV_j = Σ_i P_ij·dO_i
//
// Head widths: every kernel is a template on DM, a multiple of 16 >= max(d, dv) (entry points
// for DM = 64, 96 and 160). Columns d..DM (dv..DM) are zero-filled in shared memory, so the
// k-dimension of Q·Kᵀ runs over d rounded up to 16, the n-dimension of P·V over dv rounded up
// to 8 (40 = 5 n-tiles), and only columns < d (< dv) are written. Rows past Lq / Lk are
// zero-filled and masked. Loads are 16-byte cp.async when d and dv are multiples of 8 (rows
// then start 16-byte aligned), element loads otherwise (the small test widths).
//
// Kernels (128 threads = 4 warps; each warp owns 16 rows of the block's tile; every output
// element is written once, with =):
//   attention_fast_fwd_dDM  grid B·H·ceil(Lq/64): block (bh, 64 queries) keeps Q in smem,
//       streams K/V tiles of KT rows (64; 32 at DM = 160; `_kt32`: 32 at DM = 96, for 64 KiB
//       of shared memory per block) through two cp.async stages
//       (tile t+1 loads while tile t computes). Per warp: S = Q·Kᵀ (16 x KT) and O += P·V
//       (16 x DM) in mma fragments; thread (lane) holds rows lane/4 and lane/4 + 8. Writes o, lse.
//   attention_fast_dot      grid ceil(B·H·Lq / 4): one warp per row, writes D.
//   attention_fast_dkv_dDM  grid B·H·ceil(Lk/64): block (bh, 64 keys) keeps K, V in smem,
//       streams Q/dO (+ lse, D) tiles of QT rows (32; 16 at DM = 160), two stages; causal:
//       from query k0 on. Per warp (16 keys): Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, dV += Pᵀ·dO,
//       dK += dSᵀ·Q. Writes dk (times s) and dv.
//   attention_fast_dq_dDM   grid B·H·ceil(Lq/64): block (bh, 64 queries) keeps Q, dO in smem,
//       streams K/V tiles of KT rows, two stages (`_kt32` at DM = 96 and `_kt16` at
//       DM = 160: half tiles, for 64 KiB of shared memory per block). Per warp: S = Q·Kᵀ, dP = dO·Vᵀ,
//       dQ += dS·K. Writes dq (times s).
// Shared memory (f16, row stride DS = DM + 8 halves: ldmatrix rows hit distinct banks):
//   fwd: Q [64][DS] + 2 x (K, V [KT][DS])
//   dq:  Q, dO [64][DS] + 2 x (K, V [KT][DS])
//   dkv: K, V [64][DS] + 2 x (Q, dO [QT][DS]) + 2 x (lse, D [QT] f32)
// (In bytes: AF_FWD_SMEM, AF_DQ_SMEM, AF_DKV_SMEM in tiles.h, which the launcher uses.)
#include "common.cuh"

#ifdef __CUDACC__
#define AF_UNROLL _Pragma("unroll")
#else
#define AF_UNROLL
#endif

// AF_THREADS, AF_ROWS, the tiles and shared memory per bucket: tiles.h.
#define AF_LOG2E 1.4426950408889634f
#define AF_LN2 0.6931471805599453f

// Key tile of the forward and dQ, query tile of dK/dV, per head bucket (register budget).
// The forward and dQ kernels also take the key tile as a template argument (AF_KT_SMALL for
// devices with 64 KiB of shared memory per block, see the entry points).
template <int DM>
struct AfTiles {
    static constexpr int KT = AF_KT(DM);
    static constexpr int QT = AF_QT(DM);
    static constexpr int DS = AF_DS(DM);
};

// Row i of head h of batch b in a [B, L, H·w] tensor.
__device__ __forceinline__ size_t af_row(int b, int i, int h, int len, int heads, int w) {
    return ((size_t(b) * size_t(len) + size_t(i)) * size_t(heads) + size_t(h)) * size_t(w);
}

// Rows [r0, r0 + rows) of head h (width w) into dst [rows][DS], columns w..DM and rows past
// len zero-filled. vec: 16-byte cp.async (w a multiple of 8), else element copies.
template <int DM, typename T>
__device__ __forceinline__ void af_load(T* dst, const T* src, int b, int h, int r0,
                                        int rows, int len, int heads, int w, bool vec) {
    constexpr int DS = AfTiles<DM>::DS;
    if (vec) {
        constexpr int CH = DM / 8;
        for (int e = threadIdx.x; e < rows * CH; e += blockDim.x) {
            int r = e / CH, c = (e % CH) * 8, i = r0 + r;
            bool ok = i < len && c < w;
            const T* g = ok ? src + af_row(b, i, h, len, heads, w) + c : src;
            cp_async16(dst + r * DS + c, g, ok);
        }
    } else {
        for (int e = threadIdx.x; e < rows * DM; e += blockDim.x) {
            int r = e / DM, c = e % DM, i = r0 + r;
            dst[r * DS + c] =
                i < len && c < w ? src[af_row(b, i, h, len, heads, w) + c] : from_f32<T>(0.0f);
        }
    }
}

// Fragment loads (per lane addresses as the PTX ISA's ldmatrix / mma layouts ask).
// A operand, 16 rows x 16 k, from rows [row0, row0 + 16) of a [.][DS] tile at column kk.
template <int DS, typename T>
__device__ __forceinline__ void af_frag_a(uint32_t a[4], const T* t, int row0, int kk) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4(a, t + (row0 + (lane & 15)) * DS + kk + (lane >> 4) * 8);
}
// B operands of two n-tiles (n0, n0 + 8) x 16 k, from a tile stored [n][k] (rows = n).
template <int DS, typename T>
__device__ __forceinline__ void af_frag_b_nk(uint32_t b[4], const T* t, int n0, int kk) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4(b, t + (n0 + (lane >> 4) * 8 + (lane & 7)) * DS + kk + ((lane >> 3) & 1) * 8);
}
// B operands of two n-tiles (n0, n0 + 8) x 16 k, from a tile stored [k][n] (rows = k).
template <int DS, typename T>
__device__ __forceinline__ void af_frag_b_kn(uint32_t b[4], const T* t, int kk, int n0) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4_trans(b, t + (kk + ((lane >> 3) & 1) * 8 + (lane & 7)) * DS + n0 + (lane >> 4) * 8);
}
// The A operand of k-step t from accumulator fragments x0, x1 (n-tiles 2t, 2t + 1), as two
// terms of T: hi = T(x), lo = T(x - hi), so that hi + lo carries x to ~2^-22 relative in f16
// (~2^-16 in bf16, far below its unit roundoff 2^-8).
template <typename T>
__device__ __forceinline__ void af_split(uint32_t& hi, uint32_t& lo, float x, float y) {
    T hx = from_f32<T>(x), hy = from_f32<T>(y);
    hi = pack_half2(hx, hy);
    lo = pack_half2(from_f32<T>(x - to_f32(hx)), from_f32<T>(y - to_f32(hy)));
}
template <typename T>
__device__ __forceinline__ void af_pack_a(uint32_t hi[4], uint32_t lo[4], const float x0[4],
                                          const float x1[4]) {
    af_split<T>(hi[0], lo[0], x0[0], x0[1]);
    af_split<T>(hi[1], lo[1], x0[2], x0[3]);
    af_split<T>(hi[2], lo[2], x1[0], x1[1]);
    af_split<T>(hi[3], lo[3], x1[2], x1[3]);
}

// acc[16 x NTILES·8] = A[rows row0.., k < kpad] · Bᵀ, B stored [n][k] (n-tiles all computed).
template <int DM, int NTILES, typename T>
__device__ __forceinline__ void af_mma_abt(float acc[][4], const T* A, int row0,
                                           const T* B, int kpad) {
    constexpr int DS = AfTiles<DM>::DS;
AF_UNROLL
    for (int n = 0; n < NTILES; ++n)
AF_UNROLL
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
AF_UNROLL
    for (int ks = 0; ks < DM / 16; ++ks) {
        if (ks * 16 >= kpad) break;
        uint32_t a[4];
        af_frag_a<DS>(a, A, row0, ks * 16);
AF_UNROLL
        for (int np = 0; np < NTILES / 2; ++np) {
            uint32_t b[4];
            af_frag_b_nk<DS>(b, B, np * 16, ks * 16);
            mma_tile<T>(acc[2 * np], a, b, acc[2 * np]);
            mma_tile<T>(acc[2 * np + 1], a, b + 2, acc[2 * np + 1]);
        }
    }
}

// acc[16 x DM] += P[16 x KN] · B, P given as accumulator fragments p[KN/8][4], B stored
// [k][n] with KN rows; only n-tiles < nt are computed. P enters as hi + lo f16 terms (two
// mma per step): P and dS rounded to one f16 would add an error of the order of the output's
// own f16 rounding, which the f16 criterion (2x an f32 computation's error) cannot afford.
template <int DM, int KN, typename T>
__device__ __forceinline__ void af_mma_pb(float acc[][4], const float p[][4], const T* B,
                                          int nt) {
    constexpr int DS = AfTiles<DM>::DS;
AF_UNROLL
    for (int t = 0; t < KN / 16; ++t) {
        uint32_t hi[4], lo[4];
        af_pack_a<T>(hi, lo, p[2 * t], p[2 * t + 1]);
AF_UNROLL
        for (int np = 0; np < DM / 16; ++np) {
            if (2 * np >= nt) break;
            uint32_t b[4];
            af_frag_b_kn<DS>(b, B, t * 16, np * 16);
            mma_tile<T>(acc[2 * np], lo, b, acc[2 * np]);
            mma_tile<T>(acc[2 * np], hi, b, acc[2 * np]);
            if (2 * np + 1 < nt) {
                mma_tile<T>(acc[2 * np + 1], lo, b + 2, acc[2 * np + 1]);
                mma_tile<T>(acc[2 * np + 1], hi, b + 2, acc[2 * np + 1]);
            }
        }
    }
}

// ---- forward ----

template <int DM, int KT, typename T>
__device__ void af_fwd(const T* q, const T* k, const T* v, T* o, float* lse,
                       int heads, int lq, int lk, int d, int dv, int causal, float scale) {
    constexpr int DS = AfTiles<DM>::DS, NT = DM / 8;
    static_assert(KT % 16 == 0, "key tiles are whole mma k-steps and n-tile pairs");
    DYN_SHARED(T, sm);
    T* Qs = sm;                  // [64][DS]
    T* St = Qs + AF_ROWS * DS;   // 2 stages of K [KT][DS], V [KT][DS]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, q4 = lane & 3;
    const int q_tiles = (lq + AF_ROWS - 1) / AF_ROWS;
    const int bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * AF_ROWS;
    const int b = bh / heads, h = bh % heads;
    const bool vec = ((d | dv) & 7) == 0;
    const int kend = causal && q0 + AF_ROWS < lk ? q0 + AF_ROWS : lk;
    const int tiles = (kend + KT - 1) / KT;
    const int kpad = (d + 15) & ~15, nt = (dv + 7) / 8;
    const float sl2 = scale * AF_LOG2E;  // scores in log2 units: exp(x) = exp2(x·log2 e)

    af_load<DM>(Qs, q, b, h, q0, AF_ROWS, lq, heads, d, vec);
    af_load<DM>(St, k, b, h, 0, KT, lk, heads, d, vec);
    af_load<DM>(St + KT * DS, v, b, h, 0, KT, lk, heads, dv, vec);
    cp_async_commit();

    float acc[NT][4];
AF_UNROLL
    for (int n = 0; n < NT; ++n)
AF_UNROLL
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // l: this thread's columns
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    for (int t = 0; t < tiles; ++t) {
        cp_async_wait_all();
        __syncthreads();  // tile t visible; every warp done with tile t - 1's stage
        if (t + 1 < tiles) {
            T* nx = St + ((t + 1) & 1) * 2 * KT * DS;
            af_load<DM>(nx, k, b, h, (t + 1) * KT, KT, lk, heads, d, vec);
            af_load<DM>(nx + KT * DS, v, b, h, (t + 1) * KT, KT, lk, heads, dv, vec);
            cp_async_commit();
        }
        const T* Ks = St + (t & 1) * 2 * KT * DS;
        const T* Vs = Ks + KT * DS;
        const int j0 = t * KT;

        float s[KT / 8][4];
        af_mma_abt<DM, KT / 8>(s, Qs, warp * 16, Ks, kpad);

        float mx[2] = {-INFINITY, -INFINITY};
AF_UNROLL
        for (int n = 0; n < KT / 8; ++n)
AF_UNROLL
            for (int e = 0; e < 4; ++e) {
                int j = j0 + n * 8 + 2 * q4 + (e & 1), r = e >> 1;
                bool seen = j < lk && (!causal || j <= row[r]);
                s[n][e] = seen ? s[n][e] * sl2 : -INFINITY;
                mx[r] = fmaxf(mx[r], s[n][e]);
            }
        float alpha[2], mu[2];
AF_UNROLL
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(m[r], mx[r]);
            mu[r] = mn == -INFINITY ? 0.0f : mn;  // nothing seen yet: every weight 0
            alpha[r] = exp2f(m[r] - mu[r]);       // 0 while m is -inf
            m[r] = mn;
            l[r] *= alpha[r];
        }
AF_UNROLL
        for (int n = 0; n < KT / 8; ++n)
AF_UNROLL
            for (int e = 0; e < 4; ++e) {
                float p = exp2f(s[n][e] - mu[e >> 1]);
                s[n][e] = p;
                l[e >> 1] += p;
            }
AF_UNROLL
        for (int n = 0; n < NT; ++n)
AF_UNROLL
            for (int e = 0; e < 4; ++e) acc[n][e] *= alpha[e >> 1];
        af_mma_pb<DM, KT>(acc, s, Vs, nt);
    }

AF_UNROLL
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inv[2] = {1.0f / l[0], 1.0f / l[1]};
AF_UNROLL
    for (int n = 0; n < NT; ++n) {
        if (n >= nt) break;
AF_UNROLL
        for (int e = 0; e < 4; ++e) {
            int i = row[e >> 1], c = n * 8 + 2 * q4 + (e & 1);
            if (i < lq && c < dv)
                o[af_row(b, i, h, lq, heads, dv) + c] = from_f32<T>(acc[n][e] * inv[e >> 1]);
        }
    }
    if (q4 == 0)
AF_UNROLL
        for (int r = 0; r < 2; ++r)
            if (row[r] < lq) lse[size_t(bh) * lq + row[r]] = m[r] * AF_LN2 + logf(l[r]);
}

// Entry points: f16's names as below, bf16's with _bf16 appended (compute capability 8.0+).
#define AF_FWD(NAME, T, DM, KT)                                                               \
    KERNEL void __launch_bounds__(AF_THREADS)                                                 \
        NAME(const T* q, const T* k, const T* v, T* o, float* lse, int heads, int lq, int lk, \
             int d, int dv, int causal, float scale) {                                        \
        af_fwd<DM, KT, T>(q, k, v, o, lse, heads, lq, lk, d, dv, causal, scale);              \
    }
#define AF_FWDS(T, SUFFIX)                                                                    \
    AF_FWD(attention_fast_fwd_d64##SUFFIX, T, 64, AF_KT(64))                                  \
    AF_FWD(attention_fast_fwd_d96##SUFFIX, T, 96, AF_KT(96))                                  \
    AF_FWD(attention_fast_fwd_d160##SUFFIX, T, 160, AF_KT(160))                               \
    /* 64 KiB of shared memory per block (sm_75): the 96 bucket on 32-key tiles */            \
    AF_FWD(attention_fast_fwd_d96_kt32##SUFFIX, T, 96, AF_KT_SMALL(96))
AF_FWDS(__half, )
AF_FWDS(bf16_t, _bf16)

// ---- backward: D = rowsum(dO ⊙ O), one warp per (b, h, i) ----

template <typename T>
__device__ void af_dot(const T* o, const T* d_o, float* dsum, int heads, int lq, int dv, int n) {
    const int idx = blockIdx.x * (AF_THREADS / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (idx >= n) return;  // a whole warp leaves together
    const int i = idx % lq, bh = idx / lq;
    const size_t off = af_row(bh / heads, i, bh % heads, lq, heads, dv);
    float acc = 0.0f;
    for (int c = lane; c < dv; c += 32) acc += to_f32(d_o[off + c]) * to_f32(o[off + c]);
    acc = warp_sum(acc);
    if (lane == 0) dsum[idx] = acc;
}
#define AF_DOT(NAME, T)                                                                       \
    KERNEL void __launch_bounds__(AF_THREADS)                                                 \
        NAME(const T* o, const T* d_o, float* dsum, int heads, int lq, int dv, int n) {       \
        af_dot<T>(o, d_o, dsum, heads, lq, dv, n);                                            \
    }
AF_DOT(attention_fast_dot, __half)
AF_DOT(attention_fast_dot_bf16, bf16_t)

// ---- backward: dK and dV, one block per (b, h, 64 keys) ----

template <int DM, typename T>
__device__ void af_dkv(const T* q, const T* k, const T* v, const float* lse,
                       const T* d_o, const float* dsum, T* dk, T* dvo, int heads,
                       int lq, int lk, int d, int dv, int causal, float scale) {
    constexpr int QT = AfTiles<DM>::QT, DS = AfTiles<DM>::DS, NT = DM / 8;
    DYN_SHARED(T, sm);
    T* Ks = sm;                  // [64][DS]
    T* Vs = Ks + AF_ROWS * DS;   // [64][DS]
    T* St = Vs + AF_ROWS * DS;   // 2 stages of Q [QT][DS], dO [QT][DS]
    float* Lt = reinterpret_cast<float*>(St + 4 * QT * DS);  // 2 stages of lse·log2e, D [QT]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, q4 = lane & 3;
    const int k_tiles = (lk + AF_ROWS - 1) / AF_ROWS;
    const int bh = blockIdx.x / k_tiles, k0 = (blockIdx.x % k_tiles) * AF_ROWS;
    const int b = bh / heads, h = bh % heads;
    const bool vec = ((d | dv) & 7) == 0;
    const int i_start = causal ? k0 : 0;
    const int tiles = lq > i_start ? (lq - i_start + QT - 1) / QT : 0;
    const int kpad = (d + 15) & ~15, vpad = (dv + 15) & ~15;
    const int ntk = (d + 7) / 8, ntv = (dv + 7) / 8;
    const float sl2 = scale * AF_LOG2E;

    // Stage `st` of query tile i0: Q, dO by cp.async, lse (log2 units) and D by plain stores.
    auto load_q = [&](int st, int i0) {
        T* Qs = St + st * 2 * QT * DS;
        af_load<DM>(Qs, q, b, h, i0, QT, lq, heads, d, vec);
        af_load<DM>(Qs + QT * DS, d_o, b, h, i0, QT, lq, heads, dv, vec);
        float* L = Lt + st * 2 * QT;
        for (int r = tid; r < QT; r += AF_THREADS) {
            int i = i0 + r;
            L[r] = i < lq ? lse[size_t(bh) * lq + i] * AF_LOG2E : 0.0f;
            L[QT + r] = i < lq ? dsum[size_t(bh) * lq + i] : 0.0f;
        }
    };
    af_load<DM>(Ks, k, b, h, k0, AF_ROWS, lk, heads, d, vec);
    af_load<DM>(Vs, v, b, h, k0, AF_ROWS, lk, heads, dv, vec);
    if (tiles > 0) load_q(0, i_start);
    cp_async_commit();

    float ak[NT][4], av[NT][4];
AF_UNROLL
    for (int n = 0; n < NT; ++n)
AF_UNROLL
        for (int e = 0; e < 4; ++e) ak[n][e] = av[n][e] = 0.0f;
    const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};

    for (int t = 0; t < tiles; ++t) {
        cp_async_wait_all();
        __syncthreads();
        if (t + 1 < tiles) {
            load_q((t + 1) & 1, i_start + (t + 1) * QT);
            cp_async_commit();
        }
        const T* Qs = St + (t & 1) * 2 * QT * DS;
        const T* Os = Qs + QT * DS;
        const float* L = Lt + (t & 1) * 2 * QT;
        const int i0 = i_start + t * QT;

        float s[QT / 8][4], dp[QT / 8][4];
        af_mma_abt<DM, QT / 8>(s, Ks, warp * 16, Qs, kpad);   // Sᵀ = K·Qᵀ
        af_mma_abt<DM, QT / 8>(dp, Vs, warp * 16, Os, vpad);  // dPᵀ = V·dOᵀ
AF_UNROLL
        for (int n = 0; n < QT / 8; ++n)
AF_UNROLL
            for (int e = 0; e < 4; ++e) {
                int c = n * 8 + 2 * q4 + (e & 1), i = i0 + c, j = key[e >> 1];
                bool seen = i < lq && j < lk && (!causal || j <= i);
                float p = seen ? exp2f(s[n][e] * sl2 - L[c]) : 0.0f;
                s[n][e] = p;
                dp[n][e] = p * (dp[n][e] - L[QT + c]);
            }
        af_mma_pb<DM, QT>(av, s, Os, ntv);   // dV += Pᵀ·dO
        af_mma_pb<DM, QT>(ak, dp, Qs, ntk);  // dK += dSᵀ·Q
    }

AF_UNROLL
    for (int n = 0; n < NT; ++n)
AF_UNROLL
        for (int e = 0; e < 4; ++e) {
            int j = key[e >> 1], c = n * 8 + 2 * q4 + (e & 1);
            if (j >= lk) continue;
            if (c < d) dk[af_row(b, j, h, lk, heads, d) + c] = from_f32<T>(scale * ak[n][e]);
            if (c < dv) dvo[af_row(b, j, h, lk, heads, dv) + c] = from_f32<T>(av[n][e]);
        }
}

#define AF_DKV(T, DM, SUFFIX)                                                                 \
    KERNEL void __launch_bounds__(AF_THREADS) attention_fast_dkv_d##DM##SUFFIX(               \
        const T* q, const T* k, const T* v, const float* lse, const T* d_o, const float* dsum, \
        T* dk, T* dv_out, int heads, int lq, int lk, int d, int dv, int causal, float scale) { \
        af_dkv<DM, T>(q, k, v, lse, d_o, dsum, dk, dv_out, heads, lq, lk, d, dv, causal,     \
                      scale);                                                                 \
    }
AF_DKV(__half, 64, )
AF_DKV(__half, 96, )
AF_DKV(__half, 160, )
AF_DKV(bf16_t, 64, _bf16)
AF_DKV(bf16_t, 96, _bf16)
AF_DKV(bf16_t, 160, _bf16)

// ---- backward: dQ, one block per (b, h, 64 queries) ----

template <int DM, int KT, typename T>
__device__ void af_dq(const T* q, const T* k, const T* v, const float* lse,
                      const T* d_o, const float* dsum, T* dq, int heads, int lq,
                      int lk, int d, int dv, int causal, float scale) {
    constexpr int DS = AfTiles<DM>::DS, NT = DM / 8;
    static_assert(KT % 16 == 0, "key tiles are whole mma k-steps and n-tile pairs");
    DYN_SHARED(T, sm);
    T* Qs = sm;                  // [64][DS]
    T* Os = Qs + AF_ROWS * DS;   // [64][DS]: dO
    T* St = Os + AF_ROWS * DS;   // 2 stages of K [KT][DS], V [KT][DS]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, q4 = lane & 3;
    const int q_tiles = (lq + AF_ROWS - 1) / AF_ROWS;
    const int bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * AF_ROWS;
    const int b = bh / heads, h = bh % heads;
    const bool vec = ((d | dv) & 7) == 0;
    const int kend = causal && q0 + AF_ROWS < lk ? q0 + AF_ROWS : lk;
    const int tiles = (kend + KT - 1) / KT;
    const int kpad = (d + 15) & ~15, vpad = (dv + 15) & ~15, ntq = (d + 7) / 8;
    const float sl2 = scale * AF_LOG2E;

    af_load<DM>(Qs, q, b, h, q0, AF_ROWS, lq, heads, d, vec);
    af_load<DM>(Os, d_o, b, h, q0, AF_ROWS, lq, heads, dv, vec);
    af_load<DM>(St, k, b, h, 0, KT, lk, heads, d, vec);
    af_load<DM>(St + KT * DS, v, b, h, 0, KT, lk, heads, dv, vec);
    cp_async_commit();

    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    float l2[2], dd[2];  // this thread's rows: lse·log2e and D
AF_UNROLL
    for (int r = 0; r < 2; ++r) {
        bool in = row[r] < lq;
        l2[r] = in ? lse[size_t(bh) * lq + row[r]] * AF_LOG2E : 0.0f;
        dd[r] = in ? dsum[size_t(bh) * lq + row[r]] : 0.0f;
    }
    float acc[NT][4];
AF_UNROLL
    for (int n = 0; n < NT; ++n)
AF_UNROLL
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;

    for (int t = 0; t < tiles; ++t) {
        cp_async_wait_all();
        __syncthreads();
        if (t + 1 < tiles) {
            T* nx = St + ((t + 1) & 1) * 2 * KT * DS;
            af_load<DM>(nx, k, b, h, (t + 1) * KT, KT, lk, heads, d, vec);
            af_load<DM>(nx + KT * DS, v, b, h, (t + 1) * KT, KT, lk, heads, dv, vec);
            cp_async_commit();
        }
        const T* Ks = St + (t & 1) * 2 * KT * DS;
        const T* Vs = Ks + KT * DS;
        const int j0 = t * KT;

        float s[KT / 8][4], dp[KT / 8][4];
        af_mma_abt<DM, KT / 8>(s, Qs, warp * 16, Ks, kpad);   // S = Q·Kᵀ
        af_mma_abt<DM, KT / 8>(dp, Os, warp * 16, Vs, vpad);  // dP = dO·Vᵀ
AF_UNROLL
        for (int n = 0; n < KT / 8; ++n)
AF_UNROLL
            for (int e = 0; e < 4; ++e) {
                int j = j0 + n * 8 + 2 * q4 + (e & 1), r = e >> 1;
                bool seen = row[r] < lq && j < lk && (!causal || j <= row[r]);
                float p = seen ? exp2f(s[n][e] * sl2 - l2[r]) : 0.0f;
                dp[n][e] = p * (dp[n][e] - dd[r]);
            }
        af_mma_pb<DM, KT>(acc, dp, Ks, ntq);  // dQ += dS·K
    }

AF_UNROLL
    for (int n = 0; n < NT; ++n) {
        if (n >= ntq) break;
AF_UNROLL
        for (int e = 0; e < 4; ++e) {
            int i = row[e >> 1], c = n * 8 + 2 * q4 + (e & 1);
            if (i < lq && c < d)
                dq[af_row(b, i, h, lq, heads, d) + c] = from_f32<T>(scale * acc[n][e]);
        }
    }
}

#define AF_DQ(NAME, T, DM, KT)                                                                \
    KERNEL void __launch_bounds__(AF_THREADS) NAME(                                           \
        const T* q, const T* k, const T* v, const float* lse, const T* d_o, const float* dsum, \
        T* dq, int heads, int lq, int lk, int d, int dv, int causal, float scale) {           \
        af_dq<DM, KT, T>(q, k, v, lse, d_o, dsum, dq, heads, lq, lk, d, dv, causal, scale);   \
    }
#define AF_DQS(T, SUFFIX)                                                                     \
    AF_DQ(attention_fast_dq_d64##SUFFIX, T, 64, AF_KT(64))                                    \
    AF_DQ(attention_fast_dq_d96##SUFFIX, T, 96, AF_KT(96))                                    \
    AF_DQ(attention_fast_dq_d160##SUFFIX, T, 160, AF_KT(160))                                 \
    /* 64 KiB of shared memory per block (sm_75): the 96 and 160 buckets on half key tiles */ \
    AF_DQ(attention_fast_dq_d96_kt32##SUFFIX, T, 96, AF_KT_SMALL(96))                         \
    AF_DQ(attention_fast_dq_d160_kt16##SUFFIX, T, 160, AF_KT_SMALL(160))
AF_DQS(__half, )
AF_DQS(bf16_t, _bf16)
