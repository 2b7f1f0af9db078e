// Elementwise ops and casts. One thread per element, 1-D grid of ceil(n / blockDim.x) blocks,
// the tail guarded by `i < n`. f32 math for every storage type (f32, f16, bf16).
//
//   add_T:              y[i] = a[i] + b[i]                       (writes y with =)
//   add_assign_T:       a[i] += b[i]                             (reads and writes a)
//   scale_T:            y[i] = s * x[i]
//   mul_T:              y[i] = a[i] * b[i]
//   add_channel_bias_T: y[i] = x[i] + bias[i / plane]            (x [N, C, plane], bias [N, C])
//   cast_A_B:           y[i] = x[i] converted from A to B (f32 <-> f16, f32 <-> bf16;
//                       round to nearest even)
#include "common.cuh"

template <typename T>
__device__ void add_impl(const T* a, const T* b, T* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}
KERNEL void add_f32(const float* a, const float* b, float* y, int n) { add_impl(a, b, y, n); }
KERNEL void add_f16(const __half* a, const __half* b, __half* y, int n) { add_impl(a, b, y, n); }
KERNEL void add_bf16(const bf16_t* a, const bf16_t* b, bf16_t* y, int n) { add_impl(a, b, y, n); }

template <typename T>
__device__ void mul_impl(const T* a, const T* b, T* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(to_f32(a[i]) * to_f32(b[i]));
}
KERNEL void mul_f32(const float* a, const float* b, float* y, int n) { mul_impl(a, b, y, n); }
KERNEL void mul_f16(const __half* a, const __half* b, __half* y, int n) { mul_impl(a, b, y, n); }
KERNEL void mul_bf16(const bf16_t* a, const bf16_t* b, bf16_t* y, int n) { mul_impl(a, b, y, n); }

template <typename T>
__device__ void add_assign_impl(T* a, const T* b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}
KERNEL void add_assign_f32(float* a, const float* b, int n) { add_assign_impl(a, b, n); }
KERNEL void add_assign_f16(__half* a, const __half* b, int n) { add_assign_impl(a, b, n); }
KERNEL void add_assign_bf16(bf16_t* a, const bf16_t* b, int n) { add_assign_impl(a, b, n); }

template <typename T>
__device__ void scale_impl(const T* x, T* y, float s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(s * to_f32(x[i]));
}
KERNEL void scale_f32(const float* x, float* y, float s, int n) { scale_impl(x, y, s, n); }
KERNEL void scale_f16(const __half* x, __half* y, float s, int n) { scale_impl(x, y, s, n); }
KERNEL void scale_bf16(const bf16_t* x, bf16_t* y, float s, int n) { scale_impl(x, y, s, n); }

template <typename T>
__device__ void add_channel_bias_impl(const T* x, const T* bias, T* y, int plane, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(to_f32(x[i]) + to_f32(bias[i / plane]));
}
KERNEL void add_channel_bias_f32(const float* x, const float* bias, float* y, int plane, int n) {
    add_channel_bias_impl(x, bias, y, plane, n);
}
KERNEL void add_channel_bias_f16(const __half* x, const __half* bias, __half* y, int plane,
                                 int n) {
    add_channel_bias_impl(x, bias, y, plane, n);
}
KERNEL void add_channel_bias_bf16(const bf16_t* x, const bf16_t* bias, bf16_t* y, int plane,
                                  int n) {
    add_channel_bias_impl(x, bias, y, plane, n);
}

// y = x converted through f32 (exact for every source type; rounding to nearest even into
// 16-bit types).
template <typename TI, typename TO>
__device__ void cast_impl(const TI* x, TO* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<TO>(to_f32(x[i]));
}
KERNEL void cast_f32_f16(const float* x, __half* y, int n) { cast_impl(x, y, n); }
KERNEL void cast_f16_f32(const __half* x, float* y, int n) { cast_impl(x, y, n); }
KERNEL void cast_f32_bf16(const float* x, bf16_t* y, int n) { cast_impl(x, y, n); }
KERNEL void cast_bf16_f32(const bf16_t* x, float* y, int n) { cast_impl(x, y, n); }
