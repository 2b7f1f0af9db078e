// Diffusion-specific pointwise kernels and the MSE loss. One thread per element, 1-D grids
// (the loss: a 2-D grid of (chunk, sample) blocks), tails guarded. f32 math.
//
//   timestep_embedding_T: out[r, i] = first(t[r]·freq[i]), out[r, half+i] = second(..) for
//                         i < half, with (first, second) = (cos, sin) when flip, else (sin, cos);
//                         out[r, 2·half] = 0 when dim is odd. freq [half] f32 comes from the host
//                         (computed in f64 there, as the CPU backend does). Writes out with =.
//   add_noise_T:          y[s, j] = a[s]·x[s, j] + b[s]·z[s, j]; a, b [N] f32.
//   gaussian_sample_T:    y = scale·(mean + exp(clamp(logvar, -30, 20)/2)·noise), or
//                         scale·mean without noise.
//   mse_T:                per sample s of pred/target [N, per]: grad[s, j] = coef[s]·(p - t) (=),
//                         partial[s, chunk] = Σ (p - t)² over the chunk's elements (=); the host
//                         adds the partials in f64. Block (256 threads) = one chunk of
//                         MSE_CHUNK elements of one sample; grid (chunks, N).
#include "common.cuh"

template <typename T>
__device__ void timestep_embedding_impl(const T* t, const float* freq, T* out, int rows, int dim,
                                        int half, int flip) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * dim) return;
    int r = idx / dim, c = idx % dim;
    float v = 0.0f;
    if (c < 2 * half) {
        int i = c < half ? c : c - half;
        float arg = to_f32(t[r]) * freq[i];
        bool first = c < half;
        bool use_cos = flip ? first : !first;
        v = use_cos ? cosf(arg) : sinf(arg);
    }
    out[idx] = from_f32<T>(v);
}
KERNEL void timestep_embedding_f32(const float* t, const float* freq, float* out, int rows,
                                   int dim, int half, int flip) {
    timestep_embedding_impl(t, freq, out, rows, dim, half, flip);
}
KERNEL void timestep_embedding_f16(const __half* t, const float* freq, __half* out, int rows,
                                   int dim, int half, int flip) {
    timestep_embedding_impl(t, freq, out, rows, dim, half, flip);
}
KERNEL void timestep_embedding_bf16(const bf16_t* t, const float* freq, bf16_t* out, int rows,
                                    int dim, int half, int flip) {
    timestep_embedding_impl(t, freq, out, rows, dim, half, flip);
}

template <typename T>
__device__ void add_noise_impl(const T* x, const T* z, const float* a, const float* b, T* y,
                               int per, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int s = i / per;
    y[i] = from_f32<T>(a[s] * to_f32(x[i]) + b[s] * to_f32(z[i]));
}
KERNEL void add_noise_f32(const float* x, const float* z, const float* a, const float* b,
                          float* y, int per, int n) {
    add_noise_impl(x, z, a, b, y, per, n);
}
KERNEL void add_noise_f16(const __half* x, const __half* z, const float* a, const float* b,
                          __half* y, int per, int n) {
    add_noise_impl(x, z, a, b, y, per, n);
}
KERNEL void add_noise_bf16(const bf16_t* x, const bf16_t* z, const float* a, const float* b,
                           bf16_t* y, int per, int n) {
    add_noise_impl(x, z, a, b, y, per, n);
}

template <typename T>
__device__ void gaussian_sample_impl(const T* mean, const T* logvar, const T* noise, T* y,
                                     float scale, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float m = to_f32(mean[i]);
    if (noise) {
        float l = fminf(fmaxf(to_f32(logvar[i]), -30.0f), 20.0f);
        m += expf(0.5f * l) * to_f32(noise[i]);
    }
    y[i] = from_f32<T>(scale * m);
}
KERNEL void gaussian_sample_f32(const float* mean, const float* logvar, const float* noise,
                                float* y, float scale, int n) {
    gaussian_sample_impl(mean, logvar, noise, y, scale, n);
}
KERNEL void gaussian_sample_f16(const __half* mean, const __half* logvar, const __half* noise,
                                __half* y, float scale, int n) {
    gaussian_sample_impl(mean, logvar, noise, y, scale, n);
}
KERNEL void gaussian_sample_bf16(const bf16_t* mean, const bf16_t* logvar, const bf16_t* noise,
                                 bf16_t* y, float scale, int n) {
    gaussian_sample_impl(mean, logvar, noise, y, scale, n);
}

// MSE_CHUNK in tiles.h.

template <typename T>
__device__ void mse_impl(const T* pred, const T* target, const float* coef, T* grad,
                         float* partial, int per) {
    __shared__ float scratch[32];
    int s = blockIdx.y, chunk = blockIdx.x;
    size_t base = (size_t)s * per;
    int lo = chunk * MSE_CHUNK, hi = min(per, lo + MSE_CHUNK);
    float c = coef[s], acc = 0.0f;
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        float d = to_f32(pred[base + j]) - to_f32(target[base + j]);
        acc += d * d;
        grad[base + j] = from_f32<T>(c * d);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[(size_t)s * gridDim.x + chunk] = acc;
}
KERNEL void mse_f32(const float* pred, const float* target, const float* coef, float* grad,
                    float* partial, int per) {
    mse_impl(pred, target, coef, grad, partial, per);
}
KERNEL void mse_f16(const __half* pred, const __half* target, const float* coef, __half* grad,
                    float* partial, int per) {
    mse_impl(pred, target, coef, grad, partial, per);
}
KERNEL void mse_bf16(const bf16_t* pred, const bf16_t* target, const float* coef, bf16_t* grad,
                     float* partial, int per) {
    mse_impl(pred, target, coef, grad, partial, per);
}
