// The kernel emulator's device model, for building kernels/*.cu with the host C++ compiler
// (feature `cuda-emu`). Included by common.cuh when __CUDACC__ is not defined; kernels never
// include it directly.
//
// Model: one launch at a time (a process-wide lock); the blocks of the grid are shared out to
// one OS worker thread per core, and on its worker the threads of a block are fibers (their own
// stacks, switched by the runtime). A fiber runs until it reaches a barrier: `__syncthreads`
// (all live threads of the block), or a warp exchange (shuffles, ballots, and the tensor-core
// and ldmatrix wrappers, all live lanes of the warp); a thread that returns leaves both, as on
// the GPU. Threads run in ascending order in even blocks and descending order in odd ones, so a
// read that lacks its barrier sees unwritten (poisoned) data in one of the two; with
// LORAFUSE_EMU_TSAN the fibers are ThreadSanitizer fibers and barriers its only
// synchronisation, so such a read is reported as a data race. A barrier that not every live
// thread reaches is a deadlock on the GPU and an abort with a message here. `__shared__`
// variables are thread_local function statics: one copy per worker, which is sound because a
// worker runs one block at a time. Dynamic shared memory is one buffer per worker, filled with
// 0xFF (NaN in f16 and f32) before each block so that a read of an unwritten element shows.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

struct dim3 {
    unsigned int x, y, z;
};

namespace emu {

struct Block;

// What a thread of the emulated block knows about itself.
struct Thread {
    dim3 tid, bid, bdim, gdim;
    unsigned linear;  // threadIdx flattened, x fastest
    Block* block;
};

// The fiber running on this worker.
extern thread_local Thread* current;
// Read through a relaxed atomic: the scheduler sets it before resuming each fiber.
inline Thread* cur() { return __atomic_load_n(&current, __ATOMIC_RELAXED); }

void syncthreads();
void* dyn_smem();
// The bytes each lane's slot of a warp exchange holds.
constexpr size_t WARP_SLOT = 64;
// Every live lane of the calling warp deposits `bytes` (at most WARP_SLOT) bytes; returns the
// warp's 32 slots, lane i's at i·WARP_SLOT (a lane that is not live leaves its slot
// unspecified). They stay readable until the calling lane's next exchange but one.
const unsigned char* warp_exchange(const void* mine, size_t bytes);
// The same, and the last live lane to arrive runs `combine(slots, out)` once for the whole
// warp before any lane goes on; returns `out` (32 slots of WARP_SLOT bytes, as readable as the
// slots). For the instructions every lane must execute together (mma.sync): the warp's
// result is computed once instead of once per lane.
const unsigned char* warp_combine(const void* mine, size_t bytes,
                                  void (*combine)(const unsigned char* slots, unsigned char* out));

inline unsigned lane() { return cur()->linear & 31u; }

template <typename T>
T shfl(T v, int src) {
    static_assert(sizeof(T) <= WARP_SLOT, "a shuffled value fits a warp slot");
    const unsigned char* slots = warp_exchange(&v, sizeof(T));
    T r;
    std::memcpy(&r, slots + size_t(src & 31) * WARP_SLOT, sizeof(T));
    return r;
}

}  // namespace emu

#define threadIdx (::emu::cur()->tid)
#define blockIdx (::emu::cur()->bid)
#define blockDim (::emu::cur()->bdim)
#define gridDim (::emu::cur()->gdim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

inline void __syncthreads() { ::emu::syncthreads(); }

// ---- warp-level primitives (the mask is ignored: kernels always pass the full warp) ----

template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int base = int(::emu::lane()) / width * width;
    return ::emu::shfl(v, base + (src % width));
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int l = int(::emu::lane());
    int src = l ^ mask;
    if (src / width != l / width) src = l;
    return ::emu::shfl(v, src);
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int l = int(::emu::lane());
    int src = l + int(delta);
    if (src / width != l / width) src = l;
    return ::emu::shfl(v, src);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    int l = int(::emu::lane());
    int src = l - int(delta);
    if (src < 0 || src / width != l / width) src = l;
    return ::emu::shfl(v, src);
}
inline unsigned __ballot_sync(unsigned, int pred) {
    int mine = pred ? 1 : 0;
    const unsigned char* slots = ::emu::warp_exchange(&mine, sizeof(int));
    unsigned bits = 0;
    const ::emu::Thread& t = *::emu::cur();
    unsigned live = t.bdim.x * t.bdim.y * t.bdim.z - (t.linear & ~31u);
    for (unsigned i = 0; i < 32 && i < live; ++i) {
        int v;
        std::memcpy(&v, slots + i * ::emu::WARP_SLOT, sizeof(int));
        if (v) bits |= 1u << i;
    }
    return bits;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }

// ---- atomics (GCC builtins: sequentially consistent, visible to ThreadSanitizer) ----

