//! Fused ("flash") f32 attention, forward and backward: the maths of attention.rs, computed
//! per tile of query rows and tile of keys in cache, with an online softmax, instead of
//! [BLOCK, Lk] score blocks and separate packed GEMM calls.
//!
//! Forward, per head and tile of `MQ` query rows, s = 1/sqrt(d):
//!   for each tile of `NK` keys:  S = (s·Q)·Kᵀ [MQ, NK];  per row, m' = max(m, max_j S_j),
//!   O ← O·exp(m − m') + exp(S − m')·V,  l ← l·exp(m − m') + Σ_j exp(S_j − m'),  m ← m';
//!   then O /= l and lse = m + ln l (the same O and lse as attention.rs).
//! Backward, per head and tile of keys (dK, dV of the tile kept in cache), over every query
//! tile that sees it: P = exp(S − lse), dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − D),
//! dQ += dS·K (times s at the end), dK += dSᵀ·(s·Q); D_i = Σ_c dO_ic·O_ic.
//!
//! Every product is one register-blocked kernel, `product`: C[r, ..] (+)= Σ_t A[r, t]·B[t, ..]
//! with A read through any row and column strides (so Pᵀ needs no transpose) and B's rows
//! vectors of 8 lanes. The operands are packed per head first: Kᵀ and Vᵀ in [d, NK] tiles, K,
//! V, s·Q and dO in rows (zero-padded to whole vectors where they are a right operand); row
//! counts are padded with zero rows to multiples of the kernel's `ROW_ALIGN` rows. Padded keys
//! are masked out of the softmax, padded query rows are dropped.
//!
//! The arithmetic is plain Rust over `[f32; 8]` lanes that LLVM vectorises; on x86-64 with
//! AVX2 and FMA the whole pass is compiled a second time with those features and picked at
//! run time (as vexp.rs does). Work is split into one rayon task per (batch, head, part):
//! a head is cut into ranges of query tiles (forward) or key tiles (backward) when batch·heads
//! is below 8 tasks per thread (so that a busy or slow thread leaves no long tail); backward
//! parts add their dQ.
//!
//! Memory: the per-task tiles (a few tens of kB) and the packed operands of the heads in
//! flight; no [Lq, Lk] matrix and no [BLOCK, Lk] block.

use std::ops::Range;

use rayon::prelude::*;

use super::vexp::{self, madd};
use super::{data, tensor};
use crate::backend::check::attention::AttentionDims;
use crate::backend::{check, Attention};
use crate::error::Result;
use crate::tensor::Tensor;

/// Lanes of one vector of the kernel.
const LANES: usize = 8;
/// Rows of the kernel's register block; the tiles' row counts are padded to multiples of it.
const ROW_ALIGN: usize = 6;
/// Query rows per tile.
const MQ: usize = 48;
/// Keys per tile (a multiple of both `LANES` and `ROW_ALIGN`).
const NK: usize = 96;

/// Which compiled copy of the kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The baseline target's SIMD, separate multiplies and adds: runs on every CPU.
    Portable,
    /// AVX2 with fused multiply-adds (x86-64 CPUs that have both).
    Avx2Fma,
}

impl Kernel {
    /// The fastest copy this CPU runs.
    pub fn detect() -> Kernel {
        if vexp::avx2_fma() {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }
    /// Whether this CPU can run the copy.
    fn available(self) -> bool {
        self == Kernel::Portable || Kernel::detect() == Kernel::Avx2Fma
    }
}

/// Whether the fused path takes a call of these sizes (empty ones go to attention.rs).
pub fn applies(n: &AttentionDims) -> bool {
    n.batch > 0 && n.q_len > 0 && n.kv_len > 0 && n.v_head_dim > 0
}

/// f32 attention forward through the fused path: O and lse as `AttentionOps::attention`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: Attention,
    kernel: Kernel,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let n = check::attention::forward(q, k, v, p)?;
    assert!(
        kernel.available(),
        "{kernel:?} kernels on a CPU without them"
    );
    let (qd, kd, vd) = (
        data::<f32>(OP, "q", q)?,
        data::<f32>(OP, "k", k)?,
        data::<f32>(OP, "v", v)?,
    );
    if !applies(&n) {
        return super::attention::forward_t::<f32>(q, k, v, n);
    }
    let g = Geometry::new(n);
    let parts: Vec<(Vec<f32>, Vec<f32>)> = g
        .tasks(g.q_tiles)
        .into_par_iter()
        .map(|(bh, tiles)| {
            let heads = HeadsIn {
                q: qd,
                k: kd,
                v: vd,
            };
            forward_in(kernel, &g, &heads, bh, tiles)
        })
        .collect();

