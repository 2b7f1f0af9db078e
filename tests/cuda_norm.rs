//! GroupNorm (with and without the fused SiLU) and LayerNorm on the CUDA backend, forward (y and
//! the f32 statistics) and dX, against the CPU backend in f32, f16 and bf16 modes: odd channel,
//! group and spatial sizes (tails in every stride loop), rank-2/3/4 inputs, batch > 1, blocks
//! larger than the thread block, inputs with a large mean, SD1.5 layer shapes (full size on a GPU),
//! and the errors of bad shapes, wrong devices and wrong statistic dtypes.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::NormStats;
use lorafuse::rng::Rng;
use lorafuse::{DType, Error, Tensor};

const EPS: f64 = 1e-5;

/// A CPU/device pair of values `scale·u + shift`, u from `nonzero`.
fn affine_pair(
    e: &Engine,
    rng: &mut Rng,
    shape: &[usize],
    dtype: DType,
    scale: f32,
    shift: f32,
) -> (Tensor, Tensor) {
    let v: Vec<f32> = nonzero(rng, shape.iter().product())
        .iter()
        .map(|&u| u * scale + shift)
        .collect();
    pair(&e.be, shape, &v, dtype)
}

fn check_stats(what: &str, got: &NormStats, want: &NormStats) {
    assert_eq!(got.mean.dtype(), DType::F32, "{what}: mean dtype");
    assert_eq!(got.rstd.dtype(), DType::F32, "{what}: rstd dtype");
    // The statistics are f32 in both modes, computed from the same (f16-rounded) inputs.
    assert_matches(
        &format!("{what} mean"),
        &got.mean,
        &want.mean,
        tol(DType::F32),
    );
    assert_matches(
        &format!("{what} rstd"),
        &got.rstd,
        &want.rstd,
        tol(DType::F32),
    );
}

/// GroupNorm forward and backward of x `shape` (with mean `shift`) on one engine vs the CPU.
fn group_norm_case(
    e: &Engine,
    rng: &mut Rng,
    dtype: DType,
    shape: &[usize],
    groups: usize,
    silu: bool,
    shift: f32,
) {
    let what = format!(
        "group_norm {shape:?}/{groups} silu {silu} {dtype:?} gpu {}",
        e.gpu
    );
    let c = shape[1];
    let (xc, xd) = affine_pair(e, rng, shape, dtype, 1.0, shift);
    let (gc, gd) = random_pair(&e.be, rng, &[c], dtype);
    let (bc, bd) = random_pair(&e.be, rng, &[c], dtype);
    let (dyc, dyd) = random_pair(&e.be, rng, shape, dtype);
    let cpu = cpu();
    let (yc, sc) = cpu.group_norm(&xc, &gc, &bc, groups, EPS, silu).unwrap();
    let (yd, sd) = e.be.group_norm(&xd, &gd, &bd, groups, EPS, silu).unwrap();
    assert_eq!(yd.dtype(), dtype, "{what}: y dtype");
    assert_matches(&format!("{what}: y"), &yd, &yc, tol(dtype));
    check_stats(&what, &sd, &sc);
    let dxc = cpu
        .group_norm_backward(&dyc, &xc, &gc, &bc, &sc, groups, silu)
        .unwrap();
    let dxd =
        e.be.group_norm_backward(&dyd, &xd, &gd, &bd, &sd, groups, silu)
            .unwrap();
    assert_eq!(dxd.dtype(), dtype, "{what}: dx dtype");
    assert_matches(&format!("{what}: dx"), &dxd, &dxc, tol(dtype));
}

