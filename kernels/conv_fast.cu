// Fast 2-D convolution and its input gradient for f16 storage: implicit GEMMs on tensor cores
// (mma.sync m16n8k16, f16 x f16 -> f32), fragments through ldmatrix from shared memory, no
// im2col buffer. Activations NCHW, weights [O, C, k, k] (PyTorch's). The simple twins are in
// conv.cu (same math, the reference).
//
// One kernel, conv_fast_tYX (taps TY x TX), computes a "generalized convolution":
//   dst[n, m, a·so + ry, b·so + rx] = bias[m]
//       + Σ_{ch < cs, t < TY, u < TX} wt[m, ch, t, u] · src[n, ch, a·sa + oy + t, b·sa + ox + u]
//   for a < ha, b < wa (src is 0 outside [0, hs) x [0, ws)); writes dst with = at exactly
//   those pixels.
// As a GEMM: rows = output pixels (n, a, b), M = n·ha·wa; columns = output channels m < mo;
// reduction kk = (ch, t, u), K = cs·TY·TX; A(pixel, kk) = the gathered src element (implicit
// im2col, predicated), B(kk, m) = wt viewed as [mo, K] row-major.
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
// Tiles: a block computes 128 pixels x 64 channels (FC_BM x FC_BN), 256 threads = 8 warps
// as 4 (pixels) x 2 (channels), each warp 32 x 32 = 2 x 4 mma tiles (32 f32 accumulators per
// thread). The reduction runs in chunks of FC_BK = 32, double-buffered in shared memory:
//   As[2][32][128 + 8] f16: As[kk][pixel] (pixels contiguous: the gather is coalesced along
//       the image rows); A fragments come from ldmatrix.x4.trans. Filled by plain predicated
//       loads staged in registers (an im2col row is a shifted, possibly strided, unaligned
//       window: no 16-byte copies), except for pointwise convs (vec_a: 1x1, stride 1, no
//       padding, H·W a multiple of 8), whose rows are aligned pixel runs: cp.async.
//   Bs[2][64][32 + 8] f16: Bs[channel][kk] (a weight row); B fragments from ldmatrix.x4.
//       Filled by cp.async 16-byte copies when K is a multiple of 8 (vec_b: every weight row
//       16-byte aligned), else by predicated loads staged in registers.
//   The +8 halves of padding make the 8 rows an ldmatrix reads fall in distinct bank groups.
// While the tensor cores work on one buffer the next chunk's loads are in flight into the
// other (registers for the gathered parts, cp.async for the weights). Epilogue: accumulators
// + bias -> f16 -> a [64][128 + 8] tile in the (then idle) As space -> written to dst with
// pixel-contiguous (coalesced) stores. Grid: x = pixel tiles of 128 (over n·ha·wa, so small
// images share a tile), y = channel tiles of 64. Static shared memory: 27 648 bytes.
//
// Tails: pixels >= n·ha·wa, channels >= mo and kk >= K are zero-filled in shared memory and
// never written; any sizes work (channel counts 4, 20, 320.., odd images).
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

