//! The fast convolution kernels (kernels/conv_fast.cu): implicit GEMMs on tensor cores, f16
//! or bf16 storage (bf16 on compute capability 8.0 and later) and f32 accumulation, tiles of 128 output pixels x 64 output channels. The
//! forward pass is one launch; the input gradient is a weight re-layout (one class of taps
//! per residue of the input pixels mod the stride) and one dense GEMM launch per class, so a
//! stride-2 gradient never multiplies the zeros of a dilated dy. LoCon is fused into them
//! (conv_fast.cu says how and what it saves): the forward in two launches (y and the hidden
//! u side by side, then y += s·up·u), the input gradient as the hidden's gradient g (mask in
//! the epilogue) and one GEMM per class over dy and g together.
//!
//! Sizes reach here checked to fit an i32 (`sizes` in the parent module); the kernels index
//! within an image with i32 and across images with size_t.

use super::super::super::backend::CudaBackend;
use super::super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::super::tiles::{FC_BM, FC_BN, FC_THREADS};
use super::super::{alloc, output};
use crate::backend::check::conv::ConvDims;
use crate::backend::BackendInfo;
use crate::error::{Error, Result};
use crate::tensor::DType;

kernels! {
    module "conv_fast";
    fn conv_fast_t11_f16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t12_f16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t21_f16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t22_f16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t33_f16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t11_bf16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t12_bf16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t21_bf16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t22_bf16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t33_bf16(src: In, src2: In, wt: In, wt2: In, bias: In, mask: In, dst: Out,
        dst2: Out, has_bias: i32, has_mask: i32, accumulate: i32, vec_a: i32, vec_b: i32,
        alpha: f32, n: i32, cs: i32, cs2: i32, hs: i32, ws: i32, mo: i32, mo2: i32, ha: i32,
        wa: i32, sa: i32, oy: i32, ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_wgrad_layout_f16(w: In, wt: Out, o: i32, c: i32, k: i32, s: i32, p: i32,
        ot: i32, o0: i32, scale: f32);
    fn conv_fast_wgrad_layout_adapter_f16(w: In, wt: Out, o: i32, c: i32, k: i32, s: i32,
        p: i32, ot: i32, o0: i32, scale: f32);
    fn conv_fast_wgrad_layout_bf16(w: In, wt: Out, o: i32, c: i32, k: i32, s: i32, p: i32,
        ot: i32, o0: i32, scale: f32);
    fn conv_fast_wgrad_layout_adapter_bf16(w: In, wt: Out, o: i32, c: i32, k: i32, s: i32,
        p: i32, ot: i32, o0: i32, scale: f32);
}

thread_local! {
    /// Launches of the fast GEMM kernels from this thread (launchers run on the caller's
    /// thread): lets a test see that the fast path was taken, which results alone cannot
    /// show in the emulator (its mma sums in the simple kernel's order, bit for bit).
    pub(crate) static LAUNCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Forward: kernels 1x1 and 3x3, any stride, padding and sizes.
pub(super) fn forward_supported(d: &ConvDims) -> bool {
    matches!(d.k, 1 | 3)
}

/// Input gradient: kernels 1x1 and 3x3, stride 1 or 2 (the tap classes then have 1, 2 or 3
/// taps per axis, the instantiated kernels).
pub(super) fn input_grad_supported(d: &ConvDims) -> bool {
    matches!(d.k, 1 | 3) && matches!(d.stride, 1 | 2)
}

/// The geometry of one launch of the generalized convolution (see conv_fast.cu).
struct Gen {
    taps: (usize, usize),
    cs: usize,
    cs2: usize,
    hs: usize,
    ws: usize,
    mo: usize,
    mo2: usize,
    ha: usize,
    wa: usize,
    sa: usize,
    oy: i64,
    ox: i64,
    hd: usize,
    wd: usize,
    so: usize,
    ry: usize,
    rx: usize,
}

/// One launch's tensors and epilogue: the sources (src2 read when cs2 > 0), the weight rows
/// of the main part (wt) and of the hidden part (wt2), the outputs and what the epilogue does.
struct Io {
    src: In,
    src2: In,
    wt: In,
    wt2: In,
    /// Whether both weight blocks start 16-byte aligned (pool buffers are 512-byte aligned;
    /// a class block of the input gradient's layout may not be).
    wt_aligned: bool,
    bias: Option<In>,
    mask: Option<In>,
    dst: Out,
    dst2: Out,
    alpha: f32,
    accumulate: bool,
}

impl Io {
    /// One source, one weight, the main part written with = and no bias.
    fn plain(src: In, wt: In, dst: Out) -> Io {
        Io {
            src,
            src2: In(0),
            wt,
            wt2: In(0),
            wt_aligned: true,
            bias: None,
            mask: None,
            dst,
            dst2: Out(0),
            alpha: 1.0,
            accumulate: false,
        }
    }
}

fn launch(be: &CudaBackend, g: &Gen, n: usize, io: &Io) -> Result<()> {
    let pixels = n * g.ha * g.wa;
    let channels = g.mo + g.mo2;
    if pixels == 0 || channels == 0 {
        return Ok(());
    }
    let k = (g.cs + g.cs2) * g.taps.0 * g.taps.1;
    // 16-byte weight copies: every row starts at a multiple of 8 elements.
    let vec_b = io.wt_aligned && k.is_multiple_of(8);
    // 16-byte activation copies: a pointwise conv whose pixel runs of 8 stay inside an image.
    let vec_a = g.taps == (1, 1)
        && g.cs > 0
        && (g.sa, g.so, g.oy, g.ox) == (1, 1, 0, 0)
        && (g.hs, g.ws) == (g.ha, g.wa)
        && (g.ha * g.wa).is_multiple_of(8);
    let gx = pixels.div_ceil(FC_BM).min(i32::MAX as usize) as u32;
    let gy = channels.div_ceil(FC_BN) as u32;
    let cfg = LaunchCfg::new((gx, gy, 1), (FC_THREADS as u32, 1, 1), 0);
    let i = |v: usize| v as i32;
    LAUNCHES.with(|c| c.set(c.get() + 1));
    let dev = be.device();
    macro_rules! run {
        ($f:ident) => {
            $f(
                dev,
                cfg,
                io.src,
                io.src2,
                io.wt,
                io.wt2,
                io.bias.unwrap_or(In(0)),
                io.mask.unwrap_or(In(0)),
                io.dst,
                io.dst2,
                io.bias.is_some() as i32,
                io.mask.is_some() as i32,
                io.accumulate as i32,
                vec_a as i32,
                vec_b as i32,
                io.alpha,
                i(n),
                i(g.cs),
                i(g.cs2),
                i(g.hs),
                i(g.ws),
                i(g.mo),
                i(g.mo2),
                i(g.ha),
                i(g.wa),
                i(g.sa),
                g.oy as i32,
                g.ox as i32,
                i(g.hd),
                i(g.wd),
                i(g.so),
                i(g.ry),
                i(g.rx),
            )
        };
    }
    match (be.compute_dtype(), g.taps) {
        (DType::F16, (1, 1)) => run!(conv_fast_t11_f16),
        (DType::F16, (1, 2)) => run!(conv_fast_t12_f16),
        (DType::F16, (2, 1)) => run!(conv_fast_t21_f16),
        (DType::F16, (2, 2)) => run!(conv_fast_t22_f16),
        (DType::F16, (3, 3)) => run!(conv_fast_t33_f16),
        (DType::BF16, (1, 1)) => run!(conv_fast_t11_bf16),
        (DType::BF16, (1, 2)) => run!(conv_fast_t12_bf16),
        (DType::BF16, (2, 1)) => run!(conv_fast_t21_bf16),
        (DType::BF16, (2, 2)) => run!(conv_fast_t22_bf16),
        (DType::BF16, (3, 3)) => run!(conv_fast_t33_bf16),
        (dt, t) => unreachable!("conv_fast: no kernel for {dt:?} taps {t:?}"),
    }
}

/// The forward's geometry: the layer `d` as it is (its output channels the main part).
fn forward_gen(d: &ConvDims) -> Gen {
    Gen {
        taps: (d.k, d.k),
        cs: d.c,
        cs2: 0,
        hs: d.h,
        ws: d.w,
        mo: d.o,
        mo2: 0,
        ha: d.ho,
        wa: d.wo,
        sa: d.stride,
        oy: -(d.padding as i64),
        ox: -(d.padding as i64),
        hd: d.ho,
        wd: d.wo,
        so: 1,
        ry: 0,
        rx: 0,
    }
}

/// y = conv2d(x, w) + bias: one launch, the weights as they are.
pub(super) fn forward(
    be: &CudaBackend,
    d: &ConvDims,
    x: In,
    w: In,
    bias: Option<In>,
    y: Out,
) -> Result<()> {
    let io = Io {
        bias,
        ..Io::plain(x, w, y)
    };
    launch(be, &forward_gen(d), d.n, &io)
}

/// A LoCon forward's tensors: the layer's (x, w, bias, y) and the adapter's, its weights in
/// the activations' dtype.
pub(super) struct LoconForward {
    pub x: In,
    pub w: In,
    pub bias: Option<In>,
    /// [r, C, k, k].
    pub down: In,
    /// [O, r].
    pub up: In,
    pub mask: Option<In>,
    pub scale: f64,
    /// [N, O, Ho, Wo], written.
    pub y: Out,
    /// The hidden [N, r, Ho, Wo], written (masked).
    pub u: Out,
}

/// y = conv2d(x, w) + bias + s·conv1x1(u, up) with u = conv2d(x, down) ⊙ mask: one launch
/// writing y and u (w's and down's rows side by side), then the pointwise up conv adding
/// s·up·u into y. `r` is the rank.
pub(super) fn locon_forward(
    be: &CudaBackend,
    d: &ConvDims,
    r: usize,
    t: &LoconForward,
) -> Result<()> {
    let both = Gen {
        mo2: r,
        ..forward_gen(d)
    };
    let io = Io {
        wt2: t.down,
        bias: t.bias,
        mask: t.mask,
        dst2: t.u,
        ..Io::plain(t.x, t.w, t.y)
    };
    launch(be, &both, d.n, &io)?;
    let up = Gen {
        taps: (1, 1),
        cs: r,
        hs: d.ho,
        ws: d.wo,
        sa: 1,
        oy: 0,
        ox: 0,
        ..forward_gen(d)
    };
    let io = Io {
        alpha: t.scale as f32,
        accumulate: true,
        ..Io::plain(In(t.u.0), t.up, t.y)
    };
    launch(be, &up, d.n, &io)
}

/// Taps of residue class `r` along one axis: the i < k with i ≡ r + p (mod s)
/// (fc_taps in conv_fast.cu), and the first of them.
fn taps(r: usize, k: usize, s: usize, p: usize) -> (usize, usize) {
    let i0 = (r + p) % s;
    (if i0 < k { (k - 1 - i0) / s + 1 } else { 0 }, i0)
}

/// One source of a transposed convolution: `src` [N, channels, Ho, Wo] and the weight it
/// goes through, [channels, C, k, k] in the storage dtype or f32 (an adapter's), times
/// `scale`.
pub(super) struct Part {
    pub src: In,
    pub channels: usize,
    pub w: In,
    pub w_dtype: DType,
    pub scale: f32,
}

/// Where a transposed convolution's result goes.
#[derive(Clone, Copy)]
pub(super) enum Dst {
    /// The layer's input gradient, written with =.
    Main(Out),
    /// An adapter hidden's gradient, ⊙ the dropout mask when there is one.
    Hidden(Out, Option<In>),
}

/// dst = Σ over `parts` (one or two) of the input gradient of conv2d `d` (its o replaced by
/// each part's channels) for the part's src and weight: the per-class weights of all parts
/// side by side (a temporary of (Σ channels)·C·k·k elements) and one launch per residue
/// class (ry, rx) of the input pixels, each writing its pixels.
pub(super) fn transposed(be: &CudaBackend, d: &ConvDims, parts: &[Part], dst: Dst) -> Result<()> {
    const OP: &str = "conv2d_input_grad";
    let dt = be.compute_dtype();
    let (k, s, p) = (d.k, d.stride, d.padding);
    let ot: usize = parts.iter().map(|q| q.channels).sum();
    let mut wt = alloc(be, [(ot * d.c * k * k).max(1)], dt)?;
    let wto = output(be, OP, "wt", &mut wt)?;
    let mut o0 = 0;
    for q in parts {
        let numel = q.channels * d.c * k * k;
        if numel > 0 {
            let layout = match (dt, q.w_dtype) {
                (DType::F16, DType::F16) => conv_fast_wgrad_layout_f16,
                (DType::F16, DType::F32) => conv_fast_wgrad_layout_adapter_f16,
                (DType::BF16, DType::BF16) => conv_fast_wgrad_layout_bf16,
                (DType::BF16, DType::F32) => conv_fast_wgrad_layout_adapter_bf16,
                (dt, wd) => {
                    return Err(Error::DType {
                        op: OP,
                        name: "w",
                        got: wd,
                        expected: format!("{dt:?} or F32 for the fast {dt:?} kernels"),
                    })
                }
            };
            layout(
                be.device(),
                LaunchCfg::for_items(numel, FC_THREADS as u32),
                q.w,
                wto,
                q.channels as i32,
                d.c as i32,
                k as i32,
                s as i32,
                p as i32,
                ot as i32,
                o0 as i32,
                q.scale,
            )?;
        }
        o0 += q.channels;
    }
    let (cs, cs2) = (parts[0].channels, parts.get(1).map_or(0, |q| q.channels));
    let src2 = parts.get(1).map_or(In(0), |q| q.src);
    let mut off = 0usize; // elements of wt before this class
    for ry in 0..s {
        for rx in 0..s {
            let (ty, i0y) = taps(ry, k, s, p);
            let (tx, i0x) = taps(rx, k, s, p);
            // Input rows ih = s·a + ry, a < ha (columns alike).
            let ha = d.h.saturating_sub(ry).div_ceil(s);
            let wa = d.w.saturating_sub(rx).div_ceil(s);
            let class = d.c * ot * ty * tx;
            let (mo, mo2) = match dst {
                Dst::Main(_) => (d.c, 0),
                Dst::Hidden(..) => (0, d.c),
            };
            let g = Gen {
                // A class without taps: K = 0, its pixels get 0.
                taps: if class == 0 { (1, 1) } else { (ty, tx) },
                cs: if class == 0 { 0 } else { cs },
                cs2: if class == 0 { 0 } else { cs2 },
                hs: d.ho,
                ws: d.wo,
                mo,
                mo2,
                ha,
                wa,
                sa: 1,
                oy: ((ry + p - i0y) / s) as i64 - ty as i64 + 1,
                ox: ((rx + p - i0x) / s) as i64 - tx as i64 + 1,
                hd: d.h,
                wd: d.w,
                so: s,
                ry,
                rx,
            };
            // The class block's rows (main and hidden parts read the same rows) start at a
            // multiple of 8 elements when `off` does (always so for SD1.5's channel counts;
            // otherwise that class loads by elements).
            let wt_in = In(wto.0 + (dt.size_in_bytes() * off) as u64);
            let base = Io {
                src2,
                wt2: wt_in,
                wt_aligned: off.is_multiple_of(8),
                ..Io::plain(parts[0].src, wt_in, Out(0))
            };
            let io = match dst {
                Dst::Main(o) => Io { dst: o, ..base },
                Dst::Hidden(o, mask) => Io {
                    dst2: o,
                    mask,
                    ..base
                },
            };
            launch(be, &g, d.n, &io)?;
            off += class;
        }
    }
    drop(wt);
    Ok(())
}

/// dx = the input gradient of conv2d for dy (w in the storage dtype).
pub(super) fn input_grad(be: &CudaBackend, d: &ConvDims, dy: In, w: In, dx: Out) -> Result<()> {
    let part = Part {
        src: dy,
        channels: d.o,
        w,
        w_dtype: be.compute_dtype(),
        scale: 1.0,
    };
    transposed(be, d, &[part], Dst::Main(dx))
}

#[cfg(all(test, feature = "cuda-emu"))]
mod tests {
    use super::LAUNCHES;
    use crate::backend::cuda::{CudaBackend, Device, KernelChoice};
    use crate::backend::prelude::*;
    use crate::backend::Conv2d;
    use crate::tensor::DType;

    /// The fast kernels run for f16 with the conv family fast, and only then: forward one
    /// launch, the stride-2 input gradient one per residue class (4).
    #[test]
    fn fast_path_taken_only_when_chosen() {
        let be = CudaBackend::new(Device::emulator(), DType::F16).unwrap();
        let f32be = CudaBackend::new(Device::emulator(), DType::F32).unwrap();
        let p = Conv2d {
            stride: 2,
            padding: 1,
        };
        let count = |be: &CudaBackend, dt: DType| {
            let x = be.tensor_from_f32(&[1, 3, 5, 6], &[0.5; 90], dt).unwrap();
            let w = be.tensor_from_f32(&[4, 3, 3, 3], &[0.25; 108], dt).unwrap();
            let dy = be.tensor_from_f32(&[1, 4, 3, 3], &[1.0; 36], dt).unwrap();
            let before = LAUNCHES.with(|c| c.get());
            be.conv2d(&x, &w, None, p, None).unwrap();
            let fwd = LAUNCHES.with(|c| c.get()) - before;
            be.conv2d_input_grad(&dy, &w, (5, 6), p).unwrap();
            (fwd, LAUNCHES.with(|c| c.get()) - before - fwd)
        };
        assert_eq!(
            count(&be.clone().with_kernels(KernelChoice::fast()), DType::F16),
            (1, 4)
        );
        assert_eq!(
            count(&be.with_kernels(KernelChoice::simple()), DType::F16),
            (0, 0)
        );
        assert_eq!(
            count(&f32be.with_kernels(KernelChoice::fast()), DType::F32),
            (0, 0)
        );
    }
}
