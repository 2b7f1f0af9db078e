// Layout ops: data movement (exact copies for every storage type) and the 2x2 sums of the
// upsampling gradient (f32 math, rounded once).
//
//   upsample2x_T:      y[nc, 2i + a, 2j + b] = x[nc, i, j]   x [NC, H, W] -> y [NC, 2H, 2W]
//   upsample2x_bwd_T:  dx[nc, i, j] = (dy[nc, 2i, 2j] + dy[nc, 2i, 2j+1])
//                                   + (dy[nc, 2i+1, 2j] + dy[nc, 2i+1, 2j+1])
//   concat_T:          y[img] = a[img] ++ b[img]   a [N, la], b [N, lb] -> y [N, la + lb]
//                      (la = Ca·inner, lb = Cb·inner)
//   split_T:           da[img] = dy[img][..la], db[img] = dy[img][la..]   (the inverse)
//   pad2d_T:           y[nc, top + i, left + j] = x[nc, i, j], 0 elsewhere
//                      x [NC, H, W] -> y [NC, Ho, Wo]
//   transpose_T:       y[img] = x[img]ᵀ, x [N, rows, cols] -> y [N, cols, rows]
//                      (nchw_to_nlc: rows = C, cols = H·W; nlc_to_nchw: rows = L, cols = C)
//   embedding_T:       y[r, col] = table[ids[r], col]   table [V, C], ids [R] -> y [R, C]
//                      (ids are checked below V on the host before the launch)
// Grid mapping: one thread per element of the written tensor (y, dx, or dy for split), a 1-D
// grid of ceil(n / blockDim.x) blocks with the tail guarded by `i < n`; except transpose:
// blocks of 32 x 8 threads move one 32 x 32 tile through shared memory (coalesced reads and
// writes), blockIdx.x = the tile (row tiles x col tiles, flattened), blockIdx.z = the image,
// tails guarded in both dims. Every output element is written once, with =.
#include "common.cuh"

template <typename T>
__device__ void upsample2x_impl(const T* x, T* y, int h, int w, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int w2 = 2 * w, h2 = 2 * h;
    int ox = i % w2;
    int t = i / w2;
    int oy = t % h2;
    int plane = t / h2;
    y[i] = x[((size_t)plane * h + oy / 2) * w + ox / 2];
}
KERNEL void upsample2x_f32(const float* x, float* y, int h, int w, int n) {
    upsample2x_impl(x, y, h, w, n);
}
KERNEL void upsample2x_f16(const __half* x, __half* y, int h, int w, int n) {
    upsample2x_impl(x, y, h, w, n);
}
KERNEL void upsample2x_bf16(const bf16_t* x, bf16_t* y, int h, int w, int n) {
    upsample2x_impl(x, y, h, w, n);
}

template <typename T>
__device__ void upsample2x_bwd_impl(const T* dy, T* dx, int h, int w, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int x = i % w;
    int t = i / w;
    int yy = t % h;
    int plane = t / h;
    size_t w2 = 2 * (size_t)w;
    const T* e = dy + ((size_t)plane * 2 * h + 2 * yy) * w2 + 2 * x;
    const T* d = e + w2;
    float v = (to_f32(e[0]) + to_f32(e[1])) + (to_f32(d[0]) + to_f32(d[1]));
    dx[i] = from_f32<T>(v);
}
KERNEL void upsample2x_bwd_f32(const float* dy, float* dx, int h, int w, int n) {
    upsample2x_bwd_impl(dy, dx, h, w, n);
}
KERNEL void upsample2x_bwd_f16(const __half* dy, __half* dx, int h, int w, int n) {
    upsample2x_bwd_impl(dy, dx, h, w, n);
}
KERNEL void upsample2x_bwd_bf16(const bf16_t* dy, bf16_t* dx, int h, int w, int n) {
    upsample2x_bwd_impl(dy, dx, h, w, n);
}

template <typename T>
__device__ void concat_impl(const T* a, const T* b, T* y, int la, int lb, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int per = la + lb;
    int img = i / per;
    int r = i - img * per;
    y[i] = r < la ? a[(size_t)img * la + r] : b[(size_t)img * lb + (r - la)];
}
KERNEL void concat_f32(const float* a, const float* b, float* y, int la, int lb, int n) {
    concat_impl(a, b, y, la, lb, n);
}
KERNEL void concat_f16(const __half* a, const __half* b, __half* y, int la, int lb, int n) {
    concat_impl(a, b, y, la, lb, n);
}
KERNEL void concat_bf16(const bf16_t* a, const bf16_t* b, bf16_t* y, int la, int lb, int n) {
    concat_impl(a, b, y, la, lb, n);
}

