// Linear layers with LoRA: one shared-memory-tiled GEMM with f32 accumulation, plus the
// deterministic split-K reduction it uses for the skinny LoRA weight gradients.
//
// gemm_<A>_<B>_<C> computes, for m < M, n < N (C row-major [M, N], leading dimension N):
//   acc[m][n] = alpha  · Σ_{k<K}  A(m, k)·B(k, n)          (A(m,k) = a[m·sam + k·sak],
//             + alpha2 · Σ_{k<K2} A2(m, k)·B2(k, n)          B(k,n) = b[k·sbk + n·sbn], same
//                                                            for the optional second product)
//   v = acc; v *= mask[m][n] (mask != null); v += bias[n] (bias != null);
//   v += beta·C[m][n] (beta != 0: C is read only then, so `=` outputs may start as garbage)
//   C[m][n] = v                                           (writes C with `=`, or `+=` via beta)
// Operand storage: A in <A>, B in <B>, C in <C>; the second product A2, B2 always f32 (the
// LoRA term: hidden × up, or g × down); bias and mask are f16 (bf16) when any of <A>, <B>,
// <C> is f16 (bf16; the activation dtype), else f32. Strides make every transpose a plain call:
//   y  = x·Wᵀ + bias + s·ũ·Bᵀ      gemm_T_T_T      (A = x, B = Wᵀ; A2 = ũ, B2 = B_upᵀ)
//   ũ  = (x·A_downᵀ) ⊙ mask        gemm_T_f32_f32
//   g  = (dY·B_up) ⊙ mask          gemm_T_f32_f32
//   dB = s·dYᵀ·ũ (+ dB)            gemm_T_f32_f32  (K = rows, split-K)
//   dA = s·gᵀ·X (+ dA)             gemm_f32_T_f32  (K = rows, split-K)
//   dX = dY·W + s·g·A_down         gemm_T_T_T      (A2 = g, B2 = A_down)
//
// Grid: (ceil(M/64), ceil(N/64), splits), 64 threads. Each block computes a 64x64 tile of C
// through 16-deep k-steps staged in shared memory as f32 (A·alpha and B tiles, converted on
// load, tails zero-filled); thread (tx, ty) = (tid % 8, tid / 8) owns rows ty + 8i and
// columns tx + 8j, i, j < 8. Loads follow whichever stride is 1 so a warp reads contiguous
// memory. Split-K (gridDim.z > 1): block z sums k in [z·kchunk, min(K, (z+1)·kchunk)) of the
// first product (z = 0 also takes the whole second product) and writes its raw sum to
// partial[z][m][n] (f32, `=`), skipping the epilogue; splitk_sum_f32 then adds the splits in
// order (deterministic) and applies beta: c[i] = Σ_z partial[z][i] (+ beta·c[i]).
// Without split-K pass partial = null and kchunk >= K.
#include "common.cuh"

// Tiles: GEMM_* in tiles.h.

// nvcc unrolls what it is told to; the host compiler of the emulator does without.
#ifdef __CUDACC__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

// Stages the BM x BK tile of alpha·A (rows m0.., depth k0..k1) and the BK x BN tile of B
// (depth k0..k1, columns n0..) in shared memory; out-of-range elements are 0.
template <typename TA, typename TB>
__device__ __forceinline__ void gemm_load_tiles(float (*as)[GEMM_BM + 4], float (*bs)[GEMM_BN + 4],
                                                const TA* a, int sam, int sak, const TB* b,
                                                int sbk, int sbn, float alpha, int M, int N,
                                                int m0, int n0, int k0, int k1) {
    const int tid = threadIdx.x;
    const bool a_kfast = sak == 1;
    const bool b_nfast = sbn == 1;
    UNROLL for (int i = 0; i < GEMM_BM * GEMM_BK / GEMM_THREADS; ++i) {
        int e = tid + i * GEMM_THREADS;
        int kk = a_kfast ? e % GEMM_BK : e / GEMM_BM;
        int mm = a_kfast ? e / GEMM_BK : e % GEMM_BM;
        int m = m0 + mm, k = k0 + kk;
        as[kk][mm] = (m < M && k < k1) ? alpha * to_f32(a[m * sam + k * sak]) : 0.0f;
    }
    UNROLL for (int i = 0; i < GEMM_BK * GEMM_BN / GEMM_THREADS; ++i) {
        int e = tid + i * GEMM_THREADS;
        int nn = b_nfast ? e % GEMM_BN : e / GEMM_BK;
        int kk = b_nfast ? e / GEMM_BN : e % GEMM_BK;
        int n = n0 + nn, k = k0 + kk;
        bs[kk][nn] = (n < N && k < k1) ? to_f32(b[k * sbk + n * sbn]) : 0.0f;
    }
}

