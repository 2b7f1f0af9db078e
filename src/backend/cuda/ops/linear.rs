//! Linear layers with an optional LoRA and its dropout mask, forward and backward
//! (kernels/linear.cu): every product is one launch of the tiled GEMM `gemm_<A>_<B>_<C>`,
//! whose strides express the transposes and whose second product folds the LoRA term into
//! the main one; the skinny LoRA weight gradients (reductions over all rows) are split over
//! the rows and summed in a fixed order by `splitk_sum_f32`.
//!
//! Forward (x [M, in], W [out, in], A [r, in], B [out, r], mask K [M, r], s = scale):
//!   ũ = (x·Aᵀ) ⊙ K            gemm_T_f32_f32, f32 [M, r]          (`lora_hidden`)
//!   y = x·Wᵀ + b + s·ũ·Bᵀ     gemm_T_T_T with the second product ũ·Bᵀ
//! Backward (dY [M, out]):
//!   g  = (dY·B) ⊙ K           gemm_T_f32_f32, f32 [M, r]
//!   dB (+)= s·dYᵀ·ũ           gemm_T_f32_f32, split over rows
//!   dA (+)= s·gᵀ·x            gemm_f32_T_f32, split over rows
//!   dX = dY·W + s·g·A         gemm_T_T_T with the second product g·A (when asked)
//! T (x, W, bias, mask, y, dY, dX) is f16, bf16 or f32; A, B, ũ, g and the gradients are f32.
//!
//! On f16 backends, and bf16 ones on compute capability 8.0+ (`CudaBackend::fast16`), with fast
//! GEMMs (`KernelChoice::gemm`) the same products run on the tensor-core kernels of
//! kernels/linear_fast.cu (linear/fast.rs; activations in the backend's dtype): y and ũ in one
//! launch, dX and g in one launch, dB and dA as ordered row-split reductions; shapes they
//! decline (see linear/fast.rs) take the kernels above.

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::{GEMM_BK, GEMM_BM, GEMM_BN, GEMM_THREADS};
use super::{alloc, float_dtype, input, int, output, BLOCK};
use crate::backend::{
    check, Accum, Adapter, AdapterBackward, BackendInfo, LinearOps, LinearOut, LoraBackward,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

mod fast;

kernels! {
    module "linear";
    fn gemm_f32_f32_f32(m: i32, n: i32, a: In, sam: i32, sak: i32, b: In, sbk: i32, sbn: i32,
        k: i32, alpha: f32, a2: In, sa2m: i32, sa2k: i32, b2: In, sb2k: i32, sb2n: i32, k2: i32,
        alpha2: f32, bias: In, mask: In, c: Out, beta: f32, partial: Out, kchunk: i32);
    fn gemm_f16_f16_f16(m: i32, n: i32, a: In, sam: i32, sak: i32, b: In, sbk: i32, sbn: i32,
        k: i32, alpha: f32, a2: In, sa2m: i32, sa2k: i32, b2: In, sb2k: i32, sb2n: i32, k2: i32,
        alpha2: f32, bias: In, mask: In, c: Out, beta: f32, partial: Out, kchunk: i32);
    fn gemm_f16_f32_f32(m: i32, n: i32, a: In, sam: i32, sak: i32, b: In, sbk: i32, sbn: i32,
        k: i32, alpha: f32, a2: In, sa2m: i32, sa2k: i32, b2: In, sb2k: i32, sb2n: i32, k2: i32,
        alpha2: f32, bias: In, mask: In, c: Out, beta: f32, partial: Out, kchunk: i32);
    fn gemm_f32_f16_f32(m: i32, n: i32, a: In, sam: i32, sak: i32, b: In, sbk: i32, sbn: i32,
        k: i32, alpha: f32, a2: In, sa2m: i32, sa2k: i32, b2: In, sb2k: i32, sb2n: i32, k2: i32,
        alpha2: f32, bias: In, mask: In, c: Out, beta: f32, partial: Out, kchunk: i32);
    fn gemm_bf16_bf16_bf16(m: i32, n: i32, a: In, sam: i32, sak: i32, b: In, sbk: i32, sbn: i32,
        k: i32, alpha: f32, a2: In, sa2m: i32, sa2k: i32, b2: In, sb2k: i32, sb2n: i32, k2: i32,
        alpha2: f32, bias: In, mask: In, c: Out, beta: f32, partial: Out, kchunk: i32);
    fn gemm_bf16_f32_f32(m: i32, n: i32, a: In, sam: i32, sak: i32, b: In, sbk: i32, sbn: i32,
        k: i32, alpha: f32, a2: In, sa2m: i32, sa2k: i32, b2: In, sb2k: i32, sb2n: i32, k2: i32,
        alpha2: f32, bias: In, mask: In, c: Out, beta: f32, partial: Out, kchunk: i32);
    fn gemm_f32_bf16_f32(m: i32, n: i32, a: In, sam: i32, sak: i32, b: In, sbk: i32, sbn: i32,
        k: i32, alpha: f32, a2: In, sa2m: i32, sa2k: i32, b2: In, sb2k: i32, sb2n: i32, k2: i32,
        alpha2: f32, bias: In, mask: In, c: Out, beta: f32, partial: Out, kchunk: i32);
    fn splitk_sum_f32(partial: In, c: Out, n: i32, splits: i32, beta: f32);
}

/// A null device pointer (an absent bias, mask, second product or split workspace).
const NULL_IN: In = In(0);
const NULL_OUT: Out = Out(0);

/// One GEMM operand as the kernel sees it: element (i, j) at `ptr[i·s0 + j·s1]` (A: (m, k),
/// B: (k, n)).
#[derive(Clone, Copy)]
struct Operand {
    ptr: In,
    dtype: DType,
    s0: i32,
    s1: i32,
}

impl Operand {
    /// (i, j) = t[i][j] of a row-major matrix with `ld` columns.
    fn rows(ptr: In, dtype: DType, ld: i32) -> Operand {
        Operand {
            ptr,
            dtype,
            s0: ld,
            s1: 1,
        }
    }
    /// (i, j) = t[j][i] of a row-major matrix with `ld` columns (its transpose).
    fn cols(ptr: In, dtype: DType, ld: i32) -> Operand {
        Operand {
            ptr,
            dtype,
            s0: 1,
            s1: ld,
        }
    }
}

/// C [m, n] = alpha·A·B (+ alpha2·A2·B2) (⊙ mask) (+ bias) (+ beta·C); A [m, k], B [k, n],
/// A2 [m, k2], B2 [k2, n] f32; bias [n] and mask [m, n] in the activation dtype.
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    alpha: f32,
    second: Option<(Operand, Operand, usize, f32)>,
    bias: Option<In>,
    mask: Option<In>,
    beta: f32,
}

