// The kernels' tile sizes, threads per block and dynamic shared-memory sizes: everything the
// kernels and their Rust launchers must agree on, stated here once. The .cu files get it
// through common.cuh (nvcc for the PTX, the host C++ compiler for the emulator); build.rs
// translates it into Rust (OUT_DIR/tiles.rs, included by src/backend/cuda/tiles.rs), where
// the launchers size grids, blocks and dynamic shared memory from the same lines.
//
// So it is written in the part of C that reads the same in Rust, one definition per line
// (a trailing backslash continues one):
// - `#define NAME expr`: a constant; `#define NAME(a, b) expr`: a formula (a Rust `const fn`
//   of usize arguments, named in lower case);
// - expr: integers, names defined above, the parameters, + - * / % |, comparisons, and the
//   helpers TILE_MAX, TILE_IF (c ? a : b) and TILE_ROUND_UP; every `|` and comparison in
//   parentheses (their precedence differs between C and Rust); every value non-negative.
// Shared-memory formulas count bytes and must cover the carve-up of the kernel they name.
// Constants one side only uses (a kernel's internal paddings, a host-side policy) stay in
// that side's file.
#pragma once

// ---- helpers (build.rs gives Rust its own versions of these three) ----
#define TILE_MAX(a, b) ((a) > (b) ? (a) : (b))
#define TILE_IF(c, a, b) ((c) ? (a) : (b))
// (unsigned in C, so that a power-of-two m is a mask: every value here is non-negative)
#define TILE_ROUND_UP(x, m) ((int)(((unsigned)(x) + (m) - 1) / (m) * (m)))

// ---- linear.cu: the simple tiled GEMM ----
#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 16
// Each thread: a GEMM_TM x GEMM_TM micro-tile of C.
#define GEMM_TM 8
// Threads across a tile's columns, across its rows, in all (64).
#define GEMM_TX (GEMM_BN / GEMM_TM)
#define GEMM_TY (GEMM_BM / GEMM_TM)
#define GEMM_THREADS (GEMM_TX * GEMM_TY)

// ---- linear_fast.cu: the tensor-core GEMM and the LoRA weight gradients ----
// k-step, ring depth, halves of padding per A / nk-B row, floats per L row (16-byte rows).
#define LF_BK 32
#define LF_STAGES 3
#define LF_APAD 8
#define LF_LDL (LF_BK + 4)
// The three block tiles BM x BN (large 128x128, medium 128x64, small 64x64) and their warp
// tiles WM x WN.
#define LF_L_BM 128
#define LF_L_BN 128
#define LF_L_WM 64
#define LF_L_WN 32
#define LF_M_BM 128
#define LF_M_BN 64
#define LF_M_WM 64
#define LF_M_WN 32
#define LF_S_BM 64
#define LF_S_BN 64
#define LF_S_WM 32
#define LF_S_WN 32
#define LF_THREADS(bm, bn, wm, wn) ((bm) / (wm) * ((bn) / (wn)) * 32)
// Halves of one stage of A [BM][BK + APAD] and of B ([BK][BN + 8] when kn, else
// [BN][BK + APAD]).
#define LF_A_HALVES(bm) ((bm) * (LF_BK + LF_APAD))
#define LF_B_HALVES(bn, kn) TILE_IF((kn) != 0, LF_BK * ((bn) + 8), (bn) * (LF_BK + LF_APAD))
// Region 0: the A/B ring and the L ring of rank r (ranks padded to 4), reused after the main
// loop for the U stage [r][BN] f32; region 1 after it: h [BM][r | 1] f32.
#define LF_REGION0_BYTES(bm, bn, kn, r) \
    TILE_MAX(LF_STAGES * (LF_A_HALVES(bm) + LF_B_HALVES(bn, kn)) * 2 + \
             LF_STAGES * TILE_ROUND_UP(r, 4) * LF_LDL * 4, \
             (r) * (bn) * 4)
#define LF_SMEM_BYTES(bm, bn, kn, r) (LF_REGION0_BYTES(bm, bn, kn, r) + (bm) * ((r) | 1) * 4)
// linear_fast_lora_grad: columns and ranks of a block's tile, rows per step, threads.
#define LG_BN 64
#define LG_BR 16
#define LG_BM 32
#define LG_THREADS 256

// ---- conv.cu: output tile channels (BM) x pixels (BN), reduction chunk, threads ----
#define CONV_BM 64
#define CONV_BN 64
#define CONV_BK 32
#define CONV_THREADS 256
// conv.cu's weight gradient: threads of the block that reduces one dw element
#define CONV_WG_THREADS 256

