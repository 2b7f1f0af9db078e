// Linear layers with LoRA on f16 and bf16 backends: a tensor-core GEMM (mma.sync m16n8k16,
// f16 or bf16 in, f32 accumulate) whose pass over the activation rows also computes the LoRA
// hidden product, and the skinny LoRA weight-gradient reduction. The simple twins are in
// linear.cu. Every kernel is a template on the 16-bit storage type T (__half: the entry
// points below; bf16_t: the same names ending in _bf16, launched on compute capability 8.0+
// only); "f16" below stands for T, the tiles and shared memory are the same for both.
//
// linear_fast_<BM>x<BN>_<nk|kn>: for m < M, n < N (C row-major [M, N] f16):
//   main[m][n] = Σ_{k<K} a[m·lda + k]·B(k, n)       B(k, n) = b[n·ldb + k]  (nk: W of y = x·Wᵀ)
//                                                   B(k, n) = b[k·ldb + n]  (kn: W of dX = dY·W)
//   LoRA (R > 0; L, U, h f32):
//   h[m][j]  = (Σ_{k<K} a[m·lda + k]·L(j, k)) (⊙ mask[m·R + j] when mask != null), j < R
//              L(j, k) = l[j·l_sj + k·l_sk]; written to hidden[m·R + j] (=) by the blocks of
//              blockIdx.y == 0 (they cover every row once)
//   lora[m][n] = Σ_{j<R} h[m][j]·(scale·U(j, n))    U(j, n) = u[j·u_sj + n·u_sn]
//   C[m][n] = f16(main + lora (+ bias[n]) (+ beta·C[m][n] when beta != 0))   (= , or += via beta)
// The two LoRA uses:
//   forward  y = x·Wᵀ + bias + s·ũ·Bᵀ, ũ = (x·Aᵀ)⊙mask: a = x, b = W (nk), L = A, U = Bᵀ, h = ũ
//   backward dX = dY·W + s·g·A, g = (dY·B)⊙mask:       a = dY, b = W (kn), L = Bᵀ, U = A, h = g
// N may be 0 (then grid.y = 1 and only h is computed: the backward without dX).
// Requirements (the host declines otherwise): lda, K and, for kn, ldb and N multiples of 8
// and a, b 16-byte aligned (every global->shared copy of a/b is one 16-byte cp.async); the
// dynamic shared memory below within the device's limit (the host picks a tile that fits R).
//
// Grid (ceil(M/BM), max(1, ceil(N/BN))), (BM/WM)·(BN/WN) warps, each owning a WM x WN tile of
// C as (WM/16) x (WN/8) mma tiles. K is walked in 32-deep steps through a STAGES-deep cp.async
// ring (zero-filled tails: rows past M or N and k past K read as 0); each step the warps
// ldmatrix their A (and B: .trans for kn) fragments and issue the mmas, while the block also
// accumulates h over the same shared x tile with f32 FMAs (f16 x exactly widened, L staged in
// f32: the LoRA path keeps f32 accuracy, no f16 rounding of L, U or h). The epilogue applies
// the mask, writes h, stages scale·U, adds the rank-R product with f32 FMAs into the mma
// accumulators, then bias and beta, and stores f16.
// Cost of the fused LoRA: every column block recomputes h for its rows, R·ceil(N/BN)·M·K f32
// FMAs in all; at peak rates (f16 mma ~15x f32 FMA) that is about 15·R/BN of the main
// product's time (~1x at R = 8, BN = 128) unless it overlaps with the mmas. The known next
// step is to run x·Lᵀ on the tensor cores too (L split into f16 hi + scaled lo parts, two
// mma accumulators, ~2R/BN extra mma work); not done yet.
// Dynamic shared memory (bytes, LF_REGION0_BYTES and LF_SMEM_BYTES in tiles.h):
//   region 0: STAGES x [A tile BM x (BK+8) halves | B tile (nk: BN x (BK+8), kn: BK x (BN+8))]
//             then STAGES x L tile R4 x (BK+4) floats (R4: R rounded up to 4, rows past R
//             are 0); after the main loop it holds scale·U as R x BN floats (region 0 = the
//             larger of the two uses)
//   region 1: h, BM x (R|1) floats (odd row stride: conflict-free column reads)
// Row paddings keep every ldmatrix row 16-byte aligned and its 8 rows in distinct banks.
//
// linear_fast_lora_grad: the LoRA weight gradients, reductions over all M rows (M large,
// N x R small): for n < N, j < R, split z (rows [z·chunk, min(M, (z+1)·chunk))):
//   P(n, j) = scale · Σ_m d[m·ldd + n]·h[m·R + j]        (d f16, h f32, f32 FMAs)
//   out[z·N·R + n·c_sn + j·c_sj] = P (+ beta·out[..] when beta != 0; the host passes beta = 0
//   with splits > 1 and adds the splits in order with splitk_sum_f32, applying beta there)
//   dB[o][j] (+)= s·Σ_m dY[m][o]·ũ[m][j]  (d = dY, h = ũ, c_sn = R, c_sj = 1)
//   dA[j][i] (+)= s·Σ_m g[m][j]·x[m][i]   (d = x,  h = g, c_sn = 1, c_sj = N)
// Grid (ceil(N/64), ceil(R/16), splits), 256 threads: thread (n, q) = (tid % 64, tid / 64)
// owns P(n0 + n, j0 + 4q .. 4q+3); rows in 32-row steps staged by cp.async (d: 16-byte, h:
// 4-byte, zero-filled tails). Requires ldd and N multiples of 8 and d 16-byte aligned.
#include "common.cuh"