type GemmFn = fn(
    &crate::backend::cuda::Device,
    LaunchCfg,
    i32,
    i32,
    In,
    i32,
    i32,
    In,
    i32,
    i32,
    i32,
    f32,
    In,
    i32,
    i32,
    In,
    i32,
    i32,
    i32,
    f32,
    In,
    In,
    Out,
    f32,
    Out,
    i32,
) -> Result<()>;

/// The instantiation for operand dtypes (A, B) and output dtype C.
fn kernel_for(op: &'static str, a: DType, b: DType, c: DType) -> Result<GemmFn> {
    use DType::{BF16, F16, F32};
    Ok(match (a, b, c) {
        (F32, F32, F32) => gemm_f32_f32_f32,
        (F16, F16, F16) => gemm_f16_f16_f16,
        (F16, F32, F32) => gemm_f16_f32_f32,
        (F32, F16, F32) => gemm_f32_f16_f32,
        (BF16, BF16, BF16) => gemm_bf16_bf16_bf16,
        (BF16, F32, F32) => gemm_bf16_f32_f32,
        (F32, BF16, F32) => gemm_f32_bf16_f32,
        _ => {
            return Err(Error::Cuda {
                what: format!("{op}: GEMM"),
                detail: format!("no kernel for operands {a:?} x {b:?} -> {c:?}"),
            })
        }
    })
}

