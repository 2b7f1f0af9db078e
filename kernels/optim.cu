// The optimizer's kernels on the flat f32 buffers of all LoRA parameters.
//
//   sum_squares_T: partial[b] = Σ x² over block b's chunk of SQ_CHUNK elements, accumulated in
//                  f64 (so a large but finite gradient never overflows into a false "overflow");
//                  the host adds the partials in order: deterministic. Block 256 threads, grid
//                  ceil(n / SQ_CHUNK). Writes partial with =.
//   adamw_f32:     PyTorch's AdamW with decoupled weight decay, one thread per 4 parameters
//                  (float4 loads and stores) plus one per tail element:
//                  g = grad·gs (gs = 1/loss_scale × clip coefficient), m = b1·m + (1-b1)·g,
//                  v = b2·v + (1-b2)·g², p = p·decay − step·m / (sqrt(v)·rbc2 + eps),
//                  decay = 1 − lr·wd, step = lr / (1 − b1^t), rbc2 = 1/sqrt(1 − b2^t).
//                  Reads grad, reads and writes p, m, v in place.
//   lion_f32:      lion-pytorch's Lion, one thread per parameter: g = grad·gs,
//                  c = b1·m + c1·g, p = p·decay − lr·sign(c), m = b2·m + c2·g
//                  (c1 = 1 − b1, c2 = 1 − b2, decay = 1 − lr·wd). Reads grad; p, m in place.
//   sgd_nesterov_f32: torch SGD(nesterov=True, dampening=0), one thread per parameter:
//                  g = grad·gs + wd·p, b = mu·b + g, p = p − lr·(g + mu·b). p, b in place.
//   prodigy_moments_f32: prodigyopt's first pass, one block per SQ_CHUNK elements (as
//                  sum_squares): g = grad·gs + coupled·p, m = b1·m + c1·g, v = b2·v + c2·g²,
//                  s = b3·s + cs·g (c1 = d(1−b1), c2 = d²(1−b2), cs = the s scale), and
//                  partial[2b] = Σ g·(p0 − p), partial[2b+1] = Σ |s| over the block in f64
//                  (the host adds the partials in order). Reads p, p0, grad; m, v, s in place.
//   prodigy_update_f32: p = p·decay − dlr·m / (sqrt(v) + d_eps), one thread per parameter.
//   dadapt_moments_f32: dadaptation's DAdaptAdam first pass, blocks as prodigy_moments_f32:
//                  g = grad·gs + coupled·p, partial[2b] = Σ g·(s / (sqrt(v) + eps)) with the old
//                  s, v; m = b1·m + c1·g, v = b2·v + c2·g², s = sb2·s + cs·g (c1 = dlr(1−b1),
//                  c2 = 1−b2, sb2 = sqrt(b2), cs = dlr(1−sb2)), partial[2b+1] = Σ |s| (new s).
//                  Reads p, grad; m, v, s in place. Its second pass is prodigy_update_f32.
#include "common.cuh"

// SQ_CHUNK in tiles.h.

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The two block sums of the moments passes into partial[2b], partial[2b+1] (all threads call).
__device__ void store_pair_sums(double a, double b, double* partial) {
    __shared__ double scratch[2][32];
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = (blockDim.x + 31u) >> 5;
    a = warp_sum_f64(a);
    b = warp_sum_f64(b);
    if (lane == 0) {
        scratch[0][warp] = a;
        scratch[1][warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        a = lane < warps ? scratch[0][lane] : 0.0;
        b = lane < warps ? scratch[1][lane] : 0.0;
        a = warp_sum_f64(a);
        b = warp_sum_f64(b);
        if (lane == 0) {
            partial[2 * blockIdx.x] = a;
            partial[2 * blockIdx.x + 1] = b;
        }
    }
}

template <typename T>
__device__ void sum_squares_impl(const T* x, double* partial, int n) {
    __shared__ double scratch[32];
    int lo = blockIdx.x * SQ_CHUNK, hi = min(n, lo + SQ_CHUNK);
    double acc = 0.0;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double v = to_f32(x[i]);
        acc += v * v;
    }
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = (blockDim.x + 31u) >> 5;
    acc = warp_sum_f64(acc);
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        double t = lane < warps ? scratch[lane] : 0.0;
        t = warp_sum_f64(t);
        if (lane == 0) partial[blockIdx.x] = t;
    }
}
KERNEL void sum_squares_f32(const float* x, double* partial, int n) {
    sum_squares_impl(x, partial, n);
}
KERNEL void sum_squares_f16(const __half* x, double* partial, int n) {
    sum_squares_impl(x, partial, n);
}
KERNEL void sum_squares_bf16(const bf16_t* x, double* partial, int n) {
    sum_squares_impl(x, partial, n);
}