    // Parts are in (b, h, query tile) order: exactly lse's [B, H, Lq] layout.
    let lse: Vec<f32> = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
    let (dv, heads, lq) = (n.v_head_dim, n.heads, n.q_len);
    let mut o = vec![0f32; n.batch * lq * heads * dv];
    let per_head = g.parts_per_head;
    let rows_per_part = g.tiles_per_part(g.q_tiles) * MQ;
    o.par_chunks_mut(heads * dv)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, i) = (row / lq, row % lq);
            for (h, dst) in dst.chunks_mut(dv).enumerate() {
                let part = &parts[(b * heads + h) * per_head + i / rows_per_part].0;
                dst.copy_from_slice(&part[(i % rows_per_part) * dv..][..dv]);
            }
        });
    Ok((tensor(n.o_shape(), o)?, tensor(n.lse_shape(), lse)?))
}

/// f32 attention backward through the fused path: (dQ, dK, dV) as
/// `AttentionOps::attention_backward`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    p: Attention,
    kernel: Kernel,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let n = check::attention::backward(q, k, v, o, lse, d_o, p)?;
    assert!(
        kernel.available(),
        "{kernel:?} kernels on a CPU without them"
    );
    let ins = BackIn {
        heads: HeadsIn {
            q: data::<f32>(OP, "q", q)?,
            k: data::<f32>(OP, "k", k)?,
            v: data::<f32>(OP, "v", v)?,
        },
        o: data::<f32>(OP, "o", o)?,
        lse: data::<f32>(OP, "lse", lse)?,
        d_o: data::<f32>(OP, "d_o", d_o)?,
    };
    if !applies(&n) {
        return super::attention::backward_t::<f32>(q, k, v, o, lse, d_o, n);
    }
    let g = Geometry::new(n);
    let parts: Vec<BackPart> = g
        .tasks(g.k_tiles)
        .into_par_iter()
        .map(|(bh, tiles)| backward_in(kernel, &g, &ins, bh, tiles))
        .collect();

    let (lq, lk, d, dv, heads) = (n.q_len, n.kv_len, n.head_dim, n.v_head_dim, n.heads);
    let per_head = g.parts_per_head;
    let keys_per_part = g.tiles_per_part(g.k_tiles) * NK;
    let scale = g.scale;
    let mut dq = vec![0f32; n.batch * lq * heads * d];
    dq.par_chunks_mut(heads * d)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, i) = (row / lq, row % lq);
            for (h, dst) in dst.chunks_mut(d).enumerate() {
                let bh = b * heads + h;
                for part in &parts[bh * per_head..(bh + 1) * per_head] {
                    for (x, &y) in dst.iter_mut().zip(&part.dq[i * g.dp..][..d]) {
                        *x += y;
                    }
                }
                for x in dst {
                    *x *= scale;
                }
            }
        });
    let keys = |w: usize, wp: usize, pick: fn(&BackPart) -> &Vec<f32>| {
        let mut out = vec![0f32; n.batch * lk * heads * w];
        out.par_chunks_mut(heads * w)
            .enumerate()
            .for_each(|(row, dst)| {
                let (b, j) = (row / lk, row % lk);
                for (h, dst) in dst.chunks_mut(w).enumerate() {
                    let part = &parts[(b * heads + h) * per_head + j / keys_per_part];
                    dst.copy_from_slice(&pick(part)[(j % keys_per_part) * wp..][..w]);
                }
            });
        out
    };
    let dk = keys(d, g.dp, |p| &p.dk);
    let dvv = keys(dv, g.dvp, |p| &p.dv);
    Ok((
        tensor(q.shape().clone(), dq)?,
        tensor(k.shape().clone(), dk)?,
        tensor(v.shape().clone(), dvv)?,
    ))
}

/// `forward_part` in the copy `kernel` asks for.
fn forward_in(
    kernel: Kernel,
    g: &Geometry,
    x: &HeadsIn,
    bh: usize,
    tiles: Range<usize>,
) -> (Vec<f32>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2Fma {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(
            g: &Geometry,
            x: &HeadsIn,
            bh: usize,
            tiles: Range<usize>,
        ) -> (Vec<f32>, Vec<f32>) {
            forward_part::<true>(g, x, bh, tiles)
        }
        // SAFETY: `Kernel::Avx2Fma` only runs where `available` saw the features.
        return unsafe { avx2(g, x, bh, tiles) };
    }
    let _ = kernel;
    forward_part::<false>(g, x, bh, tiles)
}

