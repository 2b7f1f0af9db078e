// Fast 2-D convolution, its input gradient and LoCon's fused terms for 16-bit storage (T =
// __half, entry points `_f16`; T = bf16_t, `_bf16`, sm_80 and later): implicit GEMMs on
// tensor cores (mma.sync m16n8k16, 16-bit x 16-bit -> f32, `mma_tile<T>`), fragments through
// ldmatrix from shared memory, no im2col buffer.
// Activations NCHW, weights [O, C, k, k] (PyTorch's). The simple twins are in conv.cu (same
// math, the reference).
//
// One kernel, conv_fast_tYX (taps TY x TX), computes a "generalized convolution" of two
// sources side by side along the reduction into two outputs side by side along the channels:
//   acc[n, m, a, b] = Σ_{ch < cs + cs2, t < TY, u < TX} B[m, ch, t, u]
//                       · S[n, ch, a·sa + oy + t, b·sa + ox + u]      (0 outside [0, hs) x [0, ws))
//   S = src [n, cs, hs, ws] then src2 [n, cs2, hs, ws] (channel ch - cs);
//   B = wt [mo, K] then wt2 [mo2, K] (row m - mo), K = (cs + cs2)·TY·TX, rows (ch, t, u);
//   for a < ha, b < wa and (a', b') = (a·so + ry, b·so + rx):
//   main part, m < mo:         dst[n, m, a', b'] = T(alpha·acc + bias[m])
//                              (accumulate: dst = T(that + dst), a second rounding);
//   hidden part, m - mo < mo2: dst2[n, m - mo, a', b'] = T(alpha·acc) (⊙ mask[n, m - mo, a', b']
//                              with has_mask, a second rounding, as a separate product has).
// Writes exactly those pixels (= or +=, as said).
// As a GEMM: rows = output pixels (n, a, b), M = n·ha·wa; columns = output channels m;
// A(pixel, kk) = the gathered source element (implicit im2col, predicated), B(kk, m) above.
//
//   forward conv2d:  src = x [N, C, H, W], wt = w [O, C, k, k], TY = TX = k, sa = stride,
//                    oy = ox = -pad, so = 1, ry = rx = 0, (ha, wa) = (Ho, Wo), dst = y.
//   input gradient:  dx[n, c, ih, iw] = Σ_{o,i,j} w[o, c, i, j] · dy[n, o, (ih + p - i)/s,
//                    (iw + p - j)/s] over the (i, j) where both divisions are exact and in
//                    range. The input pixels split by residue class (ry, rx) = (ih mod s,
//                    iw mod s); in class ry only the taps i ≡ ry + p (mod s) contribute,
//                    i = i0 + s·t' (i0 = (ry + p) mod s), and (ih + p - i)/s = a + (ry + p -
//                    i0)/s - t' for ih = s·a + ry. So each class is a dense conv of dy (sa = 1)
//                    with its own taps, no multiplication by the zeros a dilated dy would hold:
//                    for stride 1 one class (the flipped, transposed kernel, pad k-1-p); for
//                    stride 2 and k = 3 four classes of 2x2, 2x1, 1x2, 1x1 taps (for p = 1).
//                    conv_fast_wgrad_layout writes each class's weights, taps reversed so
//                    that t counts up: wt_class[c, o, t, u] = w[o, c, i0y + s(TY-1-t),
//                    i0x + s(TX-1-u)], oy = (ry + p - i0y)/s - (TY - 1), ox alike; one launch
//                    per class with so = s. A class without taps (k < s) gets cs = 0 (K = 0):
//                    its pixels are written as 0.
//
// LoCon (a LoRA on the conv: down [r, C, k, k] with the layer's stride and padding, up
// [O, r, 1, 1], scale s, optional dropout mask on the hidden; ops/conv.rs): the forward in
// two launches where the composition takes six (main, down, mask, up, scale, add), the
// backward in one launch for g and one per residue class for dx (plus three layouts) where
// the composition takes three GEMMs (per class), three layouts, mask, scale and add:
//   forward  1. y = conv(x, w) + bias and u = conv(x, down) ⊙ mask: one launch, wt = w
//               (mo = O) and wt2 = down (mo2 = r) side by side, both outputs written (x is
//               gathered by one launch, the down rows share a channel tile with w's last
//               rows when O is not a multiple of 64; the composed path's down conv is a
//               separate launch of few blocks, each with the main conv's whole reduction:
//               at 16x16 and below a serial step about as long as the main conv, now run
//               beside it; reasoned, not measured).
//            2. y += s·conv1x1(u, up): the pointwise conv, alpha = s, accumulate.
//   backward 1. g = convᵀ1x1(dy, up) ⊙ mask (the hidden's gradient, saved for d(down)): the
//               1x1 input gradient written as the hidden part (mo = 0, mo2 = r) with the mask.
//            2. dx = convᵀ(dy, w) + s·convᵀ(g, down): per residue class one launch over the
//               concatenated reduction, src = dy (cs = O), src2 = g (cs2 = r), the class
//               weights [C, O + r, ty, tx] with s·down in rows O.. (conv_fast_wgrad_layout
//               of w, then of the f32 down with scale s: one rounding of s·down).
// Bytes moved (DRAM, f16; each kernel reads its inputs and writes its outputs once; X, Y, U,
// Wt, D, P = x, y, u, w, down, up in f16; the casts of the f32 adapter weights and the adapter
// weight gradients, the same on both paths, not counted):
//   forward  composed 2X + Wt + D + P + 7Y + 2U (main conv, down conv, z = up conv, s·z,
//            y + s·z); fused X + Wt + D + P + 3Y + 2U. A mask: composed + 3U, fused + U.
//   backward composed 7X + 2Y + 3Wt + 3D + 3P + 2U (three layouts, dx, g, dx_lora, s·dx_lora,
//            dx + s·dx_lora); fused X + 2Y + 3Wt + 3D + 3P + 2U. A mask: the same.
// SD1.5's LoCon layers, rank 16, no mask (conv + LoCon, MB; ranks 8 and 32 within 3% of
// these; the formulas above with X = N·C·H·W·2 bytes and so on):
//   layer                          N   forward composed -> fused   backward composed -> fused
//   [N,320,64,64] -> 320            1        25.8 -> 12.7                 29.7 -> 14.0
//                                   4        97.4 -> 44.9                101.3 -> 38.3
//   [N,320,64,64] -> 320, stride 2  1        11.8 ->  6.6                 25.6 ->  9.8
//                                   4        41.5 -> 20.6                 84.7 -> 21.8
//   [N,640,32,32] -> 640            1        19.4 -> 12.9                 34.6 -> 26.7
//                                   4        55.0 -> 28.8                 70.2 -> 38.7
//   [N,1280,16,16] -> 1280          1        35.8 -> 32.5                 95.6 -> 91.7
//                                   4        53.6 -> 40.5                113.4 -> 97.6
// The saving is 4Y (forward) and 6X (backward): half the traffic or more at 64x64, little
// where the 1280-channel weights dominate (16x16 and below). And three fewer y- or x-sized
// temporaries (z, s·z; dx_lora, s·dx_lora) in the pool.
//
// Tiles: a block computes 128 pixels x 64 channels (FC_BM x FC_BN), 256 threads = 8 warps
// as 4 (pixels) x 2 (channels), each warp 32 x 32 = 2 x 4 mma tiles (32 f32 accumulators per
// thread). The reduction runs in chunks of FC_BK = 32, double-buffered in shared memory:
//   As[2][32][128 + 8] T: As[kk][pixel] (pixels contiguous: the gather is coalesced along
//       the image rows); A fragments come from ldmatrix.x4.trans. Filled by plain predicated
//       loads staged in registers (an im2col row is a shifted, possibly strided, unaligned
//       window: no 16-byte copies), except for pointwise convs (vec_a: 1x1, stride 1, no
//       padding, H·W a multiple of 8), whose rows are aligned pixel runs: cp.async.
//   Bs[2][64][32 + 8] T: Bs[channel][kk] (a weight row); B fragments from ldmatrix.x4.
//       Filled by cp.async 16-byte copies when K is a multiple of 8 (vec_b: every weight row
//       16-byte aligned), else by predicated loads staged in registers.
//   The +8 elements of padding make the 8 rows an ldmatrix reads fall in distinct bank groups.
// While the tensor cores work on one buffer the next chunk's loads are in flight into the
// other (registers for the gathered parts, cp.async for the weights). Epilogue: accumulators
// -> alpha·acc + bias -> T -> a [64][128 + 8] tile in the (then idle) As space -> written to
// dst/dst2 with pixel-contiguous (coalesced) stores. Grid: x = pixel tiles of 128 (over
// n·ha·wa, so small images share a tile), y = channel tiles of 64 over mo + mo2. Static
// shared memory: 27 648 bytes.
//
// Tails: pixels >= n·ha·wa, channels >= mo + mo2 and kk >= K are zero-filled in shared memory
// and never written; any sizes work (channel counts 4, 20, 320.., odd images).
#include "common.cuh"

