//! The fast convolution kernels (kernels/conv_fast.cu): implicit GEMMs on tensor cores, f16
//! storage and f32 accumulation, tiles of 128 output pixels x 64 output channels. The
//! forward pass is one launch; the input gradient is a weight re-layout (one class of taps
//! per residue of the input pixels mod the stride) and one dense GEMM launch per class, so a
//! stride-2 gradient never multiplies the zeros of a dilated dy.
//!
//! Sizes reach here checked to fit an i32 (`sizes` in the parent module); the kernels index
//! within an image with i32 and across images with size_t.

use super::super::super::backend::CudaBackend;
use super::super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::super::tiles::{FC_BM, FC_BN, FC_THREADS};
use super::super::alloc;
use crate::backend::check::conv::ConvDims;
use crate::error::Result;
use crate::tensor::DType;

kernels! {
    module "conv_fast";
    fn conv_fast_t11(src: In, wt: In, bias: In, dst: Out, has_bias: i32, vec_a: i32, vec_b: i32,
        n: i32, cs: i32, hs: i32, ws: i32, mo: i32, ha: i32, wa: i32, sa: i32, oy: i32,
        ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t12(src: In, wt: In, bias: In, dst: Out, has_bias: i32, vec_a: i32, vec_b: i32,
        n: i32, cs: i32, hs: i32, ws: i32, mo: i32, ha: i32, wa: i32, sa: i32, oy: i32,
        ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t21(src: In, wt: In, bias: In, dst: Out, has_bias: i32, vec_a: i32, vec_b: i32,
        n: i32, cs: i32, hs: i32, ws: i32, mo: i32, ha: i32, wa: i32, sa: i32, oy: i32,
        ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t22(src: In, wt: In, bias: In, dst: Out, has_bias: i32, vec_a: i32, vec_b: i32,
        n: i32, cs: i32, hs: i32, ws: i32, mo: i32, ha: i32, wa: i32, sa: i32, oy: i32,
        ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_t33(src: In, wt: In, bias: In, dst: Out, has_bias: i32, vec_a: i32, vec_b: i32,
        n: i32, cs: i32, hs: i32, ws: i32, mo: i32, ha: i32, wa: i32, sa: i32, oy: i32,
        ox: i32, hd: i32, wd: i32, so: i32, ry: i32, rx: i32);
    fn conv_fast_wgrad_layout(w: In, wt: Out, o: i32, c: i32, k: i32, s: i32, p: i32);
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

/// One launch of the generalized convolution (see conv_fast.cu for the parameters).
struct Gen {
    taps: (usize, usize),
    cs: usize,
    hs: usize,
    ws: usize,
    mo: usize,
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

type Entry = fn(
    &crate::backend::cuda::Device,
    LaunchCfg,
    In,
    In,
    In,
    Out,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
) -> Result<()>;

#[allow(clippy::too_many_arguments)]
fn launch(
    be: &CudaBackend,
    g: &Gen,
    n: usize,
    src: In,
    wt: In,
    wt_aligned: bool,
    bias: In,
    has_bias: bool,
    dst: Out,
) -> Result<()> {
    let pixels = n * g.ha * g.wa;
    if pixels == 0 || g.mo == 0 {
        return Ok(());
    }
    let f: Entry = match g.taps {
        (1, 1) => conv_fast_t11,
        (1, 2) => conv_fast_t12,
        (2, 1) => conv_fast_t21,
        (2, 2) => conv_fast_t22,
        (3, 3) => conv_fast_t33,
        t => unreachable!("conv_fast: no kernel for taps {t:?}"),
    };
    let k = g.cs * g.taps.0 * g.taps.1;
    // 16-byte weight copies: every row starts at a multiple of 8 halves (pool buffers are
    // 512-byte aligned; `wt_aligned`: so is this launch's weight block).
    let vec_b = wt_aligned && k.is_multiple_of(8);
    // 16-byte activation copies: a pointwise conv whose pixel runs of 8 stay inside an image.
    let vec_a = g.taps == (1, 1)
        && g.cs > 0
        && (g.sa, g.so, g.oy, g.ox) == (1, 1, 0, 0)
        && (g.hs, g.ws) == (g.ha, g.wa)
        && (g.ha * g.wa).is_multiple_of(8);
    let gx = pixels.div_ceil(FC_BM).min(i32::MAX as usize) as u32;
    let gy = g.mo.div_ceil(FC_BN) as u32;
    let cfg = LaunchCfg::new((gx, gy, 1), (FC_THREADS as u32, 1, 1), 0);
    let i = |v: usize| v as i32;
    LAUNCHES.with(|c| c.set(c.get() + 1));
    f(
        be.device(),
        cfg,
        src,
        wt,
        bias,
        dst,
        has_bias as i32,
        vec_a as i32,
        vec_b as i32,
        i(n),
        i(g.cs),
        i(g.hs),
        i(g.ws),
        i(g.mo),
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
}

/// y = conv2d(x, w) + bias: one launch, the weights as they are.
pub(super) fn forward(
    be: &CudaBackend,
    d: &ConvDims,
    x: In,
    w: In,
    bias: In,
    has_bias: bool,
    y: Out,
) -> Result<()> {
    let g = Gen {
        taps: (d.k, d.k),
        cs: d.c,
        hs: d.h,
        ws: d.w,
        mo: d.o,
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
    };
    launch(be, &g, d.n, x, w, true, bias, has_bias, y)
}

/// Taps of residue class `r` along one axis: the i < k with i ≡ r + p (mod s)
/// (fc_taps in conv_fast.cu), and the first of them.
fn taps(r: usize, k: usize, s: usize, p: usize) -> (usize, usize) {
    let i0 = (r + p) % s;
    (if i0 < k { (k - 1 - i0) / s + 1 } else { 0 }, i0)
}

/// dx = the input gradient of conv2d for dy: the per-class weights (a temporary of w's size)
/// and one launch per residue class (ry, rx) of the input pixels, each writing its pixels.
pub(super) fn input_grad(be: &CudaBackend, d: &ConvDims, dy: In, w: In, dx: Out) -> Result<()> {
    let (k, s, p) = (d.k, d.stride, d.padding);
    let numel = d.o * d.c * k * k;
    let mut wt = alloc(be, [numel.max(1)], DType::F16)?;
    let wto = super::super::output(be, "conv2d_input_grad", "wt", &mut wt)?;
    if numel > 0 {
        conv_fast_wgrad_layout(
            be.device(),
            LaunchCfg::for_items(numel, FC_THREADS as u32),
            w,
            wto,
            d.o as i32,
            d.c as i32,
            k as i32,
            s as i32,
            p as i32,
        )?;
    }
    let mut off = 0usize; // elements of wt before this class
    for ry in 0..s {
        for rx in 0..s {
            let (ty, i0y) = taps(ry, k, s, p);
            let (tx, i0x) = taps(rx, k, s, p);
            // Input rows ih = s·a + ry, a < ha (columns alike).
            let ha = d.h.saturating_sub(ry).div_ceil(s);
            let wa = d.w.saturating_sub(rx).div_ceil(s);
            let class = d.c * d.o * ty * tx;
            let g = Gen {
                // A class without taps: K = 0, its pixels get 0.
                taps: if class == 0 { (1, 1) } else { (ty, tx) },
                cs: if class == 0 { 0 } else { d.o },
                hs: d.ho,
                ws: d.wo,
                mo: d.c,
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
            // 16-byte weight copies need the class block to start at a multiple of 8 halves
            // (always so for SD1.5's channel counts; otherwise that class loads by elements).
            let wt_in = In(wto.0 + 2 * off as u64);
            launch(
                be,
                &g,
                d.n,
                dy,
                wt_in,
                off.is_multiple_of(8),
                In(0),
                false,
                dx,
            )?;
            off += class;
        }
    }
    drop(wt);
    Ok(())
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