template <int TY, int TX>
__device__ __forceinline__ void conv_fast_impl(
    const __half* __restrict__ src, const __half* __restrict__ wt,
    const __half* __restrict__ bias, __half* __restrict__ dst, int has_bias, int vec_a,
    int vec_b, int n, int cs, int hs, int ws, int mo, int ha, int wa, int sa, int oy, int ox,
    int hd, int wd, int so, int ry, int rx) {
    __shared__ __align__(16) __half As[2][FC_BK][FC_LDA];
    __shared__ __align__(16) __half Bs[2][FC_BN][FC_LDB];

    constexpr int TAPS = TY * TX;
    const int K = cs * TAPS;
    const int P = ha * wa;  // output pixels per image
    const int MP = n * P;
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = (warp & 3) * 32, wn = (warp >> 2) * 32;  // warp tile origin in the block
    const int p0 = blockIdx.x * FC_BM, m0 = blockIdx.y * FC_BN;

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
    const __half* src_img = src + (size_t)img * cs * plane;
    // ---- vec_a (a pointwise conv: 1x1, sa = 1, no offset, src plane = output grid, P % 8
    // == 0): A rows are runs of 8 pixels inside one image, 16-byte aligned, copied by
    // cp.async: this thread's run starts at pixel p0 + vp, rows vr and vr + 16 ----
    const int vp = (tid % 16) * 8, vr = tid / 16;
    const int vpix = p0 + vp;
    const bool vpix_ok = vpix < MP;
    const __half* vsrc = src + (vpix_ok ? (size_t)(vpix / P) * cs * plane + vpix % P : 0);
    // ---- this thread's weight elements: channel bn, kk = bk..bk+7 of each chunk ----
    const int bn = tid / 4, bk = (tid % 4) * 8;
    const int wrow = m0 + bn;
    const bool wrow_ok = wrow < mo;
    const __half* w_row = wt + (size_t)(wrow_ok ? wrow : 0) * K;

    const int nk = (K + FC_BK - 1) / FC_BK;
    __half ra[FC_A_PER];
    __half rb[FC_B_PER];

    // Gathers chunk k0 of A into registers.
    auto load_a = [&](int k0) {
FC_UNROLL
        for (int r = 0; r < FC_A_PER; ++r) {
            const int kk = k0 + ar + 2 * r;
            __half v = __float2half_rn(0.0f);
            if (pix_ok && kk < K) {
                const int ch = kk / TAPS;
                const int tu = kk - ch * TAPS;
                const int t = tu / TX, u = tu - (tu / TX) * TX;
                const int iy = iy0 + t, ix = ix0 + u;
                if (iy >= 0 && iy < hs && ix >= 0 && ix < ws) v = src_img[ch * plane + iy * ws + ix];
            }
            ra[r] = v;
        }
    };
    auto store_a = [&](int buf) {
        if (vec_a) return;
FC_UNROLL
        for (int r = 0; r < FC_A_PER; ++r) As[buf][ar + 2 * r][ap] = ra[r];
    };
    // Chunk k0 of A: cp.async into buffer `buf` (vec_a) or gathered into registers.
    auto fetch_a = [&](int k0, int buf) {
        if (vec_a) {
FC_UNROLL
            for (int q = 0; q < 2; ++q) {
                const int row = vr + 16 * q, kk = k0 + row;  // kk = the channel (one tap)
                const bool ok = vpix_ok && kk < K;
                cp_async16(&As[buf][row][vp], ok ? vsrc + (size_t)kk * plane : src, ok);
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
            for (int e = 0; e < FC_B_PER; ++e)
                rb[e] = (wrow_ok && kk + e < K) ? w_row[kk + e] : __float2half_rn(0.0f);
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
                const __half* p = &As[cur][ks + lr + (lj >> 1) * 8][wm + 16 * i + (lj & 1) * 8];
                ldmatrix_x4_trans(fa[i], p);
            }
FC_UNROLL
            for (int j = 0; j < 2; ++j) {
                // Two n8 tiles (channels wn + 16j + 0-7 | 8-15), each k 0-7 and 8-15.
                uint32_t r[4];
                const __half* p = &Bs[cur][wn + 16 * j + (lj >> 1) * 8 + lr][ks + (lj & 1) * 8];
                ldmatrix_x4(r, p);
                fb[2 * j][0] = r[0];
                fb[2 * j][1] = r[1];
                fb[2 * j + 1][0] = r[2];
                fb[2 * j + 1][1] = r[3];
            }
FC_UNROLL
            for (int i = 0; i < 2; ++i)
FC_UNROLL
                for (int j = 0; j < 4; ++j) mma_m16n8k16(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        if (more) {
            store_a(cur ^ 1);
            store_b(cur ^ 1);
        }
        cp_async_wait_all();
        __syncthreads();
    }

    // ---- epilogue: + bias, f16, through shared memory Cs[channel][pixel] ----
    __half(*Cs)[FC_LDA] = reinterpret_cast<__half(*)[FC_LDA]>(&As[0][0][0]);  // 64 x 136 fits
    const int g = lane >> 2, tq = lane & 3;
FC_UNROLL
    for (int j = 0; j < 4; ++j) {
FC_UNROLL
        for (int e = 0; e < 2; ++e) {
            const int cl = wn + 8 * j + 2 * tq + e;  // channel within the tile
            const int ch = m0 + cl;
            const float bv = (has_bias && ch < mo) ? __half2float(bias[ch]) : 0.0f;
FC_UNROLL
            for (int i = 0; i < 2; ++i) {
                const int pl = wm + 16 * i + g;
                Cs[cl][pl] = __float2half_rn(acc[i][j][e] + bv);
                Cs[cl][pl + 8] = __float2half_rn(acc[i][j][2 + e] + bv);
            }
        }
    }
    __syncthreads();
    if (pix_ok) {
        const int plane_d = hd * wd;
        __half* d = dst + (size_t)img * mo * plane_d + (a * so + ry) * wd + (b * so + rx);
        for (int cl = ar; cl < FC_BN; cl += FC_THREADS / FC_BM) {
            const int ch = m0 + cl;
            if (ch < mo) d[(size_t)ch * plane_d] = Cs[cl][ap];
        }
    }
}

#define CONV_FAST_ENTRY(TY, TX)                                                                  \
    KERNEL void __launch_bounds__(FC_THREADS, 2)                                                 \
        conv_fast_t##TY##TX(const __half* src, const __half* wt, const __half* bias, __half* dst, \
                            int has_bias, int vec_a, int vec_b, int n, int cs, int hs, int ws,  \
                            int mo, int ha, int wa, int sa, int oy, int ox, int hd, int wd,      \
                            int so, int ry, int rx) {                                            \
        conv_fast_impl<TY, TX>(src, wt, bias, dst, has_bias, vec_a, vec_b, n, cs, hs, ws, mo,   \
                               ha, wa, sa, oy, ox, hd, wd, so, ry, rx);                          \
    }

CONV_FAST_ENTRY(1, 1)
CONV_FAST_ENTRY(1, 2)
CONV_FAST_ENTRY(2, 1)
CONV_FAST_ENTRY(2, 2)
CONV_FAST_ENTRY(3, 3)

// Taps of residue class r (0 <= r < s) along one axis: the i < k with i ≡ r + p (mod s).
__device__ __forceinline__ int fc_taps(int r, int k, int s, int p) {
    const int i0 = (r + p) % s;
    return i0 < k ? (k - 1 - i0) / s + 1 : 0;
}

// The input gradient's per-class weights (see the top): one thread per element of
// w [o, c, k, k]; wt holds the s·s classes one after another, class (ry, rx) in row-major
// order, each [c, o, TY(ry), TX(rx)] with reversed taps. Every element of wt is written
// once (each tap (i, j) belongs to exactly one class), with =.
KERNEL void conv_fast_wgrad_layout(const __half* w, __half* wt, int o, int c, int k, int s,
                                   int p) {
    const int total = o * c * k * k;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int j = idx % k, i = (idx / k) % k;
    const int ci = (idx / (k * k)) % c, oi = idx / (k * k * c);
    const int ryc = (((i - p) % s) + s) % s, rxc = (((j - p) % s) + s) % s;
    size_t off = 0;
    for (int r = 0; r < s * s; ++r) {
        if (r == ryc * s + rxc) break;
        off += (size_t)c * o * fc_taps(r / s, k, s, p) * fc_taps(r % s, k, s, p);
    }
    const int ty = fc_taps(ryc, k, s, p), tx = fc_taps(rxc, k, s, p);
    const int t = ty - 1 - i / s, u = tx - 1 - j / s;
    wt[off + (((size_t)ci * o + oi) * ty + t) * tx + u] = w[idx];
}