// ---- conv_fast.cu: output tile pixels (BM) x channels (BN), threads ----
#define FC_BM 128
#define FC_BN 64
#define FC_THREADS 256

// ---- attention.cu ----
#define ATT_THREADS 128
// The widest head (d and dv).
#define ATT_MAX_D 256
// Forward and dQ: query rows per block, key rows per tile.
#define ATT_BQ 16
#define ATT_BK 32
// dK/dV: key rows per block, query rows per tile.
#define ATT_KB 16
#define ATT_QT 32
// f32 tiles; `w | 1` is an odd row stride.
#define ATT_FWD_SMEM(d, dv) \
    (4 * (ATT_BQ * (d) + ATT_BK * ((d) | 1) + ATT_BK * (dv) + ATT_BQ * (ATT_BK + 1) + 3 * ATT_BQ))
#define ATT_DQ_SMEM(d, dv) \
    (4 * (ATT_BQ * (d) + ATT_BQ * (dv) + ATT_BK * ((d) | 1) + ATT_BK * ((dv) | 1) + \
          ATT_BQ * (ATT_BK + 1) + 2 * ATT_BQ))
// dK and dV (`wk`, `wv`: 1 when the launch writes it, else 0): V and the dS tile for dK, the
// P tile for dV.
#define ATT_DKV_PART_SMEM(d, dv, wk, wv) \
    (4 * (ATT_KB * (d) + (wk) * ATT_KB * (dv) + ATT_QT * ((d) | 1) + ATT_QT * ((dv) | 1) + \
          ((wk) + (wv)) * ATT_KB * (ATT_QT + 1) + 2 * ATT_QT))
#define ATT_DKV_SMEM(d, dv) ATT_DKV_PART_SMEM(d, dv, 1, 1)

// ---- attention_fast.cu (head bucket dm: 64, 96 or 160) ----
#define AF_THREADS 128
// Rows of the tile a block owns (4 warps x 16).
#define AF_ROWS 64
// Key tile of the forward and dQ, query tile of dK/dV (register budget), smem row stride in
// halves.
#define AF_KT(dm) TILE_IF((dm) > 96, 32, 64)
#define AF_QT(dm) TILE_IF((dm) > 96, 16, 32)
#define AF_DS(dm) ((dm) + 8)
// The forward's and dQ's key tile halved (entry points `_kt<n>`), for the buckets whose
// AF_KT tile needs more than 64 KiB (sm_75's limit): 96 (fwd 66560, dQ 79872 bytes) and 160
// (dQ 86016 bytes).
#define AF_KT_SMALL(dm) (AF_KT(dm) / 2)
#define AF_FWD_SMEM(dm, kt) (2 * (AF_ROWS * AF_DS(dm) + 4 * (kt) * AF_DS(dm)))
#define AF_DQ_SMEM(dm, kt) (2 * (2 * AF_ROWS * AF_DS(dm) + 4 * (kt) * AF_DS(dm)))
#define AF_DKV_SMEM(dm) (2 * (2 * AF_ROWS * AF_DS(dm) + 4 * AF_QT(dm) * AF_DS(dm)) + 4 * 4 * AF_QT(dm))

// ---- attention_wide.cu: one block per query row, the row and a chunk of its scores in f32 ----
#define WIDE_THREADS 256
// The widest head (d and dv): each thread accumulates dv / WIDE_THREADS output columns.
#define WIDE_MAX_DIM 4096
#define WIDE_PER_THREAD (WIDE_MAX_DIM / WIDE_THREADS)
// Dynamic shared memory for a d-wide query row and a chunk of `lk` keys' scores.
#define WIDE_SMEM(d, lk) (4 * ((d) + (lk)))
// Its static shared memory: the block reductions' scratch (32 floats), which counts against
// the same per-block limit.
#define WIDE_STATIC_SMEM (4 * 32)

// ---- norm.cu, norm_fast.cu ----
#define NORM_MAX_THREADS 1024
#define GN_THREADS 128
// LayerNorm: rows (one warp each) per block.
#define LN_ROWS 4

// ---- layout.cu: the transpose tile and its block of TR_TILE x TR_ROWS threads ----
#define TR_TILE 32
#define TR_ROWS 8

// ---- diffusion.cu, optim.cu: elements per block of the reductions ----
#define MSE_CHUNK 4096
#define SQ_CHUNK 8192

// ---- optim8.cu: parameters per 8-bit quantisation block (bitsandbytes' blockwise optimizers'
// block size), one thread each ----
#define QUANT_BLOCK 256
