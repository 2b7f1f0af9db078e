// Self-tests of the machinery every other kernel relies on: block reductions over warps,
// warp shuffles, the mma.sync m16n8k16 (on sm_75: two m16n8k8; bf16 on sm_80 and later) /
// m16n8k8 / ldmatrix / cp.async wrappers. In the emulator they check the emulated semantics
// against a CPU computation; on a GPU the same tests check that the emulator's semantics are
// the hardware's.
//
//   selftest_block_reduce: out[2r] = sum(x[r, :]), out[2r+1] = max(x[r, :]); grid = rows,
//                          1-D block of any multiple of 32 threads striding over the columns.
//   selftest_shuffle:      per thread i (full warps): y[3i] = shfl_down(x, 1),
//                          y[3i+1] = shfl_xor(x, 5), y[3i+2] = shfl(x, lane 7).
//   selftest_mma:          one warp: D (16x8 f32) = A (16x16 f16) · B (16x8 f16) + C, A given
//                          row-major (or, with a_trans, as Aᵀ row-major), B given as Bᵀ [8, 16].
//   selftest_mma_bf16:     the same with bf16 A and B (mma.sync ... .bf16, sm_80 and later).
//   selftest_mma_k8:       one warp: D (16x8 f32) = A (16x8 f16) · B (8x8 f16) + C through one
//                          mma_m16n8k8 (Turing's shape), fragments read from global memory
//                          as the PTX ISA lays them out; A row-major, B given as Bᵀ [8, 8].
//   selftest_no_barrier:   DELIBERATELY WRONG: y[t] = s[(t+1) % n] after each thread wrote
//                          s[t] = t, with the __syncthreads between them missing. The emulator
//                          must show it (unwritten, NaN-poisoned reads); never run on a GPU.
//   selftest_cp_async:     one block of 64 threads copies x[0..n) (16-byte chunks, the partial
//                          last chunk zero-filled) through dynamic shared memory into y[0..256).
#include "common.cuh"

KERNEL void selftest_block_reduce(const float* x, float* out, int cols) {
    __shared__ float scratch[32];
    const float* row = x + (size_t)blockIdx.x * cols;
    float s = 0.0f, m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        s += row[c];
        m = fmaxf(m, row[c]);
    }
    s = block_sum(s, scratch);
    m = block_max(m, scratch);
    if (threadIdx.x == 0) {
        out[2 * blockIdx.x] = s;
        out[2 * blockIdx.x + 1] = m;
    }
}

KERNEL void selftest_shuffle(const float* x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    y[3 * i] = __shfl_down_sync(0xffffffffu, v, 1);
    y[3 * i + 1] = __shfl_xor_sync(0xffffffffu, v, 5);
    y[3 * i + 2] = __shfl_sync(0xffffffffu, v, 7);
}

template <typename T>
__device__ void selftest_mma_impl(const T* a, const T* bt, const float* c, float* d, int a_trans) {
    __shared__ __align__(16) T sa[16 * 16];
    __shared__ __align__(16) T sb[8 * 16];
    int l = threadIdx.x;
    for (int i = l; i < 256; i += 32) sa[i] = a[i];
    for (int i = l; i < 128; i += 32) sb[i] = bt[i];
    __syncthreads();
    uint32_t af[4], bf[2];
    int j = l >> 3, r = l & 7;
    if (a_trans)
        ldmatrix_x4_trans(af, &sa[((j >> 1) * 8 + r) * 16 + (j & 1) * 8]);
    else
        ldmatrix_x4(af, &sa[((j & 1) * 8 + r) * 16 + (j >> 1) * 8]);
    int jb = (l >> 3) & 1;
    ldmatrix_x2(bf, &sb[r * 16 + jb * 8]);
    int g = l >> 2, t = l & 3;
    float cf[4], df[4];
    for (int i = 0; i < 4; ++i) cf[i] = c[(g + ((i & 2) ? 8 : 0)) * 8 + t * 2 + (i & 1)];
    mma_tile<T>(df, af, bf, cf);
    for (int i = 0; i < 4; ++i) d[(g + ((i & 2) ? 8 : 0)) * 8 + t * 2 + (i & 1)] = df[i];
}
KERNEL void selftest_mma(const __half* a, const __half* bt, const float* c, float* d, int a_trans) {
    selftest_mma_impl(a, bt, c, d, a_trans);
}
KERNEL void selftest_mma_bf16(const bf16_t* a, const bf16_t* bt, const float* c, float* d,
                              int a_trans) {
    selftest_mma_impl(a, bt, c, d, a_trans);
}

KERNEL void selftest_mma_k8(const __half* a, const __half* bt, const float* c, float* d) {
    int l = threadIdx.x, g = l >> 2, t = l & 3;
    const uint32_t af[2] = {pack_half2(a[g * 8 + 2 * t], a[g * 8 + 2 * t + 1]),
                            pack_half2(a[(g + 8) * 8 + 2 * t], a[(g + 8) * 8 + 2 * t + 1])};
    // b holds B[2t][g], B[2t + 1][g], i.e. Bᵀ[g][2t], Bᵀ[g][2t + 1].
    const uint32_t bf = pack_half2(bt[g * 8 + 2 * t], bt[g * 8 + 2 * t + 1]);
    float cf[4], df[4];
    for (int i = 0; i < 4; ++i) cf[i] = c[(g + ((i & 2) ? 8 : 0)) * 8 + t * 2 + (i & 1)];
    mma_m16n8k8(df, af, bf, cf);
    for (int i = 0; i < 4; ++i) d[(g + ((i & 2) ? 8 : 0)) * 8 + t * 2 + (i & 1)] = df[i];
}

KERNEL void selftest_cp_async(const float* x, float* y, int n) {
    DYN_SHARED(float, s);
    int c = threadIdx.x;  // chunk of 4 floats
    cp_async16(&s[4 * c], x + 4 * c, 4 * c + 4 <= n);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x) y[i] = s[i];
}

KERNEL void selftest_no_barrier(float* y) {
    DYN_SHARED(float, s);
    unsigned n = blockDim.x, t = threadIdx.x;
    s[t] = float(t);
    // (the __syncthreads() belongs here)
    y[blockIdx.x * n + t] = s[(t + 1) % n];
}