/// `backward_part` in the copy `kernel` asks for.
fn backward_in(
    kernel: Kernel,
    g: &Geometry,
    x: &BackIn,
    bh: usize,
    tiles: Range<usize>,
) -> BackPart {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2Fma {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(g: &Geometry, x: &BackIn, bh: usize, tiles: Range<usize>) -> BackPart {
            backward_part::<true>(g, x, bh, tiles)
        }
        // SAFETY: `Kernel::Avx2Fma` only runs where `available` saw the features.
        return unsafe { avx2(g, x, bh, tiles) };
    }
    let _ = kernel;
    backward_part::<false>(g, x, bh, tiles)
}

/// The inputs of one call, [B, L, H·w] each.
#[derive(Clone, Copy)]
struct HeadsIn<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

/// The backward's inputs.
struct BackIn<'a> {
    heads: HeadsIn<'a>,
    o: &'a [f32],
    lse: &'a [f32],
    d_o: &'a [f32],
}

/// What one backward task returns: its dQ share [Lq, dp] (not yet times s), and dK [keys, dp]
/// and dV [keys, dvp] of its key range.
struct BackPart {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Sizes and the task split of one call.
struct Geometry {
    n: AttentionDims,
    scale: f32,
    /// d and dv rounded up to whole vectors.
    dp: usize,
    dvp: usize,
    q_tiles: usize,
    k_tiles: usize,
    parts_per_head: usize,
}

impl Geometry {
    fn new(n: AttentionDims) -> Self {
        let heads = n.batch * n.heads;
        let want = (8 * rayon::current_num_threads()).div_ceil(heads).max(1);
        let q_tiles = n.q_len.div_ceil(MQ);
        let k_tiles = n.kv_len.div_ceil(NK);
        Geometry {
            n,
            scale: (1.0 / (n.head_dim as f64).sqrt()) as f32,
            dp: n.head_dim.next_multiple_of(LANES),
            dvp: n.v_head_dim.next_multiple_of(LANES),
            q_tiles,
            k_tiles,
            // The same count for the forward's query tiles and the backward's key tiles, so
            // that part p of a head is always its tiles p·t.. (the last part may be short).
            parts_per_head: want.min(q_tiles).min(k_tiles),
        }
    }
    fn tiles_per_part(&self, tiles: usize) -> usize {
        tiles.div_ceil(self.parts_per_head)
    }
    /// One task per (batch·head, range of tiles), in that order.
    fn tasks(&self, tiles: usize) -> Vec<(usize, Range<usize>)> {
        let per = self.tiles_per_part(tiles);
        (0..self.n.batch * self.n.heads)
            .flat_map(|bh| {
                (0..self.parts_per_head)
                    .map(move |p| (bh, (p * per).min(tiles)..((p + 1) * per).min(tiles)))
            })
            .collect()
    }
    /// Offset of element c of row i of head bh in a [B, L, H·w] tensor.
    fn at(&self, bh: usize, len: usize, w: usize, i: usize) -> usize {
        let (b, h) = (bh / self.n.heads, bh % self.n.heads);
        ((b * len + i) * self.n.heads + h) * w
    }
    /// Keys of tile t that query i sees (0 if none).
    fn seen(&self, i: usize, t: usize) -> usize {
        self.n.keys_seen(i).saturating_sub(t * NK).min(NK)
    }
    /// Packs rows r0..r0+rows of head bh of a [B, L, H·w] tensor into [rows_p, wp] rows
    /// (times `f`), zero-padded in both directions.
    #[allow(clippy::too_many_arguments)]
    fn pack_rows(
        &self,
        x: &[f32],
        len: usize,
        w: usize,
        wp: usize,
        bh: usize,
        r0: usize,
        rows_p: usize,
        f: f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; rows_p * wp];
        for (r, dst) in out.chunks_mut(wp).enumerate().take(len.saturating_sub(r0)) {
            let src = &x[self.at(bh, len, w, r0 + r)..][..w];
            for (y, &s) in dst.iter_mut().zip(src) {
                *y = s * f;
            }
        }
        out
    }
    /// Packs keys of tiles `tiles` of head bh of a [B, Lk, H·w] tensor transposed, one
    /// [w, NK] block per tile, zero-padded.
    fn pack_cols(&self, x: &[f32], w: usize, bh: usize, tiles: &Range<usize>) -> Vec<f32> {
        let lk = self.n.kv_len;
        let mut out = vec![0f32; tiles.len() * w * NK];
        for (tile, blk) in tiles.clone().zip(out.chunks_mut(w * NK)) {
            for j in 0..NK.min(lk - tile * NK) {
                let src = &x[self.at(bh, lk, w, tile * NK + j)..][..w];
                for (c, &s) in src.iter().enumerate() {
                    blk[c * NK + j] = s;
                }
            }
        }
        out
    }
}