template <typename T>
__device__ void split_impl(const T* dy, T* da, T* db, int la, int lb, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int per = la + lb;
    int img = i / per;
    int r = i - img * per;
    if (r < la)
        da[(size_t)img * la + r] = dy[i];
    else
        db[(size_t)img * lb + (r - la)] = dy[i];
}
KERNEL void split_f32(const float* dy, float* da, float* db, int la, int lb, int n) {
    split_impl(dy, da, db, la, lb, n);
}
KERNEL void split_f16(const __half* dy, __half* da, __half* db, int la, int lb, int n) {
    split_impl(dy, da, db, la, lb, n);
}
KERNEL void split_bf16(const bf16_t* dy, bf16_t* da, bf16_t* db, int la, int lb, int n) {
    split_impl(dy, da, db, la, lb, n);
}

template <typename T>
__device__ void pad2d_impl(const T* x, T* y, int h, int w, int top, int left, int ho, int wo,
                           int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int ox = i % wo;
    int t = i / wo;
    int oy = t % ho;
    int plane = t / ho;
    int iy = oy - top, ix = ox - left;
    if (iy >= 0 && iy < h && ix >= 0 && ix < w)
        y[i] = x[((size_t)plane * h + iy) * w + ix];
    else
        y[i] = from_f32<T>(0.0f);
}
KERNEL void pad2d_f32(const float* x, float* y, int h, int w, int top, int left, int ho, int wo,
                      int n) {
    pad2d_impl(x, y, h, w, top, left, ho, wo, n);
}
KERNEL void pad2d_f16(const __half* x, __half* y, int h, int w, int top, int left, int ho,
                      int wo, int n) {
    pad2d_impl(x, y, h, w, top, left, ho, wo, n);
}
KERNEL void pad2d_bf16(const bf16_t* x, bf16_t* y, int h, int w, int top, int left, int ho,
                       int wo, int n) {
    pad2d_impl(x, y, h, w, top, left, ho, wo, n);
}

// TR_TILE, TR_ROWS in tiles.h.

template <typename T>
__device__ void transpose_impl(const T* x, T* y, int rows, int cols) {
    __shared__ float tile[TR_TILE][TR_TILE + 1];  // +1: conflict-free column reads
    const int col_tiles = (cols + TR_TILE - 1) / TR_TILE;
    const int r0 = (blockIdx.x / col_tiles) * TR_TILE;
    const int c0 = (blockIdx.x % col_tiles) * TR_TILE;
    const size_t img = (size_t)blockIdx.z * rows * cols;
    const T* xs = x + img;
    T* ys = y + img;
    const int tx = threadIdx.x;
    for (int dy = threadIdx.y; dy < TR_TILE; dy += TR_ROWS) {
        int r = r0 + dy, c = c0 + tx;
        if (r < rows && c < cols) tile[dy][tx] = to_f32(xs[(size_t)r * cols + c]);
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < TR_TILE; dy += TR_ROWS) {
        int c = c0 + dy, r = r0 + tx;  // y[c, r] = x[r, c]
        if (c < cols && r < rows) ys[(size_t)c * rows + r] = from_f32<T>(tile[tx][dy]);
    }
}
KERNEL void transpose_f32(const float* x, float* y, int rows, int cols) {
    transpose_impl(x, y, rows, cols);
}
KERNEL void transpose_f16(const __half* x, __half* y, int rows, int cols) {
    transpose_impl(x, y, rows, cols);
}
KERNEL void transpose_bf16(const bf16_t* x, bf16_t* y, int rows, int cols) {
    transpose_impl(x, y, rows, cols);
}

template <typename T>
__device__ void embedding_impl(const T* table, const unsigned* ids, T* y, int c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int r = i / c;
    int col = i - r * c;
    y[i] = table[(size_t)ids[r] * c + col];
}
KERNEL void embedding_f32(const float* table, const unsigned* ids, float* y, int c, int n) {
    embedding_impl(table, ids, y, c, n);
}
KERNEL void embedding_f16(const __half* table, const unsigned* ids, __half* y, int c, int n) {
    embedding_impl(table, ids, y, c, n);
}
KERNEL void embedding_bf16(const bf16_t* table, const unsigned* ids, bf16_t* y, int c, int n) {
    embedding_impl(table, ids, y, c, n);
}