inline float atomicAdd(float* p, float v) {
    uint32_t* u = reinterpret_cast<uint32_t*>(p);
    uint32_t old = __atomic_load_n(u, __ATOMIC_SEQ_CST);
    for (;;) {
        float f;
        std::memcpy(&f, &old, 4);
        f += v;
        uint32_t nw;
        std::memcpy(&nw, &f, 4);
        if (__atomic_compare_exchange_n(u, &old, nw, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            std::memcpy(&f, &old, 4);
            return f;
        }
    }
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline int atomicMax(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST,
                                                   __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }

// ---- math intrinsics the kernels use ----

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
using std::isfinite;
using std::signbit;
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }

// ---- vector types ----

struct float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ---- half precision: IEEE binary16 with round-to-nearest-even conversions ----

struct __half {
    uint16_t bits;
};
struct alignas(4) __half2 {
    __half x, y;
};

inline float __half2float(__half h) {
    uint32_t s = uint32_t(h.bits & 0x8000u) << 16;
    uint32_t e = (h.bits >> 10) & 0x1fu;
    uint32_t m = h.bits & 0x3ffu;
    uint32_t u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else {  // subnormal: normalise
            int sh = 0;
            while (!(m & 0x400u)) {
                m <<= 1;
                ++sh;
            }
            m &= 0x3ffu;
            u = s | uint32_t(127 - 15 - sh + 1) << 23 | m << 13;
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | m << 13;
    } else {
        u = s | (e + 112u) << 23 | m << 13;
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint16_t s = uint16_t((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    __half h;
    if (a > 0x7f800000u) {  // NaN: keep it quiet
        h.bits = uint16_t(s | 0x7e00u | ((a >> 13) & 0x3ffu));
        return h;
    }
    if (a >= 0x477ff000u) {  // rounds to >= 65520: infinity
        h.bits = uint16_t(s | 0x7c00u);
        return h;
    }
    if (a < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        if (a < 0x33000000u) {
            h.bits = s;
            return h;
        }
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;  // 14 - (e - 127) + 13 - 1 ... mantissa to 10-bit subnormal
        uint32_t q = m >> (shift);
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half_ulp = 1u << (shift - 1);
        if (rem > half_ulp || (rem == half_ulp && (q & 1))) ++q;
        h.bits = uint16_t(s | q);
        return h;
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
    h.bits = uint16_t(s | (r >> 13));
    return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

// ---- bfloat16: f32's sign and exponent with 7 stored mantissa bits (the top half of an f32),
// round-to-nearest-even from f32 ----

struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = uint32_t(h.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet
        h.bits = uint16_t((u >> 16) | 0x0040u);
        return h;
    }
    // Adding 0x7fff plus the kept part's lowest bit rounds half to even; a carry out of the
    // mantissa steps the exponent (and rounds the largest finite values to infinity).
    h.bits = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}

// ---- the target architecture, tensor-core and async-copy instructions (see common.cuh for
// the device side) ----

namespace emu {
// The compute capability the running launch emulates, as major·10 + minor (75, 80, 86, 90):
// the target profile's, passed with each launch. common.cuh's wrappers take the path that
// architecture's PTX takes (on sm_75: m16n8k8 pairs for m16n8k16, synchronous copies for
// cp.async), so the emulator runs each architecture's code.
int sm();
// The instructions the emulator counts per launch (the Rust side reads them back, so tests
// can see which path ran): mma.sync m16n8k16 and m16n8k8 (per warp), cp.async copies (per
// thread; sm_80 and later only).
enum Counted : int { MMA_M16N8K16 = 0, MMA_M16N8K8 = 1, CP_ASYNC = 2, COUNTED = 3 };
void tally(Counted what);
// D = A·B + C for one m16n8k16 tile (f16 inputs, f32 accumulation), per-lane fragments as
// in the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type").
void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
// The same with bf16 inputs (mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32, sm_80 and later:
// the same fragment layout, each 16-bit element a bfloat16); counted as an m16n8k16. Aborts
// when the launch emulates an architecture below sm_80, which has no bf16 mma.
void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
// D = A·B + C for one m16n8k8 tile (f16, f32 accumulation; sm_75's tensor-core shape):
// a[0] holds A[g][2t..2t+1], a[1] A[g+8][2t..2t+1], b B[2t..2t+1][g] (g = lane/4, t = lane%4),
// C and D as for m16n8k16 ("Matrix Fragments for mma.m16n8k8").
void mma_m16n8k8(float d[4], const uint32_t a[2], uint32_t b, const float c[4]);
// ldmatrix .m8n8 .x1/.x2/.x4 (.trans): `row` is this lane's row address.
void ldmatrix(uint32_t* d, int count, const void* row, bool trans);
}  // namespace emu