/// LayerNorm forward and backward of x `shape` on one engine vs the CPU.
fn layer_norm_case(e: &Engine, rng: &mut Rng, dtype: DType, shape: &[usize], shift: f32) {
    let what = format!("layer_norm {shape:?} {dtype:?} gpu {}", e.gpu);
    let c = *shape.last().unwrap();
    let (xc, xd) = affine_pair(e, rng, shape, dtype, 1.0, shift);
    let (gc, gd) = random_pair(&e.be, rng, &[c], dtype);
    let (bc, bd) = random_pair(&e.be, rng, &[c], dtype);
    let (dyc, dyd) = random_pair(&e.be, rng, shape, dtype);
    let cpu = cpu();
    let (yc, sc) = cpu.layer_norm(&xc, &gc, &bc, EPS).unwrap();
    let (yd, sd) = e.be.layer_norm(&xd, &gd, &bd, EPS).unwrap();
    assert_matches(&format!("{what}: y"), &yd, &yc, tol(dtype));
    check_stats(&what, &sd, &sc);
    let dxc = cpu.layer_norm_backward(&dyc, &xc, &gc, &sc).unwrap();
    let dxd = e.be.layer_norm_backward(&dyd, &xd, &gd, &sd).unwrap();
    assert_matches(&format!("{what}: dx"), &dxd, &dxc, tol(dtype));
}

#[test]
fn group_norm_odd_shapes_match_cpu() {
    group_norm_odd_shapes_match_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the fast kernels where they take the
/// shape, as for f16), against the CPU in f32 on the same bf16-rounded inputs with
/// `tol(DType::BF16)`.
#[test]
fn group_norm_odd_shapes_match_cpu_bf16() {
    group_norm_odd_shapes_match_cpu_in(&[DType::BF16]);
}

fn group_norm_odd_shapes_match_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(11);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for silu in [false, true] {
                // (shape, groups): 2 channels per group over a 7x9 plane, batch 2; 7 and 5
                // channels per group over 5x3; rank 3 [N, C, L]; rank 2 (spatial 1); one group
                // of a single channel.
                for (shape, groups) in [
                    (&[2, 6, 7, 9][..], 3),
                    (&[1, 35, 5, 3], 5),
                    (&[1, 35, 5, 3], 7),
                    (&[2, 35, 11], 7),
                    (&[3, 12], 4),
                    (&[2, 1, 3, 1], 1),
                ] {
                    group_norm_case(&e, &mut rng, dtype, shape, groups, silu, 0.0);
                }
            }
        }
    }
}

#[test]
fn group_norm_large_blocks_and_mean_match_cpu() {
    let mut rng = Rng::new(12);
    for dtype in [DType::F32, DType::F16] {
        for e in engines(dtype) {
            // 4290 elements per group: a full 1024-thread block with a ragged last stride.
            group_norm_case(&e, &mut rng, dtype, &[1, 4, 33, 65], 2, true, 0.0);
            // A mean far from zero (the variance must not cancel), batch 2.
            group_norm_case(&e, &mut rng, dtype, &[2, 6, 5, 7], 2, false, 4.0);
        }
    }
}

#[test]
fn group_norm_sd15_shapes_match_cpu() {
    let mut rng = Rng::new(13);
    for dtype in [DType::F32, DType::F16] {
        for e in engines(dtype) {
            // SD1.5 ResNet blocks: 32 groups of 320 and 1280 channels (small planes here).
            group_norm_case(&e, &mut rng, dtype, &[1, 320, 8, 8], 32, true, 0.0);
            group_norm_case(&e, &mut rng, dtype, &[1, 1280, 4, 4], 32, false, 0.0);
            if e.gpu {
                // Full size at 512x512: 64x64 latents with 320 channels, 32x32 with 640,
                // 8x8 with 1280; the VAE's 128 channels at 256x256.
                group_norm_case(&e, &mut rng, dtype, &[2, 320, 64, 64], 32, true, 0.0);
                group_norm_case(&e, &mut rng, dtype, &[2, 320, 64, 64], 32, false, 0.5);
                group_norm_case(&e, &mut rng, dtype, &[1, 640, 32, 32], 32, true, 0.0);
                group_norm_case(&e, &mut rng, dtype, &[2, 1280, 8, 8], 32, true, 0.0);
                group_norm_case(&e, &mut rng, dtype, &[1, 128, 256, 256], 32, true, 0.0);
            }
        }
    }
}