// Tiles and shared memory: LF_* and LG_* in tiles.h (LF_LDL: 16-byte L rows, float4 reads
// conflict-free).

#ifdef __CUDACC__
#define LF_UNROLL _Pragma("unroll")
#else
#define LF_UNROLL
#endif

template <typename T, int BM, int BN, int WM, int WN, bool KN>
__device__ void lf_gemm(int M, int N, int K, const T* a, int lda, const T* b, int ldb,
                        const float* l, int l_sj, int l_sk, const float* u, int u_sj, int u_sn,
                        int R, float scale, const T* mask, float* hidden, const T* bias, T* c,
                        float beta) {
    constexpr int WARPS_N = BN / WN;
    constexpr int THREADS = LF_THREADS(BM, BN, WM, WN);
    constexpr int MT = WM / 16, NT = WN / 8;
    constexpr int LDA = LF_BK + LF_APAD;
    constexpr int LDB = KN ? BN + 8 : LF_BK + LF_APAD;
    constexpr int A_H = LF_A_HALVES(BM), B_H = LF_B_HALVES(BN, KN);
    static_assert(NT % 2 == 0, "B fragments are loaded two n-tiles at a time");

    DYN_SHARED(unsigned char, smem);
    T* pipe = reinterpret_cast<T*>(smem);
    float* lring = reinterpret_cast<float*>(smem + LF_STAGES * (A_H + B_H) * 2);
    float* us = reinterpret_cast<float*>(smem);  // after the main loop
    const int LDH = R | 1;
    const int R4 = (R + 3) & ~3, RQ = R4 / 4;  // L rows (ranks padded to 4), rank quads
    float* hs = reinterpret_cast<float*>(smem + LF_REGION0_BYTES(BM, BN, KN, R));

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const bool main_gemm = N > 0;
    const int KT = (K + LF_BK - 1) / LF_BK;

    for (int e = tid; e < BM * R; e += THREADS) hs[(e / R) * LDH + e % R] = 0.0f;

    // Issues the copies of k-step kt into ring slot `slot` (A, B and L tiles).
    auto load = [&](int kt, int slot) {
        const int k0 = kt * LF_BK;
        T* as = pipe + slot * (A_H + B_H);
        T* bs = as + A_H;
        LF_UNROLL for (int i = 0; i < BM * (LF_BK / 8) / THREADS; ++i) {
            int ch = tid + i * THREADS;
            int r = ch / (LF_BK / 8), kc = (ch % (LF_BK / 8)) * 8;
            int gm = m0 + r, gk = k0 + kc;
            bool ok = gm < M && gk < K;
            cp_async16(as + r * LDA + kc, ok ? a + (size_t)gm * lda + gk : a, ok);
        }
        if (main_gemm) {
            if (KN) {
                LF_UNROLL for (int i = 0; i < LF_BK * (BN / 8) / THREADS; ++i) {
                    int ch = tid + i * THREADS;
                    int r = ch / (BN / 8), nc = (ch % (BN / 8)) * 8;
                    int gk = k0 + r, gn = n0 + nc;
                    bool ok = gk < K && gn < N;
                    cp_async16(bs + r * LDB + nc, ok ? b + (size_t)gk * ldb + gn : b, ok);
                }
            } else {
                LF_UNROLL for (int i = 0; i < BN * (LF_BK / 8) / THREADS; ++i) {
                    int ch = tid + i * THREADS;
                    int r = ch / (LF_BK / 8), kc = (ch % (LF_BK / 8)) * 8;
                    int gn = n0 + r, gk = k0 + kc;
                    bool ok = gn < N && gk < K;
                    cp_async16(bs + r * LDB + kc, ok ? b + (size_t)gn * ldb + gk : b, ok);
                }
            }
        }
        float* ls = lring + slot * R4 * LF_LDL;
        const bool jfast = l_sj == 1;  // walk memory contiguously
        for (int e = tid; e < R4 * LF_BK; e += THREADS) {
            int j = jfast ? e % R4 : e / LF_BK;
            int kk = jfast ? e / R4 : e % LF_BK;
            int gk = k0 + kk;
            bool ok = gk < K && j < R;  // padding ranks read as 0
            cp_async4(ls + j * LF_LDL + kk, ok ? l + (size_t)j * l_sj + (size_t)gk * l_sk : l, ok);
        }
    };

    float acc[MT][NT][4];
    LF_UNROLL for (int i = 0; i < MT; ++i) {
        LF_UNROLL for (int j = 0; j < NT; ++j) {
            LF_UNROLL for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
        }
    }

    // Prologue: the first STAGES-1 steps in flight (one commit group per step, empty past KT).
    LF_UNROLL for (int s = 0; s < LF_STAGES - 1; ++s) {
        if (s < KT) load(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait_group<LF_STAGES - 2>();  // this thread's copies of step kt have landed
        __syncthreads();  // everyone's have, and everyone is done with step kt-1's slot
        {
            int nk = kt + LF_STAGES - 1;
            if (nk < KT) load(nk, nk % LF_STAGES);
            cp_async_commit();
        }
        const int slot = kt % LF_STAGES;
        const T* as = pipe + slot * (A_H + B_H);
        const T* bs = as + A_H;
        if (main_gemm) {
            LF_UNROLL for (int ks = 0; ks < LF_BK / 16; ++ks) {
                uint32_t af[MT][4], bf[NT][2];
                LF_UNROLL for (int i = 0; i < MT; ++i) {
                    int r = wm * WM + i * 16 + (lane & 15);
                    ldmatrix_x4(af[i], as + r * LDA + ks * 16 + (lane >> 4) * 8);
                }
                LF_UNROLL for (int jp = 0; jp < NT / 2; ++jp) {
                    uint32_t t4[4];
                    if (KN) {
                        int r = ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                        int cn = wn * WN + jp * 16 + (lane >> 4) * 8;
                        ldmatrix_x4_trans(t4, bs + r * LDB + cn);
                    } else {
                        int r = wn * WN + jp * 16 + (lane & 7) + (lane >> 4) * 8;
                        int ck = ks * 16 + ((lane >> 3) & 1) * 8;
                        ldmatrix_x4(t4, bs + r * LDB + ck);
                    }
                    bf[2 * jp][0] = t4[0];
                    bf[2 * jp][1] = t4[1];
                    bf[2 * jp + 1][0] = t4[2];
                    bf[2 * jp + 1][1] = t4[3];
                }
                LF_UNROLL for (int i = 0; i < MT; ++i) {
                    LF_UNROLL for (int j = 0; j < NT; ++j) mma_tile<T>(acc[i][j], af[i], bf[j], acc[i][j]);
                }
            }
        }
        // LoRA: h[m][j] += Σ_kk x[m][kk]·L(j, kk) over this step in f32, kk ascending; each
        // thread owns (row, 4 ranks) items, reads x 8 halves and L 4 floats at a time, and adds
        // the step's partial sums to h in one rounding each.
        const float* ls = lring + slot * R4 * LF_LDL;
        for (int e = tid; e < BM * RQ; e += THREADS) {
            const int r = e / RQ, j0 = (e % RQ) * 4;
            const uint4* xr = reinterpret_cast<const uint4*>(as + r * LDA);
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            LF_UNROLL for (int c8 = 0; c8 < LF_BK / 8; ++c8) {
                uint4 xq = xr[c8];
                const uint32_t xw[4] = {xq.x, xq.y, xq.z, xq.w};
                float xf[8];
                LF_UNROLL for (int p = 0; p < 4; ++p) {
                    xf[2 * p] = bits_f32<T>(xw[p]);
                    xf[2 * p + 1] = bits_f32<T>(xw[p] >> 16);
                }
                LF_UNROLL for (int jj = 0; jj < 4; ++jj) {
                    const float4* lp =
                        reinterpret_cast<const float4*>(ls + (j0 + jj) * LF_LDL + c8 * 8);
                    float4 l0 = lp[0], l1 = lp[1];
                    float v = s[jj];
                    v += xf[0] * l0.x;
                    v += xf[1] * l0.y;
                    v += xf[2] * l0.z;
                    v += xf[3] * l0.w;
                    v += xf[4] * l1.x;
                    v += xf[5] * l1.y;
                    v += xf[6] * l1.z;
                    v += xf[7] * l1.w;
                    s[jj] = v;
                }
            }
            LF_UNROLL for (int jj = 0; jj < 4; ++jj) {
                if (j0 + jj < R) hs[r * LDH + j0 + jj] += s[jj];
            }
        }
    }
    cp_async_wait_all();
    __syncthreads();  // the ring is free, h is complete

    if (R > 0) {
        // h ⊙ mask, written out by the first column of blocks; scale·U staged over the ring.
        for (int e = tid; e < BM * R; e += THREADS) {
            int r = e / R, j = e % R, gm = m0 + r;
            if (gm >= M) continue;
            float v = hs[r * LDH + j];
            if (mask) v *= to_f32(mask[(size_t)gm * R + j]);
            hs[r * LDH + j] = v;
            if (blockIdx.y == 0) hidden[(size_t)gm * R + j] = v;
        }
        if (main_gemm) {
            for (int e = tid; e < R * BN; e += THREADS) {
                int j = e / BN, nn = e % BN, gn = n0 + nn;
                us[e] = gn < N ? scale * u[(size_t)j * u_sj + (size_t)gn * u_sn] : 0.0f;
            }
        }
        __syncthreads();
        if (main_gemm) {
            const int g = lane >> 2, t = lane & 3;
            for (int j = 0; j < R; ++j) {
                float hv[MT][2], uv[NT][2];
                LF_UNROLL for (int i = 0; i < MT; ++i) {
                    int r = wm * WM + i * 16 + g;
                    hv[i][0] = hs[r * LDH + j];
                    hv[i][1] = hs[(r + 8) * LDH + j];
                }
                LF_UNROLL for (int jn = 0; jn < NT; ++jn) {
                    int cn = wn * WN + jn * 8 + 2 * t;
                    uv[jn][0] = us[j * BN + cn];
                    uv[jn][1] = us[j * BN + cn + 1];
                }
                LF_UNROLL for (int i = 0; i < MT; ++i) {
                    LF_UNROLL for (int jn = 0; jn < NT; ++jn) {
                        LF_UNROLL for (int q = 0; q < 4; ++q)
                            acc[i][jn][q] += hv[i][q >> 1] * uv[jn][q & 1];
                    }
                }
            }
        }
    }
    if (!main_gemm) return;

    // Epilogue: bias, beta, f16 stores (pairs of columns when N is even).
    const int g = lane >> 2, t = lane & 3;
    LF_UNROLL for (int i = 0; i < MT; ++i) {
        LF_UNROLL for (int hh = 0; hh < 2; ++hh) {
            int gm = m0 + wm * WM + i * 16 + g + hh * 8;
            if (gm >= M) continue;
            LF_UNROLL for (int jn = 0; jn < NT; ++jn) {
                int gn = n0 + wn * WN + jn * 8 + 2 * t;
                float v[2] = {acc[i][jn][hh * 2], acc[i][jn][hh * 2 + 1]};
                T* cp = c + (size_t)gm * N + gn;
                LF_UNROLL for (int q = 0; q < 2; ++q) {
                    if (gn + q >= N) continue;
                    if (bias) v[q] += to_f32(bias[gn + q]);
                    if (beta != 0.0f) v[q] += beta * to_f32(cp[q]);
                }
                if ((N & 1) == 0 && gn + 1 < N) {
                    *reinterpret_cast<uint32_t*>(cp) = pack2_f32<T>(v[0], v[1]);
                } else {
                    LF_UNROLL for (int q = 0; q < 2; ++q) {
                        if (gn + q < N) cp[q] = from_f32<T>(v[q]);
                    }
                }
            }
        }
    }
}

#define LF_ENTRY(name, T, BM, BN, WM, WN, KN)                                               \
    KERNEL void __launch_bounds__(LF_THREADS(BM, BN, WM, WN), 1)                            \
        name(int M, int N, int K, const T* a, int lda, const T* b, int ldb, const float* l, \
             int l_sj, int l_sk, const float* u, int u_sj, int u_sn, int R, float scale,    \
             const T* mask, float* hidden, const T* bias, T* c, float beta) {               \
        lf_gemm<T, BM, BN, WM, WN, KN>(M, N, K, a, lda, b, ldb, l, l_sj, l_sk, u, u_sj,     \
                                       u_sn, R, scale, mask, hidden, bias, c, beta);        \
    }
// The six tiles x orientations for one storage type; f16's entry points carry no suffix,
// bf16's end in _bf16.
#define LF_ENTRIES(T, SUFFIX)                                                                 \
    LF_ENTRY(linear_fast_128x128_nk##SUFFIX, T, LF_L_BM, LF_L_BN, LF_L_WM, LF_L_WN, false)    \
    LF_ENTRY(linear_fast_128x64_nk##SUFFIX, T, LF_M_BM, LF_M_BN, LF_M_WM, LF_M_WN, false)     \
    LF_ENTRY(linear_fast_64x64_nk##SUFFIX, T, LF_S_BM, LF_S_BN, LF_S_WM, LF_S_WN, false)      \
    LF_ENTRY(linear_fast_128x128_kn##SUFFIX, T, LF_L_BM, LF_L_BN, LF_L_WM, LF_L_WN, true)     \
    LF_ENTRY(linear_fast_128x64_kn##SUFFIX, T, LF_M_BM, LF_M_BN, LF_M_WM, LF_M_WN, true)      \
    LF_ENTRY(linear_fast_64x64_kn##SUFFIX, T, LF_S_BM, LF_S_BN, LF_S_WM, LF_S_WN, true)

LF_ENTRIES(__half, )
LF_ENTRIES(bf16_t, _bf16)

template <typename T>
__device__ void lf_lora_grad(int M, int N, const T* d, int ldd, const float* h, int R, float scale,
                          float* out, int c_sn, int c_sj, int chunk, float beta) {
    __shared__ __align__(16) T ds[2][LG_BM][LG_BN];
    __shared__ __align__(16) float hsm[2][LG_BM][LG_BR];
    const int tid = threadIdx.x;
    const int n0 = blockIdx.x * LG_BN, j0 = blockIdx.y * LG_BR, z = blockIdx.z;
    const int r0 = z * chunk, r1 = M - r0 < chunk ? M : r0 + chunk;
    const int steps = r1 > r0 ? (r1 - r0 + LG_BM - 1) / LG_BM : 0;
    const int n = tid % LG_BN, q = tid / LG_BN;

    auto load = [&](int st, int buf) {
        int m0 = r0 + st * LG_BM;
        {  // d: 32 rows x 64 halves = 256 chunks of 16 bytes, one per thread
            int r = tid / (LG_BN / 8), nc = (tid % (LG_BN / 8)) * 8;
            int gm = m0 + r, gn = n0 + nc;
            bool ok = gm < r1 && gn < N;
            cp_async16(&ds[buf][r][nc], ok ? d + (size_t)gm * ldd + gn : d, ok);
        }
        LF_UNROLL for (int i = 0; i < LG_BM * LG_BR / LG_THREADS; ++i) {
            int e = tid + i * LG_THREADS;
            int r = e / LG_BR, jj = e % LG_BR;
            int gm = m0 + r, j = j0 + jj;
            bool ok = gm < r1 && j < R;
            cp_async4(&hsm[buf][r][jj], ok ? h + (size_t)gm * R + j : h, ok);
        }
    };

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (steps > 0) load(0, 0);
    cp_async_commit();
    for (int st = 0; st < steps; ++st) {
        if (st + 1 < steps) load(st + 1, (st + 1) & 1);
        cp_async_commit();
        cp_async_wait_group<1>();  // step st landed (st+1 may still be in flight)
        __syncthreads();
        const int buf = st & 1;
        LF_UNROLL for (int r = 0; r < LG_BM; ++r) {
            float dv = to_f32(ds[buf][r][n]);
            float4 hv = *reinterpret_cast<const float4*>(&hsm[buf][r][q * 4]);
            acc[0] += dv * hv.x;
            acc[1] += dv * hv.y;
            acc[2] += dv * hv.z;
            acc[3] += dv * hv.w;
        }
        __syncthreads();  // buffer `buf` is reloaded by the next iteration's copies
    }
    const int gn = n0 + n;
    if (gn >= N) return;
    float* o = out + (size_t)z * N * R;
    LF_UNROLL for (int i = 0; i < 4; ++i) {
        int j = j0 + q * 4 + i;
        if (j >= R) continue;
        size_t idx = (size_t)gn * c_sn + (size_t)j * c_sj;
        float v = scale * acc[i];
        if (beta != 0.0f) v += beta * o[idx];
        o[idx] = v;
    }
}

#define LG_ENTRY(name, T)                                                                      \
    KERNEL void __launch_bounds__(LG_THREADS)                                                  \
        name(int M, int N, const T* d, int ldd, const float* h, int R, float scale, float* out, \
             int c_sn, int c_sj, int chunk, float beta) {                                       \
        lf_lora_grad<T>(M, N, d, ldd, h, R, scale, out, c_sn, c_sj, chunk, beta);               \
    }
LG_ENTRY(linear_fast_lora_grad, __half)
LG_ENTRY(linear_fast_lora_grad_bf16, bf16_t)
