// Pointwise activations and GEGLU, forward and input gradient. f32 math for every storage type.
//
//   silu(x)       = x·σ(x)                         silu'(x) = σ(x)·(1 + x·(1 - σ(x)))
//   gelu(x)       = ½x·(1 + erf(x/√2))  (exact)    gelu'(x) = Φ(x) + x·φ(x),
//                                                  Φ(x) = ½(1 + erf(x/√2)), φ(x) = e^(-x²/2)/√(2π)
//   quick_gelu(x) = x·σ(1.702x)  (CLIP)            qg'(x)   = s + 1.702·x·s·(1 - s), s = σ(1.702x)
//   gelu_tanh(x)  = ½x·(1 + tanh u)  (timm)        see gelu_tanh_f below
//   σ(v) = 1 / (1 + e^-v)
//
// <act>_T:          y[i] = act(x[i])                 x, y any shape, n elements (writes y, =)
// <act>_backward_T: dx[i] = dy[i]·act'(x[i])         (from the saved input; writes dx, =)
// geglu_T:          x [rows, 2F] = [h | g] (h the first F, g the last F of each row),
//                   y [rows, F]: y[r, j] = h[r, j]·gelu(g[r, j])          (writes y, =)
// geglu_backward_T: dy [rows, F] -> dx [rows, 2F]:
//                   dx[r, j] = dy·gelu(g),  dx[r, F + j] = dy·h·gelu'(g)  (writes dx, =)
//
// Grid: one thread per element (per output element [r, j] for GEGLU, which writes both halves
// of dx in the backward), 1-D, ceil(n / blockDim.x) blocks, the tail guarded by `i < n`.
#include "common.cuh"

#define ACT_SILU 0
#define ACT_GELU 1
#define ACT_QUICK_GELU 2
#define ACT_GELU_TANH 3

__device__ __forceinline__ float act_sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

__device__ __forceinline__ float gelu_f(float v) {
    return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
}
__device__ __forceinline__ float gelu_grad_f(float v) {
    const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
    return cdf + v * pdf;
}

// tanh GELU: u = √(2/π)·(v + 0.044715v³), ½v·(1 + tanh u); u' = √(2/π)·(1 + 0.134145v²).
__device__ __forceinline__ float gelu_tanh_f(float v) {
    const float u = 0.79788456080286535f * (v + 0.044715f * v * v * v);
    return 0.5f * v * (1.0f + tanhf(u));
}
__device__ __forceinline__ float gelu_tanh_grad_f(float v) {
    const float t = tanhf(0.79788456080286535f * (v + 0.044715f * v * v * v));
    const float du = 0.79788456080286535f * (1.0f + 0.134145f * v * v);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
}

template <int ACT>
__device__ __forceinline__ float act_f(float v) {
    if (ACT == ACT_SILU) return v * act_sigmoid(v);
    if (ACT == ACT_GELU) return gelu_f(v);
    if (ACT == ACT_GELU_TANH) return gelu_tanh_f(v);
    return v * act_sigmoid(1.702f * v);
}
template <int ACT>
__device__ __forceinline__ float act_grad_f(float v) {
    if (ACT == ACT_SILU) {
        const float s = act_sigmoid(v);
        return s * (1.0f + v * (1.0f - s));
    }
    if (ACT == ACT_GELU) return gelu_grad_f(v);
    if (ACT == ACT_GELU_TANH) return gelu_tanh_grad_f(v);
    const float s = act_sigmoid(1.702f * v);
    return s + 1.702f * v * s * (1.0f - s);
}

template <typename T, int ACT>
__device__ void act_forward_impl(const T* __restrict__ x, T* __restrict__ y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(act_f<ACT>(to_f32(x[i])));
}
template <typename T, int ACT>
__device__ void act_backward_impl(const T* __restrict__ dy, const T* __restrict__ x,
                                  T* __restrict__ dx, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = from_f32<T>(to_f32(dy[i]) * act_grad_f<ACT>(to_f32(x[i])));
}

#define ACT_ENTRY_POINTS(name, ACT)                                                          \
    KERNEL void name##_f32(const float* x, float* y, int n) {                                \
        act_forward_impl<float, ACT>(x, y, n);                                               \
    }                                                                                        \
    KERNEL void name##_f16(const __half* x, __half* y, int n) {                              \
        act_forward_impl<__half, ACT>(x, y, n);                                              \
    }                                                                                        \
    KERNEL void name##_bf16(const bf16_t* x, bf16_t* y, int n) {                             \
        act_forward_impl<bf16_t, ACT>(x, y, n);                                              \
    }                                                                                        \
    KERNEL void name##_backward_f32(const float* dy, const float* x, float* dx, int n) {     \
        act_backward_impl<float, ACT>(dy, x, dx, n);                                         \
    }                                                                                        \
    KERNEL void name##_backward_f16(const __half* dy, const __half* x, __half* dx, int n) {  \
        act_backward_impl<__half, ACT>(dy, x, dx, n);                                        \
    }                                                                                        \
    KERNEL void name##_backward_bf16(const bf16_t* dy, const bf16_t* x, bf16_t* dx, int n) { \
        act_backward_impl<bf16_t, ACT>(dy, x, dx, n);                                        \
    }

ACT_ENTRY_POINTS(silu, ACT_SILU)
ACT_ENTRY_POINTS(gelu, ACT_GELU)
ACT_ENTRY_POINTS(quick_gelu, ACT_QUICK_GELU)
ACT_ENTRY_POINTS(gelu_tanh, ACT_GELU_TANH)

// n = rows·F output elements; element i is [r, j] = [i / f, i % f].
template <typename T>
__device__ void geglu_impl(const T* __restrict__ x, T* __restrict__ y, int f, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int r = i / f, j = i - r * f;
    const T* row = x + (long long)r * 2 * f;
    y[i] = from_f32<T>(to_f32(row[j]) * gelu_f(to_f32(row[f + j])));
}
KERNEL void geglu_f32(const float* x, float* y, int f, int n) { geglu_impl(x, y, f, n); }
KERNEL void geglu_f16(const __half* x, __half* y, int f, int n) { geglu_impl(x, y, f, n); }
KERNEL void geglu_bf16(const bf16_t* x, bf16_t* y, int f, int n) { geglu_impl(x, y, f, n); }

template <typename T>
__device__ void geglu_backward_impl(const T* __restrict__ dy, const T* __restrict__ x,
                                    T* __restrict__ dx, int f, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int r = i / f, j = i - r * f;
    const long long base = (long long)r * 2 * f;
    const float d = to_f32(dy[i]);
    const float h = to_f32(x[base + j]);
    const float g = to_f32(x[base + f + j]);
    dx[base + j] = from_f32<T>(d * gelu_f(g));
    dx[base + f + j] = from_f32<T>(d * h * gelu_grad_f(g));
}
KERNEL void geglu_backward_f32(const float* dy, const float* x, float* dx, int f, int n) {
    geglu_backward_impl(dy, x, dx, f, n);
}
KERNEL void geglu_backward_f16(const __half* dy, const __half* x, __half* dx, int f, int n) {
    geglu_backward_impl(dy, x, dx, f, n);
}
KERNEL void geglu_backward_bf16(const bf16_t* dy, const bf16_t* x, bf16_t* dx, int f, int n) {
    geglu_backward_impl(dy, x, dx, f, n);
}