#[test]
fn layer_norm_matches_cpu() {
    layer_norm_matches_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the fast kernels where they take the
/// shape, as for f16), against the CPU in f32 on the same bf16-rounded inputs with
/// `tol(DType::BF16)`.
#[test]
fn layer_norm_matches_cpu_bf16() {
    layer_norm_matches_cpu_in(&[DType::BF16]);
}

fn layer_norm_matches_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(14);
    for &dtype in dtypes {
        for e in engines(dtype) {
            // Rank 1, odd widths (37, 1001: a ragged stride), rows over several leading dims,
            // width 1, a mean far from zero, and SD1.5's CLIP (77x768) and transformer (64x320)
            // rows at small token counts.
            for (shape, shift) in [
                (&[37][..], 0.0),
                (&[3, 37], 0.0),
                (&[2, 3, 1001], 0.0),
                (&[5, 1], 0.0),
                (&[4, 37], 3.0),
                (&[77, 768], 0.0),
                (&[64, 320], 0.0),
            ] {
                layer_norm_case(&e, &mut rng, dtype, shape, shift);
            }
            if e.gpu {
                // Full size: 64x64 latents' 4096 tokens of 320, 1024 of 640, 256 of 1280;
                // CLIP at batch 2.
                for shape in [
                    &[2, 4096, 320][..],
                    &[2, 1024, 640],
                    &[2, 256, 1280],
                    &[2, 77, 768],
                ] {
                    layer_norm_case(&e, &mut rng, dtype, shape, 0.0);
                }
            }
        }
    }
}

#[test]
fn layer_norm_without_rows_gives_empty_outputs() {
    for dtype in [DType::F32, DType::F16] {
        for e in engines(dtype) {
            let x = e.be.tensor_from_f32(&[0, 5], &[], dtype).unwrap();
            let g = e.be.tensor_from_f32(&[5], &[1.0; 5], dtype).unwrap();
            let (y, s) = e.be.layer_norm(&x, &g, &g, EPS).unwrap();
            assert_eq!(y.dims(), [0, 5]);
            assert_eq!(s.mean.dims(), [0]);
            let dx = e.be.layer_norm_backward(&x, &x, &g, &s).unwrap();
            assert_eq!(dx.dims(), [0, 5]);
        }
    }
}

/// Both backends' errors for the same call: same kind, same message.
fn same_error(what: &str, cpu: Error, dev: Error) {
    assert_eq!(
        std::mem::discriminant(&cpu),
        std::mem::discriminant(&dev),
        "{what}: CPU {cpu} vs CUDA {dev}"
    );
    assert_eq!(cpu.to_string(), dev.to_string(), "{what}");
}