// `#pragma unroll` for nvcc only (the host compiler of the emulator warns on it).
#ifdef __CUDACC__
#define FC_UNROLL _Pragma("unroll")
#else
#define FC_UNROLL
#endif

// FC_BM, FC_BN, FC_THREADS in tiles.h.
#define FC_BK 32
#define FC_LDA (FC_BM + 8)
#define FC_LDB (FC_BK + 8)
// Gathered A elements staged per thread per chunk: 128 x 32 / 256.
#define FC_A_PER (FC_BM * FC_BK / FC_THREADS)
// Weight elements per thread per chunk (64 x 32 / 256 = 8 = one 16-byte copy).
#define FC_B_PER (FC_BN * FC_BK / FC_THREADS)

// VA: the vec_a path (a compile-time choice, so that the gathered and the copied A loads do
// not hold registers at once: t11 would spill on sm_75 otherwise). As and Bs: the entry
// point's shared memory (declared there once, for both instantiations).
template <typename T, int TY, int TX, bool VA>
__device__ __forceinline__ void conv_fast_impl(
    T (*As)[FC_BK][FC_LDA], T (*Bs)[FC_BN][FC_LDB], const T* __restrict__ src, const T* __restrict__ src2, const T* __restrict__ wt,
    const T* __restrict__ wt2, const T* __restrict__ bias, const T* __restrict__ mask,
    T* __restrict__ dst, T* __restrict__ dst2, int has_bias, int has_mask, int accumulate,
    int vec_b, float alpha, int n, int cs, int cs2, int hs, int ws, int mo, int mo2,
    int ha, int wa, int sa, int oy, int ox, int hd, int wd, int so, int ry, int rx) {
    constexpr int TAPS = TY * TX;
    const int K = (cs + cs2) * TAPS;
    const int P = ha * wa;  // output pixels per image
    const int MP = n * P;
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = (warp & 3) * 32, wn = (warp >> 2) * 32;  // warp tile origin in the block
    const int p0 = blockIdx.x * FC_BM, m0 = blockIdx.y * FC_BN;
    const T zero = from_f32<T>(0.0f);

    // ---- this thread's gathered column: one pixel, rows ar + 2r of each chunk ----
    const int ap = tid % FC_BM, ar = tid / FC_BM;
    const int pix = p0 + ap;
    const bool pix_ok = pix < MP;
    int img = 0, a = 0, b = 0;
    if (pix_ok) {
        img = pix / P;
        const int rem = pix - img * P;
        a = rem / wa;
        b = rem - a * wa;
    }
    const int iy0 = a * sa + oy, ix0 = b * sa + ox;  // src pixel of tap (0, 0)
    const int plane = hs * ws;
    // Source channel ch of image i: plane ch of src (ch < cs), else plane ch - cs of src2
    // (recomputed per element rather than held as two pointers per thread: registers).
    auto plane_of = [&](int i, int ch) -> const T* {
        return ch < cs ? src + ((size_t)i * cs + ch) * plane
                       : src2 + ((size_t)i * cs2 + (ch - cs)) * plane;
    };
    // ---- vec_a (a pointwise conv: 1x1, sa = 1, no offset, src plane = output grid, P % 8
    // == 0): A rows are runs of 8 pixels inside one image, 16-byte aligned, copied by
    // cp.async: this thread's run starts at pixel p0 + vp, rows vr and vr + 16 ----
    const int vp = (tid % 16) * 8, vr = tid / 16;
    const int vpix = p0 + vp;
    const bool vpix_ok = vpix < MP;
    const int vimg = vpix_ok ? vpix / P : 0, vrem = vpix_ok ? vpix % P : 0;
    // ---- this thread's weight elements: output channel bn of the tile, kk = bk..bk+7 of each
    // chunk; rows m < mo from wt, then m - mo from wt2 ----
    const int bn = tid / 4, bk = (tid % 4) * 8;
    const int wrow = m0 + bn;
    const bool wrow_ok = wrow < mo + mo2;
    const T* w_row = !wrow_ok ? wt : wrow < mo ? wt + (size_t)wrow * K : wt2 + (size_t)(wrow - mo) * K;

    const int nk = (K + FC_BK - 1) / FC_BK;
    T ra[FC_A_PER];
    T rb[FC_B_PER];

    // Gathers chunk k0 of A into registers.
    auto load_a = [&](int k0) {
FC_UNROLL
        for (int r = 0; r < FC_A_PER; ++r) {
            const int kk = k0 + ar + 2 * r;
            T v = zero;
            if (pix_ok && kk < K) {
                const int ch = kk / TAPS;
                const int tu = kk - ch * TAPS;
                const int t = tu / TX, u = tu - (tu / TX) * TX;
                const int iy = iy0 + t, ix = ix0 + u;
                if (iy >= 0 && iy < hs && ix >= 0 && ix < ws) v = plane_of(img, ch)[iy * ws + ix];
            }
            ra[r] = v;
        }
    };
    auto store_a = [&](int buf) {
        if (VA) return;
FC_UNROLL
        for (int r = 0; r < FC_A_PER; ++r) As[buf][ar + 2 * r][ap] = ra[r];
    };
    // Chunk k0 of A: cp.async into buffer `buf` (vec_a) or gathered into registers.
    auto fetch_a = [&](int k0, int buf) {
        if (VA) {
FC_UNROLL
            for (int q = 0; q < 2; ++q) {
                const int row = vr + 16 * q, kk = k0 + row;  // kk = the channel (one tap)
                const bool ok = vpix_ok && kk < K;
                cp_async16(&As[buf][row][vp], ok ? plane_of(vimg, kk) + vrem : src, ok);
            }
        } else {
            load_a(k0);
        }
    };
    // Weights of chunk k0: cp.async into buffer `buf` (vec_b) or into registers.
    auto load_b = [&](int k0, int buf) {
        const int kk = k0 + bk;
        if (vec_b) {
            const bool ok = wrow_ok && kk < K;  // K % 8 == 0: all 8 or none
            cp_async16(&Bs[buf][bn][bk], ok ? w_row + kk : wt, ok);
        } else {
FC_UNROLL
            for (int e = 0; e < FC_B_PER; ++e) rb[e] = (wrow_ok && kk + e < K) ? w_row[kk + e] : zero;
        }
    };
    auto store_b = [&](int buf) {
        if (!vec_b) {
FC_UNROLL
            for (int e = 0; e < FC_B_PER; ++e) Bs[buf][bn][bk + e] = rb[e];
        }
    };

    float acc[2][4][4];
FC_UNROLL
    for (int i = 0; i < 2; ++i)
FC_UNROLL
        for (int j = 0; j < 4; ++j)
FC_UNROLL
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

    if (nk > 0) {
        fetch_a(0, 0);
        load_b(0, 0);
        cp_async_commit();
        store_a(0);
        store_b(0);
        cp_async_wait_all();
        __syncthreads();
    }
    // ldmatrix lane roles: matrix j = lane / 8, row r8 = lane % 8.
    const int lj = lane >> 3, lr = lane & 7;
    for (int kt = 0; kt < nk; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < nk;
        if (more) {
            load_b((kt + 1) * FC_BK, cur ^ 1);
            fetch_a((kt + 1) * FC_BK, cur ^ 1);
            cp_async_commit();
        }
FC_UNROLL
        for (int ks = 0; ks < FC_BK; ks += 16) {
            uint32_t fa[2][4], fb[4][2];
FC_UNROLL
            for (int i = 0; i < 2; ++i) {
                // A tile (pixels wm + 16i.., kk ks..): matrices (m 0-7 | 8-15) x (k 0-7 | 8-15),
                // stored k-major, so .trans.
                const T* p = &As[cur][ks + lr + (lj >> 1) * 8][wm + 16 * i + (lj & 1) * 8];
                ldmatrix_x4_trans(fa[i], p);
            }
FC_UNROLL
            for (int j = 0; j < 2; ++j) {
                // Two n8 tiles (channels wn + 16j + 0-7 | 8-15), each k 0-7 and 8-15.
                uint32_t r[4];
                const T* p = &Bs[cur][wn + 16 * j + (lj >> 1) * 8 + lr][ks + (lj & 1) * 8];
                ldmatrix_x4(r, p);
                fb[2 * j][0] = r[0];
                fb[2 * j][1] = r[1];
                fb[2 * j + 1][0] = r[2];
                fb[2 * j + 1][1] = r[3];
            }
FC_UNROLL
            for (int i = 0; i < 2; ++i)
FC_UNROLL
                for (int j = 0; j < 4; ++j) mma_tile<T>(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        if (more) {
            store_a(cur ^ 1);
            store_b(cur ^ 1);
        }
        cp_async_wait_all();
        __syncthreads();
    }

    // ---- epilogue: alpha·acc + bias, rounded to T, through shared memory Cs[channel][pixel] ----
    T(*Cs)[FC_LDA] = reinterpret_cast<T(*)[FC_LDA]>(&As[0][0][0]);  // 64 x 136 fits
    const int g = lane >> 2, tq = lane & 3;
FC_UNROLL
    for (int j = 0; j < 4; ++j) {
FC_UNROLL
        for (int e = 0; e < 2; ++e) {
            const int cl = wn + 8 * j + 2 * tq + e;  // channel within the tile
            const int ch = m0 + cl;
            const float bv = (has_bias && ch < mo) ? to_f32(bias[ch]) : 0.0f;
FC_UNROLL
            for (int i = 0; i < 2; ++i) {
                const int pl = wm + 16 * i + g;
                Cs[cl][pl] = from_f32<T>(alpha * acc[i][j][e] + bv);
                Cs[cl][pl + 8] = from_f32<T>(alpha * acc[i][j][2 + e] + bv);
            }
        }
    }
    __syncthreads();
    // Pixel-contiguous stores: channels m < mo to dst (+= its old value when accumulating),
    // the rest to dst2 (⊙ the mask when there is one).
    if (pix_ok) {
        const size_t plane_d = (size_t)hd * wd;
        const size_t at = (size_t)(a * so + ry) * wd + (b * so + rx);
        for (int cl = ar; cl < FC_BN; cl += FC_THREADS / FC_BM) {
            const int ch = m0 + cl;
            const T v = Cs[cl][ap];
            if (ch < mo) {
                T* d = dst + ((size_t)img * mo + ch) * plane_d + at;
                *d = accumulate ? from_f32<T>(to_f32(v) + to_f32(*d)) : v;
            } else if (ch < mo + mo2) {
                const size_t i = ((size_t)img * mo2 + (ch - mo)) * plane_d + at;
                dst2[i] = has_mask ? from_f32<T>(to_f32(v) * to_f32(mask[i])) : v;
            }
        }
    }
}

#define CONV_FAST_ENTRY(TY, TX, T, SUFFIX)                                                       \
    KERNEL void __launch_bounds__(FC_THREADS, 2) conv_fast_t##TY##TX##_##SUFFIX(                 \
        const T* src, const T* src2, const T* wt, const T* wt2, const T* bias, const T* mask,   \
        T* dst, T* dst2, int has_bias, int has_mask, int accumulate, int vec_a, int vec_b,       \
        float alpha, int n, int cs, int cs2, int hs, int ws, int mo, int mo2, int ha, int wa,    \
        int sa, int oy, int ox, int hd, int wd, int so, int ry, int rx) {                        \
        __shared__ __align__(16) T As[2][FC_BK][FC_LDA];                                         \
        __shared__ __align__(16) T Bs[2][FC_BN][FC_LDB];                                         \
        if (TY == 1 && TX == 1 && vec_a)                                                         \
            conv_fast_impl<T, TY, TX, TY == 1 && TX == 1>(                                       \
                As, Bs, src, src2, wt, wt2, bias, mask, dst, dst2, has_bias, has_mask,           \
                accumulate, vec_b, alpha, n, cs, cs2, hs, ws, mo, mo2, ha, wa, sa, oy, ox, hd,   \
                wd, so, ry, rx);                                                                 \
        else                                                                                     \
            conv_fast_impl<T, TY, TX, false>(                                                    \
                As, Bs, src, src2, wt, wt2, bias, mask, dst, dst2, has_bias, has_mask,           \
                accumulate, vec_b, alpha, n, cs, cs2, hs, ws, mo, mo2, ha, wa, sa, oy, ox, hd,   \
                wd, so, ry, rx);                                                                 \
    }
#define CONV_FAST_ENTRIES(T, SUFFIX)   \
    CONV_FAST_ENTRY(1, 1, T, SUFFIX)   \
    CONV_FAST_ENTRY(1, 2, T, SUFFIX)   \
    CONV_FAST_ENTRY(2, 1, T, SUFFIX)   \
    CONV_FAST_ENTRY(2, 2, T, SUFFIX)   \
    CONV_FAST_ENTRY(3, 3, T, SUFFIX)

CONV_FAST_ENTRIES(__half, f16)
CONV_FAST_ENTRIES(bf16_t, bf16)

// Taps of residue class r (0 <= r < s) along one axis: the i < k with i ≡ r + p (mod s).
__device__ __forceinline__ int fc_taps(int r, int k, int s, int p) {
    const int i0 = (r + p) % s;
    return i0 < k ? (k - 1 - i0) / s + 1 : 0;
}

// The input gradient's per-class weights (see the top): one thread per element of
// w [o, c, k, k] (in type TI: the storage type, or f32 for an adapter's master weights);
// wt holds the s·s classes one after another, class (ry, rx) in row-major order, each
// [c, ot, TY(ry), TX(rx)] with reversed taps, where ot is the total of the output channels
// laid side by side and w fills channels o0..o0 + o of them. Writes scale·w rounded to T
// (scale 1 on T input: a copy), each of its elements once (each tap (i, j) belongs to exactly
// one class), with =.
template <typename TI, typename T>
__device__ __forceinline__ void conv_fast_wgrad_layout_impl(const TI* w, T* wt, int o, int c, int k,
                                                            int s, int p, int ot, int o0,
                                                            float scale) {
    const int total = o * c * k * k;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int j = idx % k, i = (idx / k) % k;
    const int ci = (idx / (k * k)) % c, oi = idx / (k * k * c);
    const int ryc = (((i - p) % s) + s) % s, rxc = (((j - p) % s) + s) % s;
    size_t off = 0;
    for (int r = 0; r < s * s; ++r) {
        if (r == ryc * s + rxc) break;
        off += (size_t)c * ot * fc_taps(r / s, k, s, p) * fc_taps(r % s, k, s, p);
    }
    const int ty = fc_taps(ryc, k, s, p), tx = fc_taps(rxc, k, s, p);
    const int t = ty - 1 - i / s, u = tx - 1 - j / s;
    wt[off + (((size_t)ci * ot + o0 + oi) * ty + t) * tx + u] = from_f32<T>(scale * to_f32(w[idx]));
}

#define CONV_FAST_LAYOUT_ENTRY(NAME, TI, T)                                                    \
    KERNEL void NAME(const TI* w, T* wt, int o, int c, int k, int s, int p, int ot, int o0,   \
                     float scale) {                                                            \
        conv_fast_wgrad_layout_impl<TI, T>(w, wt, o, c, k, s, p, ot, o0, scale);               \
    }

CONV_FAST_LAYOUT_ENTRY(conv_fast_wgrad_layout_f16, __half, __half)
CONV_FAST_LAYOUT_ENTRY(conv_fast_wgrad_layout_adapter_f16, float, __half)
CONV_FAST_LAYOUT_ENTRY(conv_fast_wgrad_layout_bf16, bf16_t, bf16_t)
CONV_FAST_LAYOUT_ENTRY(conv_fast_wgrad_layout_adapter_bf16, float, bf16_t)