/// O [rows, dv] and lse [rows] of the query tiles `tiles` of head bh.
#[inline(always)]
fn forward_part<const FMA: bool>(
    g: &Geometry,
    x: &HeadsIn,
    bh: usize,
    tiles: Range<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let n = &g.n;
    let (lq, lk, d, dv, dvp) = (n.q_len, n.kv_len, n.head_dim, n.v_head_dim, g.dvp);
    let all_keys = 0..g.k_tiles;
    let kt = g.pack_cols(x.k, d, bh, &all_keys);
    let vp = g.pack_rows(x.v, lk, dv, dvp, bh, 0, g.k_tiles * NK, 1.0);
    let q0 = (tiles.start * MQ).min(lq);
    let rows_all = (tiles.end * MQ).min(lq) - q0;
    let mut o_out = vec![0f32; rows_all * dv];
    let mut lse_out = vec![0f32; rows_all];
    let mut s = vec![0f32; MQ * NK];
    let mut o = vec![0f32; MQ * dvp];
    let (mut m, mut l) = ([0f32; MQ], [0f32; MQ]);
    for tile in tiles {
        let i0 = tile * MQ;
        let rows = MQ.min(lq - i0);
        let rows_p = rows.next_multiple_of(ROW_ALIGN);
        let qs = g.pack_rows(x.q, lq, d, d, bh, i0, rows_p, g.scale);
        o.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        let last_tile = n.keys_seen(i0 + rows - 1).div_ceil(NK);
        for t in 0..last_tile {
            // S = (s·Q)·Kᵀ for this tile of keys.
            product::<FMA>(
                Lhs::rows(&qs, d),
                Rhs::new(&kt[t * d * NK..][..d * NK], NK),
                d,
                Out::new(&mut s, NK, rows_p, NK, false),
            );
            for (r, row) in s.chunks_mut(NK).enumerate().take(rows_p) {
                let seen = if r < rows { g.seen(i0 + r, t) } else { 0 };
                let (seen_s, masked) = row.split_at_mut(seen);
                masked.fill(0.0);
                if seen == 0 {
                    continue;
                }
                let m_new = m[r].max(row_max(seen_s));
                let sum = vexp::exp_sub_sum_body::<FMA>(seen_s, m_new);
                let alpha = vexp::exp::<FMA>(m[r] - m_new);
                l[r] = l[r] * alpha + sum;
                if alpha != 1.0 {
                    for y in &mut o[r * dvp..][..dvp] {
                        *y *= alpha;
                    }
                }
                m[r] = m_new;
            }
            // O += exp(S − m)·V for this tile's keys.
            let kn = NK.min(lk - t * NK);
            product::<FMA>(
                Lhs::rows(&s, NK),
                Rhs::new(&vp[t * NK * dvp..][..kn * dvp], dvp),
                kn,
                Out::new(&mut o, dvp, rows_p, dvp, true),
            );
        }
        let r_out = i0 - q0;
        for r in 0..rows {
            let inv = 1.0 / l[r];
            for (y, &x) in o_out[(r_out + r) * dv..][..dv]
                .iter_mut()
                .zip(&o[r * dvp..])
            {
                *y = x * inv;
            }
            lse_out[r_out + r] = m[r] + l[r].ln();
        }
    }
    (o_out, lse_out)
}