#[test]
fn norm_errors_match_cpu() {
    let mut rng = Rng::new(15);
    let cpu = cpu();
    for e in engines(DType::F32) {
        let f = DType::F32;
        let (xc, xd) = random_pair(&e.be, &mut rng, &[2, 35, 3], f);
        let (gc, gd) = random_pair(&e.be, &mut rng, &[35], f);
        let (g6c, g6d) = random_pair(&e.be, &mut rng, &[6], f);

        // Groups not dividing the channels: BadValue on both.
        let ec = cpu.group_norm(&xc, &gc, &gc, 6, EPS, false).err().unwrap();
        let ed = e.be.group_norm(&xd, &gd, &gd, 6, EPS, false).err().unwrap();
        assert!(matches!(ed, Error::BadValue { .. }), "{ed}");
        same_error("35 channels / 6 groups", ec, ed);
        // gamma of the wrong length.
        let ec = cpu.group_norm(&xc, &g6c, &gc, 5, EPS, true).err().unwrap();
        let ed = e.be.group_norm(&xd, &g6d, &gd, 5, EPS, true).err().unwrap();
        assert!(matches!(ed, Error::ShapeMismatch { .. }), "{ed}");
        same_error("group_norm gamma [6]", ec, ed);
        // Rank 1 x.
        let ec = cpu.group_norm(&gc, &gc, &gc, 5, EPS, false).err().unwrap();
        let ed = e.be.group_norm(&gd, &gd, &gd, 5, EPS, false).err().unwrap();
        same_error("group_norm rank 1", ec, ed);
        // Statistics of another shape in the backward.
        let (sc, sd) = (
            cpu.group_norm(&xc, &gc, &gc, 7, EPS, false).unwrap().1,
            e.be.group_norm(&xd, &gd, &gd, 7, EPS, false).unwrap().1,
        );
        let ec = cpu
            .group_norm_backward(&xc, &xc, &gc, &gc, &sc, 5, false)
            .err()
            .unwrap();
        let ed =
            e.be.group_norm_backward(&xd, &xd, &gd, &gd, &sd, 5, false)
                .err()
                .unwrap();
        assert!(matches!(ed, Error::ShapeMismatch { .. }), "{ed}");
        same_error("group_norm_backward stats [2, 7] for 5 groups", ec, ed);

        // LayerNorm: gamma not of the last dim; dy of another shape.
        let ec = cpu.layer_norm(&xc, &gc, &gc, EPS).err().unwrap();
        let ed = e.be.layer_norm(&xd, &gd, &gd, EPS).err().unwrap();
        assert!(matches!(ed, Error::ShapeMismatch { .. }), "{ed}");
        same_error("layer_norm gamma [35] for x [2, 35, 3]", ec, ed);
        let (lc, ld) = random_pair(&e.be, &mut rng, &[4, 6], f);
        let (sc, sd) = (
            cpu.layer_norm(&lc, &g6c, &g6c, EPS).unwrap().1,
            e.be.layer_norm(&ld, &g6d, &g6d, EPS).unwrap().1,
        );
        let ec = cpu.layer_norm_backward(&xc, &lc, &g6c, &sc).err().unwrap();
        let ed = e.be.layer_norm_backward(&xd, &ld, &g6d, &sd).err().unwrap();
        same_error("layer_norm_backward dy", ec, ed);
        // eps 0.
        let ec = cpu.layer_norm(&lc, &g6c, &g6c, 0.0).err().unwrap();
        let ed = e.be.layer_norm(&ld, &g6d, &g6d, 0.0).err().unwrap();
        same_error("layer_norm eps 0", ec, ed);

        // A CPU tensor given to the CUDA backend.
        let ed = e.be.group_norm(&xd, &gc, &gd, 5, EPS, false).err().unwrap();
        assert!(matches!(ed, Error::Device { .. }), "{ed}");
        let ed = e.be.layer_norm_backward(&ld, &lc, &g6d, &sd).err().unwrap();
        assert!(matches!(ed, Error::Device { .. }), "{ed}");
        // Statistics that are not f32.
        let half = e.be.tensor_from_f32(&[4], &[0.5; 4], DType::F16).unwrap();
        let bad = NormStats {
            mean: half,
            rstd: e.be.tensor_from_f32(&[4], &[1.0; 4], DType::F32).unwrap(),
        };
        let ed =
            e.be.layer_norm_backward(&ld, &ld, &g6d, &bad)
                .err()
                .unwrap();
        assert!(matches!(ed, Error::DType { .. }), "{ed}");
    }
}

// ---- The fast kernels (kernels/norm_fast.cu), f16 and bf16, against f64, the CPU in f32, and
// their simple twins ----

use lorafuse::backend::cuda::KernelChoice;

/// The engines of `dtype` as (fast, simple) backend pairs.
fn fast_simple_pairs(dtype: DType) -> Vec<(Engine, lorafuse::backend::cuda::CudaBackend)> {
    engines(dtype)
        .into_iter()
        .map(|e| {
            let simple = e.be.clone().with_kernels(KernelChoice::simple());
            let fast = Engine {
                be: e.be.with_kernels(KernelChoice::fast()),
                gpu: e.gpu,
            };
            (fast, simple)
        })
        .collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec().iter().map(|x| x.to_bits()).collect()
}

