// 2-D convolution (square kernel k, equal stride s and zero padding p on both axes) and its
// input gradient, as implicit GEMMs with f32 accumulation for every storage type.
//
//   conv2d_fwd_T:   x [N, C, H, W], w [O, C, k, k], bias [O] (optional) -> y [N, O, Ho, Wo]
//     y[n, o, oh, ow] = bias[o] + Σ_{c,i,j} w[o, c, i, j] · x[n, c, oh·s + i - p, ow·s + j - p]
//     (x is 0 outside [0, H) x [0, W)); Ho = (H + 2p - k)/s + 1, Wo alike.     (writes y with =)
//   conv2d_dgrad_T: dy [N, O, Ho, Wo], w [O, C, k, k] -> dx [N, C, H, W]
//     dx[n, c, ih, iw] = Σ_{o,i,j} w[o, c, i, j] · dy[n, o, oh, ow]
//     over the (i, j) with ih + p - i = oh·s and iw + p - j = ow·s for some 0 <= oh < Ho,
//     0 <= ow < Wo (a transposed convolution; H and W are given, so both input sizes that
//     map to one Ho under stride 2 are handled, and pixels no window reaches get 0).
//                                                                            (writes dx with =)
// Both are out[img, m, pix] = Σ_kk A(m, kk) · B(kk, img, pix) (+ bias[m]):
//   forward:  m = o, kk = (c, i, j) in C·k·k, A = w viewed as [O, C·k·k], B = im2col of x,
//             pix over Ho·Wo;
//   gradient: m = c, kk = (o, i, j) in O·k·k, A(c, (o, i, j)) = w[o, c, i, j], B = the dy
//             element that (i, j) maps onto input pixel pix (or 0), pix over H·W.
// Grid mapping: blockIdx.x = a tile of 64 output pixels (flattened over N·pixels, so small
// images share tiles), blockIdx.y = a tile of 64 output channels; 256 threads as 16 x 16,
// each accumulating 4 x 4 outputs (channels ty + 16i, pixels tx + 16j). The reduction runs
// in chunks of 32: each thread stages 8 elements of A (64 x 32) and 8 of B (32 x 64) into
// shared memory as f32 (zero beyond K, M and the pixel count), then all 256 multiply the
// tiles. Every output element of the tile inside [M) x [N·pixels) is written once.
//
//   conv2d_wgrad_T: x [N, C, H, W], dy [N, O, Ho, Wo] -> dw [O, C, k, k] in f32 (an adapter's
//     gradient, LoCon's down and up, whatever T is)
//     dw[o, c, i, j] (= or +=) scale · Σ_{n, oh, ow} dy[n, o, oh, ow] · x[n, c, oh·s + i - p, ow·s + j - p]
//     One block of CONV_WG_THREADS per dw element (grid O·C·k·k): each thread sums the pixels
//     q = tid + CONV_WG_THREADS·t of the N·Ho·Wo output grid in order, then a block_sum, so
//     the result is the same on every launch. Reads along a row of dy and x are coalesced.
//     An adapter's dw is small (r·C·k·k or O·r) and its reduction long, hence this shape.
//   conv_mask_mul_T: v ⊙= mask over `count` elements (LoCon's dropout on its hidden).
#include "common.cuh"

// Tiles: CONV_* in tiles.h.