/// dQ share, dK and dV of the key tiles `tiles` of head bh.
#[inline(always)]
fn backward_part<const FMA: bool>(
    g: &Geometry,
    x: &BackIn,
    bh: usize,
    tiles: Range<usize>,
) -> BackPart {
    let n = &g.n;
    let (lq, lk, d, dv, dp, dvp) = (n.q_len, n.kv_len, n.head_dim, n.v_head_dim, g.dp, g.dvp);
    let lq_p = g.q_tiles * MQ;
    let k0 = tiles.start * NK;
    // s·Q and dO of every query, D_i = Σ dO·O; Kᵀ, Vᵀ and K of this part's keys.
    let qs = g.pack_rows(x.heads.q, lq, d, dp, bh, 0, lq_p, g.scale);
    let dop = g.pack_rows(x.d_o, lq, dv, dvp, bh, 0, lq_p, 1.0);
    let dsum: Vec<f32> = (0..lq)
        .map(|i| {
            let at = g.at(bh, lq, dv, i);
            let (a, b) = (&x.d_o[at..][..dv], &x.o[at..][..dv]);
            a.iter().zip(b).map(|(&p, &q)| p * q).sum()
        })
        .collect();
    let lse = &x.lse[bh * lq..][..lq];
    let kt = g.pack_cols(x.heads.k, d, bh, &tiles);
    let vt = g.pack_cols(x.heads.v, dv, bh, &tiles);
    let kp = g.pack_rows(x.heads.k, lk, d, dp, bh, k0, tiles.len() * NK, 1.0);

    let mut dq = vec![0f32; lq_p * dp];
    let mut dk = vec![0f32; tiles.len() * NK * dp];
    let mut dvv = vec![0f32; tiles.len() * NK * dvp];
    let (mut ps, mut dps) = (vec![0f32; MQ * NK], vec![0f32; MQ * NK]);
    for (ti, t) in tiles.enumerate() {
        let kn = NK.min(lk - t * NK);
        let kt_t = &kt[ti * d * NK..][..d * NK];
        let vt_t = &vt[ti * dv * NK..][..dv * NK];
        let kp_t = &kp[ti * NK * dp..][..kn * dp];
        let dk_t = &mut dk[ti * NK * dp..][..NK * dp];
        let dv_t = &mut dvv[ti * NK * dvp..][..NK * dvp];
        // Causal: the first query that sees key t·NK is query t·NK.
        let first_q_tile = if n.causal { t * NK / MQ } else { 0 };
        for qt in first_q_tile..g.q_tiles {
            let i0 = qt * MQ;
            let rows = MQ.min(lq - i0);
            let rows_p = rows.next_multiple_of(ROW_ALIGN);
            let qs_t = &qs[i0 * dp..][..rows_p * dp];
            let do_t = &dop[i0 * dvp..][..rows_p * dvp];
            // P = exp(S − lse), zero where masked or padded.
            product::<FMA>(
                Lhs::rows(qs_t, dp),
                Rhs::new(kt_t, NK),
                d,
                Out::new(&mut ps, NK, rows_p, NK, false),
            );
            for (r, row) in ps.chunks_mut(NK).enumerate().take(rows_p) {
                let seen = if r < rows { g.seen(i0 + r, t) } else { 0 };
                let (seen_s, masked) = row.split_at_mut(seen);
                masked.fill(0.0);
                if seen > 0 {
                    vexp::exp_sub_sum_body::<FMA>(seen_s, lse[i0 + r]);
                }
            }
            // dV += Pᵀ·dO
            product::<FMA>(
                Lhs::cols(&ps, NK),
                Rhs::new(do_t, dvp),
                rows_p,
                Out::new(dv_t, dvp, NK, dvp, true),
            );
            // dP = dO·Vᵀ
            product::<FMA>(
                Lhs::rows(do_t, dvp),
                Rhs::new(vt_t, NK),
                dv,
                Out::new(&mut dps, NK, rows_p, NK, false),
            );
            // dS = P∘(dP − D), in place of P.
            for (r, (prow, dprow)) in ps.chunks_mut(NK).zip(dps.chunks(NK)).take(rows).enumerate() {
                let di = dsum[i0 + r];
                for (p, &dpv) in prow.iter_mut().zip(dprow) {
                    *p *= dpv - di;
                }
            }
            // dQ += dS·K;  dK += dSᵀ·(s·Q)
            product::<FMA>(
                Lhs::rows(&ps, NK),
                Rhs::new(kp_t, dp),
                kn,
                Out::new(&mut dq[i0 * dp..][..rows_p * dp], dp, rows_p, dp, true),
            );
            product::<FMA>(
                Lhs::cols(&ps, NK),
                Rhs::new(qs_t, dp),
                rows_p,
                Out::new(dk_t, dp, NK, dp, true),
            );
        }
    }
    BackPart { dq, dk, dv: dvv }
}

/// The largest value of a non-empty slice, 8 lanes at a time.
#[inline(always)]
fn row_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    acc.iter().fold(tail, |m, &x| m.max(x))
}