/// Fast GroupNorm and LayerNorm, forward and backward, on f16 and bf16 emulated backends for
/// the shapes they take; the simple kernels for declined shapes, the simple choice and f32
/// backends. Each fast call launches exactly one `gn_fast_forward`/`gn_fast_backward`/
/// `ln_fast_forward`/`ln_fast_backward` kernel, so their launches count the calls.
#[cfg(feature = "cuda-emu")]
#[test]
fn supported_shapes_take_the_fast_kernels() {
    use lorafuse::backend::cuda::{CudaBackend, Device};
    const FAST: [&str; 4] = [
        "gn_fast_forward",
        "gn_fast_backward",
        "ln_fast_forward",
        "ln_fast_backward",
    ];
    // GroupNorm fwd + bwd of x `gn` in `groups`, LayerNorm fwd + bwd of `ln`: the fast calls.
    let calls = |be: &CudaBackend, gn: &[usize], groups: usize, ln: &[usize]| {
        let d = be.compute_dtype();
        let t = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            be.tensor_from_f32(shape, &v, d).unwrap()
        };
        be.device().take_launch_counts();
        let (x, g) = (t(gn), t(&gn[1..2]));
        let (_, s) = be.group_norm(&x, &g, &g, groups, 1e-5, true).unwrap();
        be.group_norm_backward(&x, &x, &g, &g, &s, groups, true)
            .unwrap();
        let (x, g) = (t(ln), t(&ln[ln.len() - 1..]));
        let (_, s) = be.layer_norm(&x, &g, &g, 1e-5).unwrap();
        be.layer_norm_backward(&x, &x, &g, &s).unwrap();
        be.device()
            .take_launch_counts()
            .iter()
            .filter(|(k, _)| FAST.iter().any(|f| k.starts_with(f)))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let dev = Device::emulator();
    let fast = CudaBackend::new(dev.clone(), DType::F16)
        .unwrap()
        .with_kernels(KernelChoice::fast());
    let simple = fast.clone().with_kernels(KernelChoice::simple());
    let bf16_fast = CudaBackend::new(dev.clone(), DType::BF16)
        .unwrap()
        .with_kernels(KernelChoice::fast());
    let f32_fast = CudaBackend::new(dev, DType::F32)
        .unwrap()
        .with_kernels(KernelChoice::fast());
    assert_eq!(calls(&fast, &[2, 32, 7, 9], 4, &[5, 320]), 4);
    assert_eq!(calls(&fast, &[1, 320, 2, 2], 32, &[3, 1280]), 4);
    assert_eq!(calls(&fast, &[2, 6, 7, 9], 3, &[3, 37]), 0);
    assert_eq!(calls(&fast, &[1, 12, 5, 3], 3, &[2, 2056]), 0);
    assert_eq!(calls(&bf16_fast, &[2, 32, 7, 9], 4, &[5, 320]), 4);
    assert_eq!(calls(&simple, &[2, 32, 7, 9], 4, &[5, 320]), 0);
    assert_eq!(calls(&f32_fast, &[2, 32, 7, 9], 4, &[5, 320]), 0);
}

/// A shape the fast kernels decline runs the simple kernels, bit for bit. (Those they take sum
/// in other orders, but f16 outputs often round to the same bits: which shapes take the fast
/// kernels is asserted by `supported_shapes_take_the_fast_kernels`, through the launch counts.)
fn check_path(what: &str, fast: &[&Tensor], simple: &[&Tensor], expect_fast: bool) {
    let same = fast.iter().zip(simple).all(|(a, b)| bits(a) == bits(b));
    if !expect_fast {
        assert!(same, "{what}: declined, yet not the simple kernels' bits");
    }
}

fn f64s(t: &[&Tensor]) -> Vec<Tensor> {
    t.iter()
        .map(|x| cpu().cast(x, DType::F64).unwrap())
        .collect()
}