template <typename T, bool GRAD>
__device__ void conv_impl(const T* src, const T* w, const T* bias, T* out, int has_bias, int n,
                          int c, int h, int wd, int o, int k, int ho, int wo, int s, int pad) {
    __shared__ float As[CONV_BK][CONV_BM + 1];  // As[kk][m]; +1: the transposed store
    __shared__ float Bs[CONV_BK][CONV_BN];      // Bs[kk][pix]

    const int kk2 = k * k;
    const int M = GRAD ? c : o;            // output channels of this GEMM
    const int K = (GRAD ? o : c) * kk2;    // reduction length
    const int srcC = GRAD ? o : c;         // channels of the gathered tensor (x or dy)
    const int srcH = GRAD ? ho : h, srcW = GRAD ? wo : wd;
    const int outH = GRAD ? h : ho, outW = GRAD ? wd : wo;
    const int P = outH * outW;             // output pixels per image
    const int NP = n * P;

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * CONV_BM, p0 = blockIdx.x * CONV_BN;

    // The B elements this thread stages: pixel column bc (fixed), rows br + 4r.
    const int bc = tid % CONV_BN, br = tid / CONV_BN;
    const int bp = p0 + bc;
    const bool bp_ok = bp < NP;
    int bimg = 0, by = 0, bx = 0;
    if (bp_ok) {
        bimg = bp / P;
        int rem = bp - bimg * P;
        by = rem / outW;
        bx = rem - by * outW;
    }
    const T* src_img = src + (size_t)bimg * srcC * srcH * srcW;
    // The A elements: reduction column ac (fixed), rows ar + 8r.
    const int ac = tid % CONV_BK, ar = tid / CONV_BK;

    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += CONV_BK) {
        // ---- stage A: As[kk][m] = A(m0 + m, k0 + kk) ----
        {
            const int kk = k0 + ac;
            int oc = 0, rr = 0;
            if (GRAD && kk < K) {
                oc = kk / kk2;
                rr = kk - oc * kk2;
            }
            for (int r = 0; r < CONV_BM * CONV_BK / CONV_THREADS; ++r) {
                const int ml = ar + (CONV_THREADS / CONV_BK) * r;
                const int m = m0 + ml;
                float v = 0.0f;
                if (m < M && kk < K) {
                    if (GRAD)
                        v = to_f32(w[((size_t)oc * c + m) * kk2 + rr]);
                    else
                        v = to_f32(w[(size_t)m * K + kk]);
                }
                As[ac][ml] = v;
            }
        }
        // ---- stage B: Bs[kk][pix] = B(k0 + kk, p0 + pix) ----
        for (int r = 0; r < CONV_BK * CONV_BN / CONV_THREADS; ++r) {
            const int kl = br + (CONV_THREADS / CONV_BN) * r;
            const int kk = k0 + kl;
            float v = 0.0f;
            if (bp_ok && kk < K) {
                const int ch = kk / kk2;
                const int rr = kk - ch * kk2;
                const int i = rr / k, j = rr - (rr / k) * k;
                int sy, sx;
                bool ok;
                if (GRAD) {
                    // input pixel (by, bx) receives dy[oh, ow] through (i, j) when
                    // by + pad - i = oh·s and bx + pad - j = ow·s.
                    const int ty_ = by + pad - i, tx_ = bx + pad - j;
                    ok = ty_ >= 0 && tx_ >= 0 && ty_ % s == 0 && tx_ % s == 0;
                    sy = ok ? ty_ / s : 0;
                    sx = ok ? tx_ / s : 0;
                    ok = ok && sy < srcH && sx < srcW;
                } else {
                    sy = by * s - pad + i;
                    sx = bx * s - pad + j;
                    ok = sy >= 0 && sy < srcH && sx >= 0 && sx < srcW;
                }
                if (ok) v = to_f32(src_img[((size_t)ch * srcH + sy) * srcW + sx]);
            }
            Bs[kl][bc] = v;
        }
        __syncthreads();
        for (int kk = 0; kk < CONV_BK; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }

    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        const float bv = (!GRAD && has_bias) ? to_f32(bias[m]) : 0.0f;
        for (int j = 0; j < 4; ++j) {
            const int p = p0 + tx + 16 * j;
            if (p >= NP) continue;
            const int img = p / P;
            const int rem = p - img * P;
            out[((size_t)img * M + m) * P + rem] = from_f32<T>(acc[i][j] + bv);
        }
    }
}