impl Gemm {
    /// Runs the product into `c` (dtype `c_dtype`) in one launch.
    fn run(&self, be: &CudaBackend, op: &'static str, c: Out, c_dtype: DType) -> Result<()> {
        if self.m == 0 || self.n == 0 {
            return Ok(());
        }
        let f = kernel_for(op, self.a.dtype, self.b.dtype, c_dtype)?;
        let k = int(op, "k", self.k)?;
        self.launch(be, op, f, c, NULL_OUT, 1, k.max(1))
    }

    /// Runs the product into the f32 `c` with the k range split over blocks, for a long k and
    /// a small C (the LoRA weight gradients): each split writes its partial C to a workspace,
    /// then the splits are added in order (so results do not depend on scheduling) and beta
    /// applied. No mask or bias (the partial sums skip the epilogue).
    fn run_split(&self, be: &CudaBackend, op: &'static str, c: Out) -> Result<()> {
        debug_assert!(self.mask.is_none() && self.bias.is_none());
        if self.m == 0 || self.n == 0 {
            return Ok(());
        }
        let f = kernel_for(op, self.a.dtype, self.b.dtype, DType::F32)?;
        let tiles = self.m.div_ceil(GEMM_BM) * self.n.div_ceil(GEMM_BN);
        // Aim at about 1024 blocks, splits of at least 64 rows (4 k-steps), at most 64 splits.
        let want = (1024 / tiles).clamp(1, 64);
        let chunk = self.k.div_ceil(want).next_multiple_of(GEMM_BK).max(64);
        let splits = self.k.div_ceil(chunk).max(1);
        if splits == 1 {
            return self.run(be, op, c, DType::F32);
        }
        let mn = self.m * self.n;
        int(op, "split-K workspace", splits * mn)?;
        let mut ws = alloc(be, [splits, self.m, self.n], DType::F32)?;
        let wo = output(be, op, "split-K workspace", &mut ws)?;
        let chunk = int(op, "k", chunk)?;
        self.launch(be, op, f, NULL_OUT, wo, splits, chunk)?;
        let n = int(op, "c", mn)?;
        splitk_sum_f32(
            be.device(),
            LaunchCfg::for_items(mn, BLOCK),
            In(wo.0),
            c,
            n,
            splits as i32,
            self.beta,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        be: &CudaBackend,
        op: &'static str,
        f: GemmFn,
        c: Out,
        partial: Out,
        splits: usize,
        kchunk: i32,
    ) -> Result<()> {
        let (m, n) = (int(op, "m", self.m)?, int(op, "n", self.n)?);
        let k = int(op, "k", self.k)?;
        let (a2, b2, k2, alpha2) = match self.second {
            Some((a2, b2, k2, alpha2)) => (a2, b2, int(op, "k2", k2)?, alpha2),
            None => {
                let none = Operand::rows(NULL_IN, DType::F32, 0);
                (none, none, 0, 0.0)
            }
        };
        let grid = (
            self.m.div_ceil(GEMM_BM) as u32,
            self.n.div_ceil(GEMM_BN) as u32,
            splits as u32,
        );
        f(
            be.device(),
            LaunchCfg::new(grid, (GEMM_THREADS as u32, 1, 1), 0),
            m,
            n,
            self.a.ptr,
            self.a.s0,
            self.a.s1,
            self.b.ptr,
            self.b.s0,
            self.b.s1,
            k,
            self.alpha,
            a2.ptr,
            a2.s0,
            a2.s1,
            b2.ptr,
            b2.s0,
            b2.s1,
            k2,
            alpha2,
            self.bias.unwrap_or(NULL_IN),
            self.mask.unwrap_or(NULL_IN),
            c,
            self.beta,
            partial,
            kchunk,
        )
    }
}

impl LinearOps for CudaBackend {
    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        adapter: Option<Adapter<'_>>,
    ) -> Result<LinearOut> {
        const OP: &str = "linear";
        // The one adapter kind so far (a new kind of `Adapter` stops the build here).
        let lora = adapter.map(|Adapter::Lora(l)| l);
        let d = check::linear::forward(x, w, bias, lora.as_ref())?;
        let (rows, inf, outf, r) = (d.rows, d.in_features, d.out_features, d.rank);
        let xi = input(self, OP, "x", x)?;
        let wi = input(self, OP, "w", w)?;
        let bi = bias.map(|b| input(self, OP, "bias", b)).transpose()?;
        let li = lora
            .map(|l| -> Result<_> {
                Ok((
                    input(self, OP, "lora down (A)", l.down)?,
                    input(self, OP, "lora up (B)", l.up)?,
                    l.dropout
                        .map(|m| input(self, OP, "lora dropout mask", m))
                        .transpose()?,
                ))
            })
            .transpose()?;
        let t = float_dtype(OP, "x", x)?;
        check::dtype(OP, "w", w, t)?;
        if let Some(b) = bias {
            check::dtype(OP, "bias", b, t)?;
        }
        if let Some(l) = &lora {
            check::dtype(OP, "lora down (A)", l.down, DType::F32)?;
            check::dtype(OP, "lora up (B)", l.up, DType::F32)?;
            if let Some(m) = l.dropout {
                check::dtype(OP, "lora dropout mask", m, t)?;
            }
        }
        let (ink, rk) = (int(OP, "x", inf)?, int(OP, "lora", r)?);
        int(OP, "x", x.numel())?;
        int(OP, "w", w.numel())?;
        int(OP, "y", rows * outf)?;
        int(OP, "lora hidden", rows * r)?;

        if self.fast16(self.kernels().gemm)
            && t == self.compute_dtype()
            && fast::forward_ok(self, rows, inf, outf, r, xi, wi)
        {
            // One pass over x: y = x·Wᵀ + bias + s·ũ·Bᵀ and ũ = (x·Aᵀ) ⊙ mask.
            let mut y = alloc(self, x.shape().with_last(outf), t)?;
            let yo = output(self, OP, "y", &mut y)?;
            let mut hidden = None;
            let mut lo = None;
            if let (Some(l), Some((ai, bi_up, mask))) = (&lora, li) {
                let mut u = alloc(self, x.shape().with_last(r), DType::F32)?;
                lo = Some(fast::LoraOperands {
                    l: ai,
                    l_s: (ink, 1),
                    u: bi_up,
                    u_s: (1, rk),
                    r,
                    scale: l.scale as f32,
                    mask,
                    hidden: output(self, OP, "lora hidden", &mut u)?,
                });
                hidden = Some(u);
            }
            fast::gemm(self, OP, (rows, outf, inf), xi, wi, false, lo, bi, yo, 0.0)?;
            return Ok(LinearOut {
                y,
                lora_hidden: hidden,
            });
        }

        let mut hidden = None;
        let mut second = None;
        if let (Some(l), Some((ai, bi_up, mask))) = (&lora, li) {
            // ũ = (x·Aᵀ) ⊙ mask, f32 [rows, r].
            let mut u = alloc(self, x.shape().with_last(r), DType::F32)?;
            let uo = output(self, OP, "lora hidden", &mut u)?;
            Gemm {
                m: rows,
                n: r,
                k: inf,
                a: Operand::rows(xi, t, ink),
                b: Operand::cols(ai, DType::F32, ink),
                alpha: 1.0,
                second: None,
                bias: None,
                mask,
                beta: 0.0,
            }
            .run(self, OP, uo, DType::F32)?;
            second = Some((
                Operand::rows(In(uo.0), DType::F32, rk),
                Operand::cols(bi_up, DType::F32, rk),
                r,
                l.scale as f32,
            ));
            hidden = Some(u);
        }
        // y = x·Wᵀ + bias + s·ũ·Bᵀ.
        let mut y = alloc(self, x.shape().with_last(outf), t)?;
        let yo = output(self, OP, "y", &mut y)?;
        Gemm {
            m: rows,
            n: outf,
            k: inf,
            a: Operand::rows(xi, t, ink),
            b: Operand::cols(wi, t, ink),
            alpha: 1.0,
            second,
            bias: bi,
            mask: None,
            beta: 0.0,
        }
        .run(self, OP, yo, t)?;
        Ok(LinearOut {
            y,
            lora_hidden: hidden,
        })
    }

