// transformers' Adafactor on the flat f32 parameter buffer: the formulas, constants and
// order of operations of src/backend/cpu/adafactor.rs (the reference; the step's formula is
// on backend::AdafactorStep).
//
//   adafactor_f32: one launch per step, one block per tensor (grid = the table's segments),
//                  because every quantity a tensor's update needs is a reduction over that
//                  tensor (the RMS of its parameters, the row and column means of g², the
//                  mean of each matrix's row moments, the RMS of its update) and each one
//                  waits for the one before: in one block they are separated by
//                  __syncthreads (global writes of a block are visible to its threads after
//                  the barrier), with no grid-wide sync and no second launch.
//                  table: 9 i32 per tensor (offset, len, batch, rows, cols, row_at, col_at,
//                  mean_at, v_at; rows = 0: unfactored). Phases per block:
//                    1. rms_p = sqrt(Σ p² / len) (f64, block tree sum);
//                    2. factored: each thread a row (Σ over its cols of g² + eps1, f64, in
//                       order): row = b2·row + c2·mean; each thread a column likewise; then
//                       each thread a matrix: row_mean = Σ row / rows. Unfactored:
//                       v = b2·v + c2·(g² + eps1);
//                    3. rms_u = sqrt(Σ u² / len), u = (rsqrt(row/row_mean)·rsqrt(col))·g or
//                       rsqrt(v)·g, the rsqrt as 1/sqrtf (IEEE, as the CPU);
//                    4. lr = rel_step·max(eps2, rms_p) (rel_step without scale_param), scale =
//                       lr / max(1, rms_u/clip); u·scale, through m with beta1 (use_m);
//                       p = (p + (−wd·lr)·p) − u. lrs[seg] = lr (f64).
//                  Reads grad and table; p, row, col, v, m, row_mean in place; writes lrs.
//                  Sums are deterministic (fixed thread-to-element mapping and tree).
#include "common.cuh"

struct Seg {
    int offset, len, batch, rows, cols, row_at, col_at, mean_at, v_at;
};

// The update of element j of a tensor before scaling.
__device__ __forceinline__ float raw_update(const Seg& s, const float* g, const float* row,
                                            const float* col, const float* v,
                                            const float* row_mean, float gs, int j) {
    const float gj = g[j] * gs;
    if (s.rows > 0) {
        const int rc = s.rows * s.cols;
        const int b = j / rc, r = j / s.cols % s.rows, c = j % s.cols;
        const float rf = 1.0f / sqrtf(row[s.row_at + b * s.rows + r] / row_mean[s.mean_at + b]);
        const float cf = 1.0f / sqrtf(col[s.col_at + b * s.cols + c]);
        return rf * cf * gj;
    }
    return 1.0f / sqrtf(v[s.v_at + j]) * gj;
}

KERNEL void adafactor_f32(float* p, const float* grad, const int* table, float* row, float* col,
                          float* v, float* m, float* row_mean, double* lrs, double rel_step,
                          int scale_param, double eps2, double clip, double wd, float gs,
                          float eps1, float b2, float c2, int use_m, float b1, float c1) {
    const int* w = table + 9 * blockIdx.x;
    const Seg s = {w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]};
    float* ps = p + s.offset;
    const float* g = grad + s.offset;
    const int tid = threadIdx.x, nt = blockDim.x;
    __shared__ double scratch[32];

    double acc = 0.0;
    for (int j = tid; j < s.len; j += nt) acc += (double)ps[j] * (double)ps[j];
    const double rms_p = sqrt(block_sum(acc, scratch) / (double)max(s.len, 1));

    if (s.rows > 0) {
        const int rows = s.rows, cols = s.cols, rc = rows * cols;
        for (int i = tid; i < s.batch * rows; i += nt) {
            const int b = i / rows, r = i % rows;
            const float* gr = g + b * rc + r * cols;
            double sum = 0.0;
            for (int c = 0; c < cols; ++c) {
                const float x = gr[c] * gs;
                sum += (double)(x * x + eps1);
            }
            float* x = row + s.row_at + i;
            *x = b2 * *x + c2 * (float)(sum / (double)cols);
        }
        for (int i = tid; i < s.batch * cols; i += nt) {
            const int b = i / cols, c = i % cols;
            const float* gc = g + b * rc + c;
            double sum = 0.0;
            for (int r = 0; r < rows; ++r) {
                const float x = gc[r * cols] * gs;
                sum += (double)(x * x + eps1);
            }
            float* x = col + s.col_at + i;
            *x = b2 * *x + c2 * (float)(sum / (double)rows);
        }
        __syncthreads();
        for (int b = tid; b < s.batch; b += nt) {
            const float* rb = row + s.row_at + b * rows;
            double sum = 0.0;
            for (int r = 0; r < rows; ++r) sum += (double)rb[r];
            row_mean[s.mean_at + b] = (float)(sum / (double)rows);
        }
    } else {
        for (int j = tid; j < s.len; j += nt) {
            const float x = g[j] * gs;
            float* vj = v + s.v_at + j;
            *vj = b2 * *vj + c2 * (x * x + eps1);
        }
    }
    __syncthreads();

    acc = 0.0;
    for (int j = tid; j < s.len; j += nt) {
        const double u = raw_update(s, g, row, col, v, row_mean, gs, j);
        acc += u * u;
    }
    const double rms_u = sqrt(block_sum(acc, scratch) / (double)max(s.len, 1));

    const double lr = scale_param ? rel_step * fmax(eps2, rms_p) : rel_step;
    const float scale = (float)(lr / fmax(rms_u / clip, 1.0));
    const float decay = (float)(-wd * lr);
    float* ms = use_m ? m + s.offset : nullptr;
    for (int j = tid; j < s.len; j += nt) {
        float u = raw_update(s, g, row, col, v, row_mean, gs, j) * scale;
        if (use_m) {
            const float mj = b1 * ms[j] + c1 * u;
            ms[j] = mj;
            u = mj;
        }
        const float pj = ps[j];
        ps[j] = (pj + decay * pj) - u;
    }
    if (tid == 0) lrs[blockIdx.x] = lr;
}