// acc += alpha·A·B over k in [k0, k1) for this block's tile.
template <typename TA, typename TB>
__device__ __forceinline__ void gemm_product(float (*acc)[GEMM_TM], float (*as)[GEMM_BM + 4],
                                             float (*bs)[GEMM_BN + 4], const TA* a, int sam,
                                             int sak, const TB* b, int sbk, int sbn, float alpha,
                                             int M, int N, int m0, int n0, int k0, int k1) {
    const int tx = threadIdx.x % GEMM_TX, ty = threadIdx.x / GEMM_TX;
    for (int kt = k0; kt < k1; kt += GEMM_BK) {
        gemm_load_tiles(as, bs, a, sam, sak, b, sbk, sbn, alpha, M, N, m0, n0, kt, k1);
        __syncthreads();
        UNROLL for (int kk = 0; kk < GEMM_BK; ++kk) {
            float av[GEMM_TM], bv[GEMM_TM];
            UNROLL for (int i = 0; i < GEMM_TM; ++i) av[i] = as[kk][ty + GEMM_TY * i];
            UNROLL for (int j = 0; j < GEMM_TM; ++j) bv[j] = bs[kk][tx + GEMM_TX * j];
            UNROLL for (int i = 0; i < GEMM_TM; ++i) {
                UNROLL for (int j = 0; j < GEMM_TM; ++j) acc[i][j] += av[i] * bv[j];
            }
        }
        __syncthreads();
    }
}

template <typename TA, typename TB, typename TC, typename TE>
__device__ void gemm_impl(int M, int N, const TA* a, int sam, int sak, const TB* b, int sbk,
                          int sbn, int K, float alpha, const float* a2, int sa2m, int sa2k,
                          const float* b2, int sb2k, int sb2n, int K2, float alpha2,
                          const TE* bias, const TE* mask, TC* c, float beta, float* partial,
                          int kchunk) {
    __shared__ float as[GEMM_BK][GEMM_BM + 4];
    __shared__ float bs[GEMM_BK][GEMM_BN + 4];
    const int m0 = blockIdx.x * GEMM_BM, n0 = blockIdx.y * GEMM_BN, z = blockIdx.z;
    const int tx = threadIdx.x % GEMM_TX, ty = threadIdx.x / GEMM_TX;
    float acc[GEMM_TM][GEMM_TM];
    UNROLL for (int i = 0; i < GEMM_TM; ++i) {
        UNROLL for (int j = 0; j < GEMM_TM; ++j) acc[i][j] = 0.0f;
    }

    const int k0 = z * kchunk;
    const int k1 = K - k0 < kchunk ? K : k0 + kchunk;
    gemm_product(acc, as, bs, a, sam, sak, b, sbk, sbn, alpha, M, N, m0, n0, k0, k1);
    if (K2 > 0 && z == 0)
        gemm_product(acc, as, bs, a2, sa2m, sa2k, b2, sb2k, sb2n, alpha2, M, N, m0, n0, 0, K2);

    UNROLL for (int i = 0; i < GEMM_TM; ++i) {
        int m = m0 + ty + GEMM_TY * i;
        if (m >= M) continue;
        UNROLL for (int j = 0; j < GEMM_TM; ++j) {
            int n = n0 + tx + GEMM_TX * j;
            if (n >= N) continue;
            int o = m * N + n;
            float v = acc[i][j];
            if (partial) {
                partial[z * M * N + o] = v;
                continue;
            }
            if (mask) v *= to_f32(mask[o]);
            if (bias) v += to_f32(bias[n]);
            if (beta != 0.0f) v += beta * to_f32(c[o]);
            c[o] = from_f32<TC>(v);
        }
    }
}

#define GEMM_ENTRY(name, TA, TB, TC, TE)                                                  \
    KERNEL void __launch_bounds__(GEMM_THREADS)                                           \
        name(int M, int N, const TA* a, int sam, int sak, const TB* b, int sbk, int sbn,  \
             int K, float alpha, const float* a2, int sa2m, int sa2k, const float* b2,    \
             int sb2k, int sb2n, int K2, float alpha2, const TE* bias, const TE* mask,    \
             TC* c, float beta, float* partial, int kchunk) {                             \
        gemm_impl<TA, TB, TC, TE>(M, N, a, sam, sak, b, sbk, sbn, K, alpha, a2, sa2m,     \
                                  sa2k, b2, sb2k, sb2n, K2, alpha2, bias, mask, c, beta,  \
                                  partial, kchunk);                                       \
    }

GEMM_ENTRY(gemm_f32_f32_f32, float, float, float, float)
GEMM_ENTRY(gemm_f16_f16_f16, __half, __half, __half, __half)
GEMM_ENTRY(gemm_f16_f32_f32, __half, float, float, __half)
GEMM_ENTRY(gemm_f32_f16_f32, float, __half, float, __half)
GEMM_ENTRY(gemm_bf16_bf16_bf16, bf16_t, bf16_t, bf16_t, bf16_t)
GEMM_ENTRY(gemm_bf16_f32_f32, bf16_t, float, float, bf16_t)
GEMM_ENTRY(gemm_f32_bf16_f32, float, bf16_t, float, bf16_t)

// c[i] = Σ_{z<splits} partial[z·n + i] (+ beta·c[i] when beta != 0), z in order. One thread
// per element, 1-D grid of ceil(n / blockDim.x) blocks.
KERNEL void splitk_sum_f32(const float* partial, float* c, int n, int splits, float beta) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = 0.0f;
    for (int z = 0; z < splits; ++z) v += partial[z * n + i];
    if (beta != 0.0f) v += beta * c[i];
    c[i] = v;
}