    fn linear_backward(
        &self,
        dy: &Tensor,
        w: &Tensor,
        adapter: Option<AdapterBackward<'_>>,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "linear_backward";
        // The one adapter kind so far (a new kind of `AdapterBackward` stops the build here).
        let mut lora = adapter.map(|AdapterBackward::Lora(l)| l);
        let d = check::linear::backward(
            dy,
            w,
            lora.as_ref()
                .map(|l| (&l.lora, l.x, l.hidden, &*l.grad_down, &*l.grad_up)),
        )?;
        let (rows, inf, outf, r) = (d.rows, d.in_features, d.out_features, d.rank);
        let dyi = input(self, OP, "dy", dy)?;
        let wi = input(self, OP, "w", w)?;
        let t = float_dtype(OP, "dy", dy)?;
        check::dtype(OP, "w", w, t)?;
        let (ink, outk, rk) = (int(OP, "w", inf)?, int(OP, "w", outf)?, int(OP, "lora", r)?);
        int(OP, "dy", dy.numel())?;
        int(OP, "w", w.numel())?;
        int(OP, "dx", rows * inf)?;
        int(OP, "g", rows * r)?;

        if self.fast16(self.kernels().gemm) && t == self.compute_dtype() {
            if let Some(dx) =
                backward_fast(self, dy, w, lora.as_mut(), want_dx, (rows, inf, outf, r))?
            {
                return Ok(dx);
            }
        }

        let mut second = None;
        let mut g_keep = None;
        if let Some(lb) = lora {
            let l = &lb.lora;
            let ai = input(self, OP, "lora down (A)", l.down)?;
            let bi = input(self, OP, "lora up (B)", l.up)?;
            let xi = input(self, OP, "x", lb.x)?;
            let ui = input(self, OP, "lora hidden", lb.hidden)?;
            let mask = l
                .dropout
                .map(|m| input(self, OP, "lora dropout mask", m))
                .transpose()?;
            let gdo = output(self, OP, "grad_down", lb.grad_down)?;
            let guo = output(self, OP, "grad_up", lb.grad_up)?;
            check::dtype(OP, "x", lb.x, t)?;
            check::dtype(OP, "lora down (A)", l.down, DType::F32)?;
            check::dtype(OP, "lora up (B)", l.up, DType::F32)?;
            check::dtype(OP, "lora hidden", lb.hidden, DType::F32)?;
            check::dtype(OP, "grad_down", lb.grad_down, DType::F32)?;
            check::dtype(OP, "grad_up", lb.grad_up, DType::F32)?;
            if let Some(m) = l.dropout {
                check::dtype(OP, "lora dropout mask", m, t)?;
            }
            let s = l.scale as f32;
            let beta = match lb.accum {
                Accum::Assign => 0.0,
                Accum::Add => 1.0,
            };
            // g = (dY·B) ⊙ mask, f32 [rows, r].
            let mut g = alloc(self, dy.shape().with_last(r), DType::F32)?;
            let go = output(self, OP, "g", &mut g)?;
            Gemm {
                m: rows,
                n: r,
                k: outf,
                a: Operand::rows(dyi, t, outk),
                b: Operand::rows(bi, DType::F32, rk),
                alpha: 1.0,
                second: None,
                bias: None,
                mask,
                beta: 0.0,
            }
            .run(self, OP, go, DType::F32)?;
            let gi = In(go.0);
            // dB (+)= s·dYᵀ·ũ, [out, r].
            Gemm {
                m: outf,
                n: r,
                k: rows,
                a: Operand::cols(dyi, t, outk),
                b: Operand::rows(ui, DType::F32, rk),
                alpha: s,
                second: None,
                bias: None,
                mask: None,
                beta,
            }
            .run_split(self, OP, guo)?;
            // dA (+)= s·gᵀ·X, [r, in].
            Gemm {
                m: r,
                n: inf,
                k: rows,
                a: Operand::cols(gi, DType::F32, rk),
                b: Operand::rows(xi, t, ink),
                alpha: s,
                second: None,
                bias: None,
                mask: None,
                beta,
            }
            .run_split(self, OP, gdo)?;
            second = Some((
                Operand::rows(gi, DType::F32, rk),
                Operand::rows(ai, DType::F32, ink),
                r,
                s,
            ));
            g_keep = Some(g);
        }
        if !want_dx {
            return Ok(None);
        }
        // dX = dY·W + s·g·A, [.., in] in dY's dtype.
        let mut dx = alloc(self, dy.shape().with_last(inf), t)?;
        let dxo = output(self, OP, "dx", &mut dx)?;
        Gemm {
            m: rows,
            n: inf,
            k: outf,
            a: Operand::rows(dyi, t, outk),
            b: Operand::rows(wi, t, ink),
            alpha: 1.0,
            second,
            bias: None,
            mask: None,
            beta: 0.0,
        }
        .run(self, OP, dxo, t)?;
        drop(g_keep); // g (the second product's A) lives until its last launch is queued
        Ok(Some(dx))
    }
}

