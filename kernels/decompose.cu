// DoRA's weight decomposition (src/lora/dora.rs) of W' [rows, n], f32 only (the adapters'
// dtype). One block per row (blockDim.x a multiple of 32), a strided loop over the row, one
// block_sum; the same maths as src/backend/cpu/decompose.rs:
//
//   weight_decompose_f32:          norm[i] = sqrt(Σ_c w²), v = w · m[i] / (norm[i] + eps)
//   weight_decompose_backward_f32: r = Σ_c g·w, ν = norm[i] + eps, dm[i] = r / ν,
//                                  dw = (m[i] / ν) · (g − r·w / (ν·norm[i]))  (0 when norm = 0)
//
// Every output element is written with `=`.
#include "common.cuh"

KERNEL void weight_decompose_f32(const float* w, const float* m, float* v, float* norm,
                                 float eps, int n) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const float* wr = w + row * (size_t)n;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) acc += wr[c] * wr[c];
    const float nr = sqrtf(block_sum(acc, scratch));
    if (threadIdx.x == 0) norm[row] = nr;
    const float s = m[row] / (nr + eps);
    float* vr = v + row * (size_t)n;
    for (int c = threadIdx.x; c < n; c += blockDim.x) vr[c] = wr[c] * s;
}

KERNEL void weight_decompose_backward_f32(const float* g, const float* w, const float* m,
                                          const float* norm, float* dw, float* dm, float eps,
                                          int n) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const float* gr = g + row * (size_t)n;
    const float* wr = w + row * (size_t)n;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) acc += gr[c] * wr[c];
    const float r = block_sum(acc, scratch);
    const float nr = norm[row], nu = nr + eps;
    if (threadIdx.x == 0) dm[row] = r / nu;
    const float a = m[row] / nu;
    const float b = nr > 0.0f ? r / (nu * nr) : 0.0f;
    float* dr = dw + row * (size_t)n;
    for (int c = threadIdx.x; c < n; c += blockDim.x) dr[c] = a * (gr[c] - b * wr[c]);
}