/// The left operand of a product: A[r, t] = data[r·rs + t·ts].
#[derive(Clone, Copy)]
struct Lhs<'a> {
    data: &'a [f32],
    rs: usize,
    ts: usize,
}

impl<'a> Lhs<'a> {
    /// A row-major matrix with rows `ld` apart.
    fn rows(data: &'a [f32], ld: usize) -> Self {
        Lhs {
            data,
            rs: ld,
            ts: 1,
        }
    }
    /// The transpose of a row-major matrix with rows `ld` apart.
    fn cols(data: &'a [f32], ld: usize) -> Self {
        Lhs {
            data,
            rs: 1,
            ts: ld,
        }
    }
}

/// The right operand: row t is data[t·ld..], read in whole vectors.
#[derive(Clone, Copy)]
struct Rhs<'a> {
    data: &'a [f32],
    ld: usize,
}

impl<'a> Rhs<'a> {
    fn new(data: &'a [f32], ld: usize) -> Self {
        Rhs { data, ld }
    }
}

/// The result: `rows` (a multiple of `ROW_ALIGN`) rows of `width` (whole vectors), `ld` apart;
/// overwritten, or added to when `add`.
struct Out<'a> {
    data: &'a mut [f32],
    ld: usize,
    rows: usize,
    width: usize,
    add: bool,
}

impl<'a> Out<'a> {
    fn new(data: &'a mut [f32], ld: usize, rows: usize, width: usize, add: bool) -> Self {
        Out {
            data,
            ld,
            rows,
            width,
            add,
        }
    }
}

/// C (+)= A·B over k terms, in register blocks of `ROW_ALIGN` rows by 2 vectors.
#[inline(always)]
fn product<const FMA: bool>(a: Lhs, b: Rhs, k: usize, mut c: Out) {
    assert!(c.rows.is_multiple_of(ROW_ALIGN) && c.width.is_multiple_of(LANES));
    if c.rows == 0 || c.width == 0 {
        return;
    }
    assert!(
        c.data.len() >= (c.rows - 1) * c.ld + c.width,
        "product: C too small"
    );
    if k > 0 {
        assert!(
            a.data.len() > (c.rows - 1) * a.rs + (k - 1) * a.ts,
            "product: A too small"
        );
        assert!(
            b.data.len() >= (k - 1) * b.ld + c.width,
            "product: B too small"
        );
    }
    let mut col = 0;
    while col < c.width {
        // Register blocks of 6 rows by 2 vectors: 12 accumulators, 2 vectors of B and a
        // broadcast of A fill 15 of AVX2's 16 registers.
        let nv = ((c.width - col) / LANES).min(2);
        if nv == 2 {
            blocks::<ROW_ALIGN, 2, FMA>(&a, &b, k, &mut c, col)
        } else {
            blocks::<ROW_ALIGN, 1, FMA>(&a, &b, k, &mut c, col)
        }
        col += nv * LANES;
    }
}

/// Columns col..col+NV·8 of every row of C, R rows at a time (`product` checked the bounds).
#[inline(always)]
fn blocks<const R: usize, const NV: usize, const FMA: bool>(
    a: &Lhs,
    b: &Rhs,
    k: usize,
    c: &mut Out,
    col: usize,
) {
    let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr());
    let cp = c.data.as_mut_ptr();
    for r0 in (0..c.rows).step_by(R) {
        let mut acc = [[[0f32; LANES]; NV]; R];
        for t in 0..k {
            // SAFETY: `product` asserted that A's rows up to c.rows and terms up to k, and
            // B's rows up to k at width c.width, lie inside their slices.
            let bv: [[f32; LANES]; NV] = std::array::from_fn(|v| unsafe {
                std::ptr::read_unaligned(bp.add(t * b.ld + col + v * LANES) as *const [f32; LANES])
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let x = unsafe { *ap.add((r0 + r) * a.rs + t * a.ts) };
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    for (y, &z) in acc.iter_mut().zip(bv) {
                        *y = madd::<FMA>(x, z, *y);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: `product` asserted C's rows and width; C is exclusively borrowed
                // through `c`.
                let dst = unsafe {
                    &mut *(cp.add((r0 + r) * c.ld + col + v * LANES) as *mut [f32; LANES])
                };
                if c.add {
                    for (y, &z) in dst.iter_mut().zip(acc) {
                        *y += z;
                    }
                } else {
                    *dst = *acc;
                }
            }
        }
    }
}
