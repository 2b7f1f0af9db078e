// bitsandbytes' 8-bit blockwise optimizers on the flat f32 parameter buffer: the formulas,
// constants and order of operations of src/backend/cpu/optim8.rs (the reference), the
// quantisation search of src/backend/quant.rs. One block of QUANT_BLOCK threads per
// quantisation block, one parameter per thread (the last block partial); the maps (256 f32
// each, sorted) are read into shared memory.
//
//   adamw8bit_f32: codes cm (signed map q1), cv (unsigned map q2), absmax am, av per block:
//                  m = q1[cm]·am, v = q2[cv]·av; for a finite grad g = grad·gs,
//                  v = v·b2 + (c2·g)·g, m = m·b1 + c1·g (else m = v = 0); am, av = block max of
//                  |m|, |v|; p = (p + step·(m / (sqrt(v) + eps)))·decay for a finite grad;
//                  cm = quantize_signed(m, am), cv = quantize(v / av). Reads grad; p, cm, cv,
//                  am, av in place.
//   lion8bit_f32:  p = p·decay, m = q1[cm]·am, u = lr·sign(m·b1 + c1·g), m = m·b2 + c2·g,
//                  am = block max |m|, p = p − u, cm = quantize_signed(m, am).
#include "common.cuh"

// QUANT_BLOCK in tiles.h.

// bitsandbytes' quantize_2D: the code of x in the sorted map (pivots map[63], map[127],
// map[191] first), the nearer neighbour by the midpoint.
__device__ unsigned char quantize_code(const float* map, bool is_signed, float x) {
    const float quadrants[3] = {map[63], map[127], map[191]};
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = is_signed ? -1.0f : 0.0f, upper = 1.0f;
    float val = quadrants[1];
    int local_pivot = 1, offset = 1;
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
            local_pivot += offset;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
            local_pivot -= offset;
        }
        val = i >= 64 ? quadrants[local_pivot] : map[pivot];
        offset -= 1;
    }
    if (x > val) return (unsigned char)(x > (upper + val) * 0.5f ? upper_pivot : pivot);
    return (unsigned char)(x < (lower + val) * 0.5f ? lower_pivot : pivot);
}

// The signed code of s / absmax, moved one step towards s when its sign came out wrong.
__device__ unsigned char quantize_signed_code(const float* map, float s, float absmax) {
    unsigned char c = quantize_code(map, true, s / absmax);
    if (signbit(map[c]) != signbit(s)) c = (unsigned char)(s > 0.0f ? c + 1 : c - 1);
    return c;
}

__device__ __forceinline__ float sign_f32(float x) {
    return (float)((0.0f < x) - (x < 0.0f));
}

KERNEL void adamw8bit_f32(float* p, const float* grad, unsigned char* cm, unsigned char* cv,
                          float* am, float* av, const float* q1, const float* q2, float b1,
                          float b2, float c1, float c2, float step, float eps, float decay,
                          float gs, int n) {
    __shared__ float map1[256], map2[256];
    __shared__ float scratch[32];
    const int t = threadIdx.x;
    map1[t] = q1[t];
    map2[t] = q2[t];
    __syncthreads();
    const long long i = (long long)blockIdx.x * QUANT_BLOCK + t;
    const bool valid = i < n;
    float g = valid ? grad[i] : 0.0f;
    const bool finite = valid && isfinite(g);
    float m = 0.0f, v = 0.0f;
    if (finite) {
        g *= gs;
        v = map2[cv[i]] * av[blockIdx.x];
        v = v * b2 + c2 * g * g;
        m = map1[cm[i]] * am[blockIdx.x];
        m = m * b1 + c1 * g;
    }
    // Absent threads add nothing (|0| never exceeds a present value's).
    const float max1 = block_max(valid ? fabsf(m) : -INFINITY, scratch);
    const float max2 = block_max(valid ? fabsf(v) : -INFINITY, scratch);
    if (t == 0) {
        am[blockIdx.x] = max1;
        av[blockIdx.x] = max2;
    }
    if (!valid) return;
    if (finite) {
        float pi = p[i];
        pi += step * (m / (sqrtf(v) + eps));
        p[i] = pi * decay;
    }
    cm[i] = quantize_signed_code(map1, m, max1);
    cv[i] = quantize_code(map2, false, v / max2);
}

KERNEL void lion8bit_f32(float* p, const float* grad, unsigned char* cm, float* am,
                         const float* q1, float b1, float b2, float c1, float c2, float lr,
                         float decay, float gs, int n) {
    __shared__ float map1[256];
    __shared__ float scratch[32];
    const int t = threadIdx.x;
    map1[t] = q1[t];
    __syncthreads();
    const long long i = (long long)blockIdx.x * QUANT_BLOCK + t;
    const bool valid = i < n;
    float m = 0.0f, pi = 0.0f, u = 0.0f;
    if (valid) {
        const float g = grad[i] * gs;
        pi = p[i] * decay;
        m = map1[cm[i]] * am[blockIdx.x];
        u = lr * sign_f32(m * b1 + c1 * g);
        m = m * b2 + c2 * g;
    }
    const float max1 = block_max(valid ? fabsf(m) : -INFINITY, scratch);
    if (t == 0) am[blockIdx.x] = max1;
    if (!valid) return;
    p[i] = pi - u;
    cm[i] = quantize_signed_code(map1, m, max1);
}
