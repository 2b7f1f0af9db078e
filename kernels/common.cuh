// Shared by every kernel: the entry-point macro, f16/bf16/f32 conversions, warp and block
// reductions, and thin wrappers over the tensor-core (mma.sync m16n8k16, on sm_75 as two
// m16n8k8), ldmatrix and cp.async (on sm_75 synchronous copies) instructions. Built by nvcc for the GPU and by the host C++ compiler for the
// kernel emulator (kernels/emu/emu.h), where each wrapper has the same per-lane semantics.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#else
#include "emu/emu.h"
#endif

// Tile sizes and shared-memory sizes, shared with the Rust launchers.
#include "tiles.h"

// An entry point: unmangled, so the Rust launchers find it by name on both sides.
#define KERNEL extern "C" __global__

// `#pragma unroll` for nvcc only (the host compiler of the emulator warns on it).
#ifdef __CUDACC__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

// Dynamic shared memory as an array of T (16-byte aligned).
#ifdef __CUDACC__
#define DYN_SHARED(T, name)                                      \
    extern __shared__ __align__(16) unsigned char name##_raw_[]; \
    T* name = reinterpret_cast<T*>(name##_raw_)
#else
#define DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dyn_smem())
#endif

// bfloat16 storage (f32's exponent, 8 significant bits): the `_bf16` entry points' type.
typedef __nv_bfloat16 bf16_t;

// ---- element conversions: storage type <-> f32 compute ----

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(bf16_t x) { return __bfloat162float(x); }

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
template <>
__device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) {
    return __float2bfloat16_rn(x);
}

// 16-bit storage (T = __half or bf16_t) as raw bits, for the fast kernels' vector loads and
// stores (8 elements in a uint4, pairs in a 32-bit word, element 0 in the low half):
// bits_f32<T>(w) widens the element in the low 16 bits of w (the high 16 are ignored);
// f32_bits<T>(x) rounds x to T (nearest even) and returns its bits in the low 16.
template <typename T>
__device__ __forceinline__ float bits_f32(uint32_t w);
template <typename T>
__device__ __forceinline__ uint32_t f32_bits(float x);
template <>
__device__ __forceinline__ float bits_f32<__half>(uint32_t w) {
#ifdef __CUDACC__
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
#else
    __half h;
    h.bits = static_cast<uint16_t>(w & 0xffffu);
    return __half2float(h);
#endif
}
template <>
__device__ __forceinline__ float bits_f32<bf16_t>(uint32_t w) {
    // bf16 is the top half of an f32: widening is a shift.
#ifdef __CUDACC__
    return __uint_as_float(w << 16);
#else
    const uint32_t u = w << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}
template <>
__device__ __forceinline__ uint32_t f32_bits<__half>(float x) {
#ifdef __CUDACC__
    return __half_as_ushort(__float2half_rn(x));
#else
    return __float2half_rn(x).bits;
#endif
}
template <>
__device__ __forceinline__ uint32_t f32_bits<bf16_t>(float x) {
#ifdef __CUDACC__
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
#else
    return __float2bfloat16_rn(x).bits;
#endif
}
// Two f32 rounded to T and packed into one word (lo in the low half: lo at the lower address);
// on the GPU one paired conversion (cvt.rn.f16x2.f32 / .bf16x2.f32 on sm_80 and later).
template <typename T>
__device__ __forceinline__ uint32_t pack2_f32(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2_f32<__half>(float lo, float hi) {
#ifdef __CUDACC__
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
#else
    return f32_bits<__half>(lo) | (f32_bits<__half>(hi) << 16);
#endif
}
template <>
__device__ __forceinline__ uint32_t pack2_f32<bf16_t>(float lo, float hi) {
#ifdef __CUDACC__
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
#else
    return f32_bits<bf16_t>(lo) | (f32_bits<bf16_t>(hi) << 16);
#endif
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
//
// Two architectures' paths, chosen where the code is compiled for one: PTX for sm_80 and
// later (__CUDA_ARCH__ >= 800) uses mma.sync m16n8k16 and cp.async; PTX for sm_75 (Turing)
// has neither, so there mma_m16n8k16 is two m16n8k8 and cp_async16 a synchronous copy. The
// emulator runs whichever path its launch's target profile asks for (emu::sm()), so the
// Turing code below is the code the emulated Turing tests run.
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
#define LORAFUSE_SM80 1
#else
#define LORAFUSE_SM80 0
#endif

// D = A·B + C on one 16x8x8 tile (sm_75 and later): A row-major f16 (2 regs), B column-major
// f16 (1 reg), C and D f32 (4 regs), fragments as in the PTX ISA for mma.m16n8k8.
__device__ __forceinline__ void mma_m16n8k8(float d[4], const uint32_t a[2], uint32_t b,
                                            const float c[4]) {
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%7,%8,%9,%10};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    ::emu::mma_m16n8k8(d, a, b, c);
#endif
}

// D = A·B + C on one 16x8x16 tile: A row-major f16 (4 regs), B column-major f16 (2 regs),
// C and D f32 (4 regs), fragments as in the PTX ISA for mma.m16n8k16. On sm_75 two m16n8k8
// (k 0-7, then k 8-15): the m16n8k16 A fragment's a[0], a[1] hold columns 0-7 (rows g, g+8)
// and a[2], a[3] columns 8-15; b[0] holds k 0-7 and b[1] k 8-15, and C/D are laid out alike,
// so each half is an m16n8k8 fragment as it stands.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                             const float c[4]) {
#if LORAFUSE_SM80
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
#ifndef __CUDACC__
    if (::emu::sm() >= 80) {
        ::emu::mma_m16n8k16(d, a, b, c);
        return;
    }
#endif
    const uint32_t lo[2] = {a[0], a[1]}, hi[2] = {a[2], a[3]};
    float t[4];
    mma_m16n8k8(t, lo, b[0], c);
    mma_m16n8k8(d, hi, b[1], t);
#endif
}