/// GroupNorm(+SiLU) on f16 (or bf16, the engine's dtype): the fast kernels' y and dx meet the
/// f16 criterion (bf16: `assert_criterion`'s bf16 rounding) against the CPU in f64, match the simple twin, and their statistics match the CPU's f32 ones; `expect_fast`
/// says whether the shape takes the fast path (checked bitwise against the simple kernels).
#[allow(clippy::too_many_arguments)]
fn group_norm_fast_case(
    e: &Engine,
    simple: &lorafuse::backend::cuda::CudaBackend,
    rng: &mut Rng,
    shape: &[usize],
    groups: usize,
    silu: bool,
    shift: f32,
    expect_fast: bool,
) {
    let what = format!(
        "fast group_norm {:?} {shape:?}/{groups} silu {silu} gpu {}",
        e.be.compute_dtype(),
        e.gpu
    );
    let dt = e.be.compute_dtype();
    let c = shape[1];
    let (xc, xd) = affine_pair(e, rng, shape, dt, 1.0, shift);
    let (gc, gd) = random_pair(&e.be, rng, &[c], dt);
    let (bc, bd) = random_pair(&e.be, rng, &[c], dt);
    let (dyc, dyd) = random_pair(&e.be, rng, shape, dt);
    let cpu = cpu();
    let (yb, sb) = cpu.group_norm(&xc, &gc, &bc, groups, EPS, silu).unwrap();
    let dxb = cpu
        .group_norm_backward(&dyc, &xc, &gc, &bc, &sb, groups, silu)
        .unwrap();
    let r = f64s(&[&xc, &gc, &bc, &dyc]);
    let (yr, sr) = cpu
        .group_norm(&r[0], &r[1], &r[2], groups, EPS, silu)
        .unwrap();
    let dxr = cpu
        .group_norm_backward(&r[3], &r[0], &r[1], &r[2], &sr, groups, silu)
        .unwrap();

    let (yf, sf) = e.be.group_norm(&xd, &gd, &bd, groups, EPS, silu).unwrap();
    let (ys, ss) = simple.group_norm(&xd, &gd, &bd, groups, EPS, silu).unwrap();
    check_stats(&what, &sf, &sb);
    check_path(
        &format!("{what} forward"),
        &[&sf.mean, &sf.rstd],
        &[&ss.mean, &ss.rstd],
        expect_fast,
    );
    let (ey, eyb) = assert_criterion(dt, &format!("{what}: y"), &yf, &yb, &yr);
    assert_matches(&format!("{what}: y vs simple"), &yf, &ys, tol(dt));
    // Both backwards from the same statistics, so their bits differ only by the fast path.
    let dxf =
        e.be.group_norm_backward(&dyd, &xd, &gd, &bd, &ss, groups, silu)
            .unwrap();
    let dxs = simple
        .group_norm_backward(&dyd, &xd, &gd, &bd, &ss, groups, silu)
        .unwrap();
    check_path(&format!("{what} backward"), &[&dxf], &[&dxs], expect_fast);
    let (edx, edxb) = assert_criterion(dt, &format!("{what}: dx"), &dxf, &dxb, &dxr);
    assert_matches(&format!("{what}: dx vs simple"), &dxf, &dxs, tol(dt));
    println!("{what}: y err {ey:.3e} (CPU f32 {eyb:.3e}), dx err {edx:.3e} (CPU f32 {edxb:.3e})");
}