// One parameter's update (the formula in the header; the CPU backend's order of operations).
__device__ __forceinline__ void adamw_one(float& p, float grad, float& m, float& v, float b1,
                                          float b2, float c1, float c2, float eps, float decay,
                                          float step, float rbc2, float gs) {
    const float g = grad * gs;
    const float mi = b1 * m + c1 * g;
    const float vi = b2 * v + c2 * g * g;
    m = mi;
    v = vi;
    p = p * decay - step * mi / (sqrtf(vi) * rbc2 + eps);
}

// Grid: n4 + (n - 4·n4) threads, n4 = n / 4 (host: one thread per float4 plus one per tail
// element). Thread t < n4 updates elements 4t..4t+3 through float4 loads and stores when all
// four buffers are 16-byte aligned (pool buffers are; otherwise it loads them one by one);
// thread n4 + j updates tail element 4·n4 + j. Same formula per element either way.
KERNEL void adamw_f32(float* p, const float* grad, float* m, float* v, float b1, float b2,
                      float c1, float c2, float eps, float decay, float step, float rbc2,
                      float gs, int n) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n4 = n / 4;
    if (t < n4) {
        const bool vec = ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(grad) |
                           reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v)) &
                          15u) == 0;
        const long long i = 4 * t;
        if (vec) {
            float4 pp = *reinterpret_cast<const float4*>(p + i);
            const float4 gg = *reinterpret_cast<const float4*>(grad + i);
            float4 mm = *reinterpret_cast<const float4*>(m + i);
            float4 vv = *reinterpret_cast<const float4*>(v + i);
            adamw_one(pp.x, gg.x, mm.x, vv.x, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            adamw_one(pp.y, gg.y, mm.y, vv.y, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            adamw_one(pp.z, gg.z, mm.z, vv.z, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            adamw_one(pp.w, gg.w, mm.w, vv.w, b1, b2, c1, c2, eps, decay, step, rbc2, gs);
            *reinterpret_cast<float4*>(p + i) = pp;
            *reinterpret_cast<float4*>(m + i) = mm;
            *reinterpret_cast<float4*>(v + i) = vv;
        } else {
            for (long long j = i; j < i + 4; ++j)
                adamw_one(p[j], grad[j], m[j], v[j], b1, b2, c1, c2, eps, decay, step, rbc2, gs);
        }
    } else {
        const long long j = 4 * n4 + (t - n4);
        if (j < n)
            adamw_one(p[j], grad[j], m[j], v[j], b1, b2, c1, c2, eps, decay, step, rbc2, gs);
    }
}

__device__ __forceinline__ float sign_f32(float x) {
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}

KERNEL void lion_f32(float* p, const float* grad, float* m, float b1, float b2, float c1,
                     float c2, float decay, float lr, float gs, int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grad[i] * gs;
    const float mi = m[i];
    const float c = b1 * mi + c1 * g;
    p[i] = p[i] * decay - lr * sign_f32(c);
    m[i] = b2 * mi + c2 * g;
}

KERNEL void sgd_nesterov_f32(float* p, const float* grad, float* buf, float mu, float wd,
                             float lr, float gs, int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float pi = p[i];
    const float g = grad[i] * gs + wd * pi;
    const float b = mu * buf[i] + g;
    buf[i] = b;
    p[i] = pi - lr * (g + mu * b);
}

KERNEL void prodigy_moments_f32(const float* p, const float* p0, const float* grad, float* m,
                                float* v, float* s, double* partial, float b1, float b2,
                                float b3, float c1, float c2, float cs, float coupled, float gs,
                                int n) {
    int lo = blockIdx.x * SQ_CHUNK, hi = min(n, lo + SQ_CHUNK);
    double dot = 0.0, abs_s = 0.0;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float pi = p[i];
        const float g = grad[i] * gs + coupled * pi;
        dot += (double)g * (double)(p0[i] - pi);
        m[i] = b1 * m[i] + c1 * g;
        v[i] = b2 * v[i] + c2 * g * g;
        const float si = b3 * s[i] + cs * g;
        s[i] = si;
        abs_s += (double)fabsf(si);
    }
    store_pair_sums(dot, abs_s, partial);
}

KERNEL void prodigy_update_f32(float* p, const float* m, const float* v, float decay, float dlr,
                               float d_eps, int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    p[i] = p[i] * decay - dlr * m[i] / (sqrtf(v[i]) + d_eps);
}

KERNEL void dadapt_moments_f32(const float* p, const float* grad, float* m, float* v, float* s,
                               double* partial, float b1, float b2, float sb2, float c1,
                               float c2, float cs, float eps, float coupled, float gs, int n) {
    int lo = blockIdx.x * SQ_CHUNK, hi = min(n, lo + SQ_CHUNK);
    double dot = 0.0, abs_s = 0.0;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float g = grad[i] * gs + coupled * p[i];
        const float vi = v[i], si = s[i];
        dot += (double)g * (double)(si / (sqrtf(vi) + eps));
        m[i] = b1 * m[i] + c1 * g;
        v[i] = b2 * vi + c2 * g * g;
        const float sn = sb2 * si + cs * g;
        s[i] = sn;
        abs_s += (double)fabsf(sn);
    }
    store_pair_sums(dot, abs_s, partial);
}