// The same tile with bf16 A and B (mma.sync ... .bf16.bf16, same fragment layout; sm_80 and
// later). sm_75 has no bf16 tensor-core instruction: its PTX traps here, and the Rust side
// never launches a bf16 tensor-core kernel on a device below compute capability 8.0 (the
// emulator aborts with a message if one does).
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4],
                                                  const uint32_t b[2], const float c[4]) {
#if LORAFUSE_SM80
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDACC__)
    __trap();
    for (int i = 0; i < 4; ++i) d[i] = c[i];
#else
    ::emu::mma_m16n8k16_bf16(d, a, b, c);
#endif
}

// m16n8k16 on fragments of 16-bit type T (__half or bf16_t): what the fast kernels, templates
// over their storage type, call.
template <typename T>
__device__ __forceinline__ void mma_tile(float d[4], const uint32_t a[4], const uint32_t b[2],
                                         const float c[4]);
template <>
__device__ __forceinline__ void mma_tile<__half>(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4]) {
    mma_m16n8k16(d, a, b, c);
}
template <>
__device__ __forceinline__ void mma_tile<bf16_t>(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4]) {
    mma_m16n8k16_bf16(d, a, b, c);
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

// 16 (or 4) bytes global -> shared without passing through registers; when `valid` is false
// the destination is zero-filled instead (predicated tails). On sm_80 and later a cp.async
// that completes at cp_async_wait_all (or cp_async_wait_group<N>); on sm_75 a plain load and
// store that completes at once, and commit/wait are no-ops. Either way the kernels read what
// other threads copied only after a __syncthreads that follows the wait, and issue a copy
// into a buffer only after the __syncthreads that ends every read of it (a cp.async may land
// at any moment after its issue, so the ordering the async path needs covers the synchronous
// one).
template <int BYTES>
__device__ __forceinline__ void copy_sync(void* smem_dst, const void* gmem_src, bool valid) {
#ifdef __CUDACC__
    if (BYTES == 16) {
        uint4 v = valid ? *static_cast<const uint4*>(gmem_src) : make_uint4(0u, 0u, 0u, 0u);
        *static_cast<uint4*>(smem_dst) = v;
    } else {
        unsigned v = valid ? *static_cast<const unsigned*>(gmem_src) : 0u;
        *static_cast<unsigned*>(smem_dst) = v;
    }
#else
    if (valid)
        std::memcpy(smem_dst, gmem_src, BYTES);
    else
        std::memset(smem_dst, 0, BYTES);
#endif
}
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool valid) {
#if LORAFUSE_SM80
    unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gmem_src),
                 "r"(n));
#else
#ifndef __CUDACC__
    if (::emu::sm() >= 80) ::emu::tally(::emu::CP_ASYNC);
#endif
    copy_sync<16>(smem_dst, gmem_src, valid);
#endif
}
__device__ __forceinline__ void cp_async4(void* smem_dst, const void* gmem_src, bool valid) {
#if LORAFUSE_SM80
    unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(gmem_src),
                 "r"(n));
#else
#ifndef __CUDACC__
    if (::emu::sm() >= 80) ::emu::tally(::emu::CP_ASYNC);
#endif
    copy_sync<4>(smem_dst, gmem_src, valid);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if LORAFUSE_SM80
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if LORAFUSE_SM80
    asm volatile("cp.async.wait_all;\n" ::);
#endif
}
// Waits until at most N of this thread's commit groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
#if LORAFUSE_SM80
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
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
// The same for bf16.
__device__ __forceinline__ uint32_t pack_half2(bf16_t lo, bf16_t hi) {
#ifdef __CUDACC__
    return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) |
           (static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16);
#else
    return uint32_t(lo.bits) | uint32_t(hi.bits) << 16;
#endif
}