/// LayerNorm on f16 (or bf16), as [`group_norm_fast_case`].
fn layer_norm_fast_case(
    e: &Engine,
    simple: &lorafuse::backend::cuda::CudaBackend,
    rng: &mut Rng,
    shape: &[usize],
    shift: f32,
    expect_fast: bool,
) {
    let what = format!(
        "fast layer_norm {:?} {shape:?} gpu {}",
        e.be.compute_dtype(),
        e.gpu
    );
    let dt = e.be.compute_dtype();
    let c = *shape.last().unwrap();
    let (xc, xd) = affine_pair(e, rng, shape, dt, 1.0, shift);
    let (gc, gd) = random_pair(&e.be, rng, &[c], dt);
    let (bc, bd) = random_pair(&e.be, rng, &[c], dt);
    let (dyc, dyd) = random_pair(&e.be, rng, shape, dt);
    let cpu = cpu();
    let (yb, sb) = cpu.layer_norm(&xc, &gc, &bc, EPS).unwrap();
    let dxb = cpu.layer_norm_backward(&dyc, &xc, &gc, &sb).unwrap();
    let r = f64s(&[&xc, &gc, &bc, &dyc]);
    let (yr, sr) = cpu.layer_norm(&r[0], &r[1], &r[2], EPS).unwrap();
    let dxr = cpu.layer_norm_backward(&r[3], &r[0], &r[1], &sr).unwrap();

    let (yf, sf) = e.be.layer_norm(&xd, &gd, &bd, EPS).unwrap();
    let (ys, ss) = simple.layer_norm(&xd, &gd, &bd, EPS).unwrap();
    check_stats(&what, &sf, &sb);
    check_path(
        &format!("{what} forward"),
        &[&sf.mean, &sf.rstd],
        &[&ss.mean, &ss.rstd],
        expect_fast,
    );
    let (ey, eyb) = assert_criterion(dt, &format!("{what}: y"), &yf, &yb, &yr);
    assert_matches(&format!("{what}: y vs simple"), &yf, &ys, tol(dt));
    let dxf = e.be.layer_norm_backward(&dyd, &xd, &gd, &ss).unwrap();
    let dxs = simple.layer_norm_backward(&dyd, &xd, &gd, &ss).unwrap();
    check_path(&format!("{what} backward"), &[&dxf], &[&dxs], expect_fast);
    let (edx, edxb) = assert_criterion(dt, &format!("{what}: dx"), &dxf, &dxb, &dxr);
    assert_matches(&format!("{what}: dx vs simple"), &dxf, &dxs, tol(dt));
    println!("{what}: y err {ey:.3e} (CPU f32 {eyb:.3e}), dx err {edx:.3e} (CPU f32 {edxb:.3e})");
}

#[test]
fn fast_group_norm_meets_the_f16_criterion() {
    let mut rng = Rng::new(16);
    for (e, simple) in fast_simple_pairs(DType::F16) {
        for silu in [false, true] {
            // (shape, groups, shift, fast): 8 channels of an odd 7x9 plane per group (the
            // channel changes inside a vector), batch 2; rank 2 (one element per channel);
            // a mean far from zero; 17 chunks of an odd 33x65 plane, the last one short;
            // 32 chunks of 1152 (threads loop over two vectors). Declined: 2 and 4 channels of
            // 63 and 15 elements (spans 126 and 60, not multiples of 8).
            for (shape, groups, shift, fast) in [
                (&[2, 32, 7, 9][..], 4, 0.0, true),
                (&[4, 64], 8, 0.0, true),
                (&[2, 64, 9, 9], 8, 4.0, true),
                (&[1, 8, 33, 65], 1, 0.0, true),
                (&[1, 4, 96, 96], 1, 0.0, true),
                (&[2, 6, 7, 9], 3, 0.0, false),
                (&[1, 12, 5, 3], 3, 0.0, false),
            ] {
                group_norm_fast_case(&e, &simple, &mut rng, shape, groups, silu, shift, fast);
            }
        }
    }
}

#[test]
fn fast_group_norm_sd15_shapes() {
    let mut rng = Rng::new(17);
    for (e, simple) in fast_simple_pairs(DType::F16) {
        // SD1.5's ResNet GroupNorms, 32 groups: 320 channels at 16x16, 1280 at 8x8.
        group_norm_fast_case(
            &e,
            &simple,
            &mut rng,
            &[1, 320, 16, 16],
            32,
            true,
            0.0,
            true,
        );
        group_norm_fast_case(
            &e,
            &simple,
            &mut rng,
            &[1, 1280, 8, 8],
            32,
            false,
            0.0,
            true,
        );
        if e.gpu {
            for (shape, silu) in [
                (&[1, 320, 64, 64][..], true),
                (&[2, 640, 32, 32], true),
                (&[2, 1280, 8, 8], false),
                (&[1, 128, 256, 256], true),
            ] {
                group_norm_fast_case(&e, &simple, &mut rng, shape, 32, silu, 0.0, true);
            }
        }
    }
}