KERNEL void conv2d_fwd_f32(const float* x, const float* w, const float* bias, float* y,
                           int has_bias, int n, int c, int h, int wd, int o, int k, int ho,
                           int wo, int s, int pad) {
    conv_impl<float, false>(x, w, bias, y, has_bias, n, c, h, wd, o, k, ho, wo, s, pad);
}
KERNEL void conv2d_fwd_f16(const __half* x, const __half* w, const __half* bias, __half* y,
                           int has_bias, int n, int c, int h, int wd, int o, int k, int ho,
                           int wo, int s, int pad) {
    conv_impl<__half, false>(x, w, bias, y, has_bias, n, c, h, wd, o, k, ho, wo, s, pad);
}
KERNEL void conv2d_fwd_bf16(const bf16_t* x, const bf16_t* w, const bf16_t* bias, bf16_t* y,
                            int has_bias, int n, int c, int h, int wd, int o, int k, int ho,
                            int wo, int s, int pad) {
    conv_impl<bf16_t, false>(x, w, bias, y, has_bias, n, c, h, wd, o, k, ho, wo, s, pad);
}
KERNEL void conv2d_dgrad_f32(const float* dy, const float* w, float* dx, int n, int c, int h,
                             int wd, int o, int k, int ho, int wo, int s, int pad) {
    conv_impl<float, true>(dy, w, nullptr, dx, 0, n, c, h, wd, o, k, ho, wo, s, pad);
}
KERNEL void conv2d_dgrad_f16(const __half* dy, const __half* w, __half* dx, int n, int c, int h,
                             int wd, int o, int k, int ho, int wo, int s, int pad) {
    conv_impl<__half, true>(dy, w, nullptr, dx, 0, n, c, h, wd, o, k, ho, wo, s, pad);
}
KERNEL void conv2d_dgrad_bf16(const bf16_t* dy, const bf16_t* w, bf16_t* dx, int n, int c, int h,
                              int wd, int o, int k, int ho, int wo, int s, int pad) {
    conv_impl<bf16_t, true>(dy, w, nullptr, dx, 0, n, c, h, wd, o, k, ho, wo, s, pad);
}

template <typename T>
__device__ void conv_wgrad_impl(const T* x, const T* dy, float* dw, int n, int c, int h, int wd,
                                int o, int k, int ho, int wo, int s, int pad, float scale,
                                int accumulate) {
    __shared__ float scratch[32];
    const int kk2 = k * k;
    const int e = blockIdx.x;  // the dw element (oo, cc, i, j)
    const int oc = e / kk2, ij = e - oc * kk2;
    const int oo = oc / c, cc = oc - oo * c;
    const int i = ij / k, j = ij - i * k;
    const int P = ho * wo;
    const long long NP = (long long)n * P;
    float acc = 0.0f;
    for (long long q = threadIdx.x; q < NP; q += blockDim.x) {
        const int img = (int)(q / P);
        const int rem = (int)(q - (long long)img * P);
        const int oh = rem / wo, ow = rem - (rem / wo) * wo;
        const int ih = oh * s + i - pad, iw = ow * s + j - pad;
        if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
        acc += to_f32(dy[((size_t)img * o + oo) * P + rem]) *
               to_f32(x[(((size_t)img * c + cc) * h + ih) * wd + iw]);
    }
    const float sum = block_sum(acc, scratch);
    if (threadIdx.x == 0) dw[e] = accumulate ? dw[e] + scale * sum : scale * sum;
}

KERNEL void conv2d_wgrad_f32(const float* x, const float* dy, float* dw, int n, int c, int h,
                             int wd, int o, int k, int ho, int wo, int s, int pad, float scale,
                             int accumulate) {
    conv_wgrad_impl<float>(x, dy, dw, n, c, h, wd, o, k, ho, wo, s, pad, scale, accumulate);
}
KERNEL void conv2d_wgrad_f16(const __half* x, const __half* dy, float* dw, int n, int c, int h,
                             int wd, int o, int k, int ho, int wo, int s, int pad, float scale,
                             int accumulate) {
    conv_wgrad_impl<__half>(x, dy, dw, n, c, h, wd, o, k, ho, wo, s, pad, scale, accumulate);
}
KERNEL void conv2d_wgrad_bf16(const bf16_t* x, const bf16_t* dy, float* dw, int n, int c, int h,
                              int wd, int o, int k, int ho, int wo, int s, int pad, float scale,
                              int accumulate) {
    conv_wgrad_impl<bf16_t>(x, dy, dw, n, c, h, wd, o, k, ho, wo, s, pad, scale, accumulate);
}

template <typename T>
__device__ void conv_mask_mul_impl(T* v, const T* mask, int count) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < count) v[idx] = from_f32<T>(to_f32(v[idx]) * to_f32(mask[idx]));
}
KERNEL void conv_mask_mul_f32(float* v, const float* mask, int count) {
    conv_mask_mul_impl<float>(v, mask, count);
}
KERNEL void conv_mask_mul_f16(__half* v, const __half* mask, int count) {
    conv_mask_mul_impl<__half>(v, mask, count);
}
KERNEL void conv_mask_mul_bf16(bf16_t* v, const bf16_t* mask, int count) {
    conv_mask_mul_impl<bf16_t>(v, mask, count);
}
