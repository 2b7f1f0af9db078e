// Shared by every kernel: the entry-point macro, f16/f32 conversions, warp and block
// reductions, and thin wrappers over the tensor-core (mma.sync m16n8k16), ldmatrix and
// cp.async instructions. Built by nvcc for the GPU and by the host C++ compiler for the
// kernel emulator (kernels/emu/emu.h), where each wrapper has the same per-lane semantics.
#pragma once

#ifdef __CUDACC__
#include <cuda_fp16.h>
#include <stdint.h>
#else
#include "emu/emu.h"
#endif

// Tile sizes and shared-memory sizes, shared with the Rust launchers.
#include "tiles.h"

// An entry point: unmangled, so the Rust launchers find it by name on both sides.
#define KERNEL extern "C" __global__

// Dynamic shared memory as an array of T (16-byte aligned).
#ifdef __CUDACC__
#define DYN_SHARED(T, name)                                      \
    extern __shared__ __align__(16) unsigned char name##_raw_[]; \
    T* name = reinterpret_cast<T*>(name##_raw_)
#else
#define DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dyn_smem())
#endif

// ---- element conversions: storage type <-> f32 compute ----

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
    return __float2half_rn(x);
}

// ---- reductions ----

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over all threads of a 1-D block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` is 32 values of shared memory, free on entry and exit.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    unsigned warps = (blockDim.x + 31u) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T t = lane < warps ? scratch[lane] : T(0);
    t = warp_sum(t);
    __syncthreads();
    return t;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    unsigned warps = (blockDim.x + 31u) >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : -INFINITY;
    t = warp_max(t);
    __syncthreads();
    return t;
}

// ---- tensor cores, ldmatrix, cp.async ----

// D = A·B + C on one 16x8x16 tile: A row-major f16 (4 regs), B column-major f16 (2 regs),
// C and D f32 (4 regs), fragments as in the PTX ISA for mma.m16n8k16.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                             const float c[4]) {
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    ::emu::mma_m16n8k16(d, a, b, c);
#endif
}

// ldmatrix .m8n8.x4 .b16 from shared memory: lanes 8j..8j+7 give the rows of matrix j; each
// lane receives one 32-bit register per matrix (.trans: of the transposed matrix).
__device__ __forceinline__ void ldmatrix_x4(uint32_t d[4], const void* smem_row) {
#ifdef __CUDACC__
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a));
#else
    ::emu::ldmatrix(d, 4, smem_row, false);
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t d[4], const void* smem_row) {
#ifdef __CUDACC__
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a));
#else
    ::emu::ldmatrix(d, 4, smem_row, true);
#endif
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t d[2], const void* smem_row) {
#ifdef __CUDACC__
    unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(d[0]), "=r"(d[1])
                 : "r"(a));
#else
    ::emu::ldmatrix(d, 2, smem_row, false);
#endif
}

// 16 bytes global -> shared without passing through registers; when `valid` is false the
// destination is zero-filled instead (predicated tails). Completes at cp_async_wait_all.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool valid) {
#ifdef __CUDACC__
    unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gmem_src),
                 "r"(n));
#else
    if (valid)
        std::memcpy(smem_dst, gmem_src, 16);
    else
        std::memset(smem_dst, 0, 16);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDACC__
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#ifdef __CUDACC__
    asm volatile("cp.async.wait_all;\n" ::);
#endif
}

// Two f16 values packed into one 32-bit register (low half first), as mma fragments hold them.
__device__ __forceinline__ uint32_t pack_half2(__half lo, __half hi) {
#ifdef __CUDACC__
    return static_cast<uint32_t>(__half_as_ushort(lo)) |
           (static_cast<uint32_t>(__half_as_ushort(hi)) << 16);
#else
    return uint32_t(lo.bits) | uint32_t(hi.bits) << 16;
#endif
}