#[test]
fn fast_layer_norm_meets_the_f16_criterion() {
    let mut rng = Rng::new(18);
    for (e, simple) in fast_simple_pairs(DType::F16) {
        // (shape, shift, fast): SD1.5's transformer (320) and CLIP (768) widths at 77 and 256
        // rows (77: the last block's warps partly idle), 640 and 1280 (4 and 8 vectors per
        // lane), one vector per row, a mean far from zero. Declined: widths 37 and 1001 (not
        // multiples of 8) and 2056 (wider than a warp's registers hold).
        for (shape, shift, fast) in [
            (&[77, 320][..], 0.0, true),
            (&[256, 320], 0.0, true),
            (&[77, 768], 0.0, true),
            (&[2, 128, 768], 0.0, true),
            (&[5, 640], 0.0, true),
            (&[3, 1280], 0.0, true),
            (&[6, 8], 0.0, true),
            (&[9, 320], 3.0, true),
            (&[3, 37], 0.0, false),
            (&[2, 1001], 0.0, false),
            (&[2, 2056], 0.0, false),
        ] {
            layer_norm_fast_case(&e, &simple, &mut rng, shape, shift, fast);
        }
        if e.gpu {
            for shape in [
                &[2, 4096, 320][..],
                &[2, 1024, 640],
                &[2, 256, 1280],
                &[2, 77, 768],
            ] {
                layer_norm_fast_case(&e, &simple, &mut rng, shape, 0.0, true);
            }
        }
    }
}

/// The emulator as a T4 (sm_75, 64 KiB of shared memory per block): the fast GroupNorm
/// (+SiLU) and LayerNorm and their simple twins as on the CPU (no tensor cores in either).
#[cfg(feature = "cuda-emu")]
#[test]
fn fast_norms_on_turing() {
    let e = Engine {
        be: emulating("T4", DType::F16),
        gpu: false,
    };
    let simple = e.be.clone().with_kernels(KernelChoice::simple());
    let mut rng = Rng::new(19);
    group_norm_fast_case(&e, &simple, &mut rng, &[2, 32, 7, 9], 4, true, 0.0, true);
    layer_norm_fast_case(&e, &simple, &mut rng, &[77, 320], 0.0, true);
    assert_turing_path("norms", &e.be, false);
}

/// bf16 on the fast kernels (compute capability 8.0+: the emulator's A100, or the GPU):
/// GroupNorm(+SiLU) with the channel changing inside a vector and over 17 chunks, LayerNorm
/// at 2, 4 and 8 vectors per lane and a declined width, by the criterion with the baseline
/// rounded to bf16; the launches were the `_bf16` entry points (no tensor cores).
#[test]
fn fast_norms_bf16() {
    let mut rng = Rng::new(20);
    for (e, simple) in fast_simple_pairs(DType::BF16) {
        for (shape, groups, silu) in [(&[2, 32, 7, 9][..], 4, true), (&[1, 8, 33, 65], 1, false)] {
            group_norm_fast_case(&e, &simple, &mut rng, shape, groups, silu, 0.0, true);
        }
        for (shape, fast) in [
            (&[77, 320][..], true),
            (&[5, 640], true),
            (&[3, 1280], true),
            (&[3, 37], false),
        ] {
            layer_norm_fast_case(&e, &simple, &mut rng, shape, 0.0, fast);
        }
        let launches = assert_bf16_fast_path("norms bf16", &e.be, &["gn_fast_", "ln_fast_"], false);
        for k in [
            "gn_fast_stats_bf16",
            "gn_fast_forward_bf16",
            "gn_fast_bwd_partials_bf16",
            "gn_fast_backward_bf16",
            "ln_fast_forward_bf16_v2",
            "ln_fast_backward_bf16_v4",
            "ln_fast_forward_bf16_v8",
        ] {
            assert!(launches.contains_key(k), "no {k} launch: {launches:?}");
        }
    }
}