/// The backward on the fast kernels (kernels/linear_fast.cu), or None when they decline the
/// shape (then the caller runs the simple ones). Arguments are checked by the caller.
/// One pass over dY gives dX = dY·W + s·g·A and g = (dY·B) ⊙ mask (only g without dX);
/// then dB (+)= s·dYᵀ·ũ and dA (+)= s·gᵀ·X as ordered reductions over the rows.
fn backward_fast(
    be: &CudaBackend,
    dy: &Tensor,
    w: &Tensor,
    lora: Option<&mut LoraBackward<'_>>,
    want_dx: bool,
    (rows, inf, outf, r): (usize, usize, usize, usize),
) -> Result<Option<Option<Tensor>>> {
    const OP: &str = "linear_backward";
    let dyi = input(be, OP, "dy", dy)?;
    let wi = input(be, OP, "w", w)?;
    let xi = lora
        .as_ref()
        .map(|lb| input(be, OP, "x", lb.x))
        .transpose()?;
    let ptrs: Vec<In> = [Some(dyi), Some(wi), xi].into_iter().flatten().collect();
    if !fast::backward_ok(be, rows, inf, outf, r, &ptrs) {
        return Ok(None);
    }
    let t = dy.dtype();
    let (ink, rk) = (int(OP, "w", inf)?, int(OP, "lora", r)?);
    let mut dx = if want_dx {
        Some(alloc(be, dy.shape().with_last(inf), t)?)
    } else {
        None
    };
    let dxo = match dx.as_mut() {
        Some(d) => output(be, OP, "dx", d)?,
        None => NULL_OUT,
    };
    let n = if want_dx { inf } else { 0 };
    let Some(lb) = lora else {
        fast::gemm(be, OP, (rows, n, outf), dyi, wi, true, None, None, dxo, 0.0)?;
        return Ok(Some(dx));
    };
    let l = &lb.lora;
    let ai = input(be, OP, "lora down (A)", l.down)?;
    let bi = input(be, OP, "lora up (B)", l.up)?;
    let ui = input(be, OP, "lora hidden", lb.hidden)?;
    let mask = l
        .dropout
        .map(|m| input(be, OP, "lora dropout mask", m))
        .transpose()?;
    let s = l.scale as f32;
    let beta = match lb.accum {
        Accum::Assign => 0.0,
        Accum::Add => 1.0,
    };
    // g = (dY·B) ⊙ mask, f32 [rows, r], from the same pass as dX = dY·W + s·g·A.
    let mut g = alloc(be, dy.shape().with_last(r), DType::F32)?;
    let go = output(be, OP, "g", &mut g)?;
    let lo = fast::LoraOperands {
        l: bi,
        l_s: (1, rk),
        u: ai,
        u_s: (ink, 1),
        r,
        scale: s,
        mask,
        hidden: go,
    };
    fast::gemm(
        be,
        OP,
        (rows, n, outf),
        dyi,
        wi,
        true,
        Some(lo),
        None,
        dxo,
        0.0,
    )?;
    // dB [out, r] (+)= s·dYᵀ·ũ; dA [r, in] (+)= s·gᵀ·X.
    let guo = output(be, OP, "grad_up", lb.grad_up)?;
    let gdo = output(be, OP, "grad_down", lb.grad_down)?;
    fast::lora_grad(be, OP, rows, outf, dyi, ui, r, s, guo, (rk, 1), beta)?;
    let xi = xi.expect("x is given with the LoRA");
    fast::lora_grad(be, OP, rows, inf, xi, In(go.0), r, s, gdo, (1, ink), beta)?;
    drop(g); // g lives until its last reader is queued
    Ok(Some(dx))
}
