//! The CUDA convolution kernels against the CPU backend: conv2d (with and without bias) and
//! its input gradient, f32, f16 and bf16, on odd sizes that leave a tail in every tile dimension,
//! strides 1, 2 and 3 (both input sizes that map to one output size under stride 2), kernels
//! 1, 2, 3 and 5, batch > 1, SD1.5-like layers (full size on a GPU), and the errors.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::cuda::{CudaBackend, KernelChoice};
use lorafuse::backend::prelude::*;
use lorafuse::backend::Conv2d;
use lorafuse::rng::Rng;
use lorafuse::{DType, Error, Tensor};

/// One convolution: x [n, c, h, w], w [o, c, k, k], stride, padding.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
}

#[allow(clippy::too_many_arguments)]
const fn case(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Case {
    Case {
        n,
        c,
        h,
        w,
        o,
        k,
        s,
        p,
    }
}

impl Case {
    fn conv(&self) -> Conv2d {
        Conv2d {
            stride: self.s,
            padding: self.p,
        }
    }
    fn out_hw(&self) -> (usize, usize) {
        let c = self.conv();
        (
            c.out_size(self.h, self.k).unwrap(),
            c.out_size(self.w, self.k).unwrap(),
        )
    }
}

/// Small shapes for every engine: tails in channels (3, 5, 37, 70 > one 64-channel tile),
/// pixels (7x9, 13x11, batch 2), and the reduction (C·k·k not a multiple of 16).
const SMALL: [Case; 11] = [
    case(2, 3, 7, 9, 5, 3, 1, 1),
    case(2, 5, 13, 11, 37, 3, 2, 1), // stride 2, odd input: 13x11 -> 7x6
    case(1, 5, 8, 8, 3, 3, 2, 1),    // stride 2, even input: 8x8 -> 4x4
    case(2, 3, 13, 11, 5, 3, 2, 0),  // the VAE's stride-2 pad-0 conv: 13x11 -> 6x5
    case(1, 3, 12, 10, 4, 3, 2, 0),  // ... with an unreached last row and column
    case(1, 37, 7, 9, 5, 1, 1, 0),   // 1x1
    case(2, 3, 5, 5, 70, 3, 1, 1),   // two channel tiles
    case(1, 3, 4, 3, 2, 3, 1, 0),    // output 2x1
    case(1, 2, 10, 9, 3, 3, 3, 1),   // stride 3
    case(1, 3, 6, 7, 4, 2, 2, 0),    // k = 2
    case(2, 3, 9, 7, 5, 5, 1, 2),    // k = 5
];

/// SD1.5 layers at a small spatial size (emulator) or full size (GPU).
fn sd_cases(gpu: bool) -> Vec<Case> {
    if gpu {
        vec![
            case(2, 4, 64, 64, 320, 3, 1, 1),     // conv_in
            case(2, 320, 64, 64, 320, 3, 1, 1),   // down block 0 resnet
            case(2, 320, 64, 64, 320, 3, 2, 1),   // downsampler 64 -> 32
            case(2, 1280, 8, 8, 1280, 3, 1, 1),   // mid block resnet
            case(2, 2560, 16, 16, 1280, 3, 1, 1), // up block resnet after the skip concat
            case(2, 2560, 16, 16, 1280, 1, 1, 0), // its 1x1 shortcut
            case(1, 128, 65, 65, 128, 3, 2, 0),   // VAE downsampler after pad2d(0,1,0,1)
        ]
    } else {
        vec![
            case(1, 320, 8, 8, 320, 3, 1, 1), // down block 0 resnet
            case(2, 4, 9, 7, 320, 3, 1, 1),   // conv_in
            case(1, 640, 8, 8, 320, 1, 1, 0), // the 1x1 shortcut of an up block
        ]
    }
}

/// Weights as a trained network has them: magnitudes ~ 1/sqrt(fan-in), so outputs stay O(1)
/// whatever C·k·k (and the tolerances keep their meaning at 2560 channels).
fn weights(be: &CudaBackend, rng: &mut Rng, c: &Case, dtype: DType) -> (Tensor, Tensor) {
    let fan_in = (c.c * c.k * c.k) as f32;
    let v: Vec<f32> = nonzero(rng, c.o * c.c * c.k * c.k)
        .iter()
        .map(|x| x / fan_in.sqrt())
        .collect();
    pair(be, &[c.o, c.c, c.k, c.k], &v, dtype)
}

fn check_forward(e: &Engine, rng: &mut Rng, c: &Case, dtype: DType, bias: bool) {
    let (xc, xd) = random_pair(&e.be, rng, &[c.n, c.c, c.h, c.w], dtype);
    let (wc, wd) = weights(&e.be, rng, c, dtype);
    let (bc, bd) = random_pair(&e.be, rng, &[c.o], dtype);
    let want = cpu()
        .conv2d(&xc, &wc, bias.then_some(&bc), c.conv(), None)
        .unwrap();
    let got =
        e.be.conv2d(&xd, &wd, bias.then_some(&bd), c.conv(), None)
            .unwrap();
    assert_eq!(got.dtype(), dtype);
    let what = format!("conv2d {c:?} bias {bias} {dtype:?} gpu {}", e.gpu);
    assert_matches(&what, &got, &want, tol(dtype));
}

fn check_input_grad(e: &Engine, rng: &mut Rng, c: &Case, dtype: DType) {
    let (ho, wo) = c.out_hw();
    let (dyc, dyd) = random_pair(&e.be, rng, &[c.n, c.o, ho, wo], dtype);
    let (wc, wd) = weights(&e.be, rng, c, dtype);
    let want = cpu()
        .conv2d_input_grad(&dyc, &wc, (c.h, c.w), c.conv())
        .unwrap();
    let got =
        e.be.conv2d_input_grad(&dyd, &wd, (c.h, c.w), c.conv())
            .unwrap();
    assert_eq!(got.dtype(), dtype);
    let what = format!("conv2d_input_grad {c:?} {dtype:?} gpu {}", e.gpu);
    assert_matches(&what, &got, &want, tol(dtype));
}

#[test]
fn forward_matches_cpu() {
    forward_matches_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn forward_matches_cpu_bf16() {
    forward_matches_cpu_in(&[DType::BF16]);
}

fn forward_matches_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(21);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for (i, c) in SMALL.iter().enumerate() {
                check_forward(&e, &mut rng, c, dtype, i % 3 != 1);
            }
        }
    }
}

#[test]
fn input_grad_matches_cpu() {
    input_grad_matches_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn input_grad_matches_cpu_bf16() {
    input_grad_matches_cpu_in(&[DType::BF16]);
}

fn input_grad_matches_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(22);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for c in &SMALL {
                check_input_grad(&e, &mut rng, c, dtype);
            }
        }
    }
}

/// Stride 2 maps two input sizes onto one output size: 8 -> 4 and 7 -> 4 (pad 1), 10 -> 4
/// and 9 -> 4 (pad 0, the VAE's); the gradient must follow the size it is given.
#[test]
fn input_grad_both_input_sizes_of_stride_2() {
    let mut rng = Rng::new(23);
    for dtype in [DType::F32, DType::F16] {
        for e in engines(dtype) {
            for (h, w, p) in [(8, 8, 1), (7, 7, 1), (8, 7, 1), (10, 10, 0), (9, 9, 0)] {
                let c = case(2, 3, h, w, 4, 3, 2, p);
                assert_eq!(c.out_hw(), (4, 4), "{c:?}");
                check_input_grad(&e, &mut rng, &c, dtype);
            }
        }
    }
}

#[test]
fn sd15_layers() {
    let mut rng = Rng::new(24);
    for dtype in [DType::F32, DType::F16] {
        for e in engines(dtype) {
            for c in sd_cases(e.gpu) {
                check_forward(&e, &mut rng, &c, dtype, true);
                check_input_grad(&e, &mut rng, &c, dtype);
            }
        }
    }
}

#[test]
fn empty_sizes() {
    let mut rng = Rng::new(25);
    for e in engines(DType::F32) {
        // No input channels: y = bias. No batch: empty y. No output channels: dx = 0.
        for c in [
            case(2, 0, 5, 4, 3, 3, 1, 1),
            case(0, 3, 5, 4, 3, 3, 1, 1),
            case(1, 3, 5, 4, 0, 3, 2, 1),
        ] {
            check_forward(&e, &mut rng, &c, DType::F32, true);
            check_input_grad(&e, &mut rng, &c, DType::F32);
        }
    }
}

fn same_error<T: std::fmt::Debug, U: std::fmt::Debug>(
    what: &str,
    cpu: lorafuse::Result<T>,
    dev: lorafuse::Result<U>,
) -> Error {
    let (c, d) = (cpu.unwrap_err(), dev.unwrap_err());
    assert_eq!(
        std::mem::discriminant(&c),
        std::mem::discriminant(&d),
        "{what}: CPU {c} vs CUDA {d}"
    );
    d
}

#[test]
fn errors() {
    let mut rng = Rng::new(26);
    let cpu = cpu();
    for e in engines(DType::F32) {
        let be = &e.be;
        let (xc, xd) = random_pair(be, &mut rng, &[1, 3, 6, 6], DType::F32);
        let (wc, wd) = random_pair(be, &mut rng, &[4, 3, 3, 3], DType::F32);
        let (w5c, w5d) = random_pair(be, &mut rng, &[4, 5, 3, 3], DType::F32);
        let (bc, bd) = random_pair(be, &mut rng, &[3], DType::F32);
        let p = Conv2d {
            stride: 1,
            padding: 1,
        };
        // Channels of x and w disagree; a bias of the wrong length; a kernel larger than
        // the padded input.
        let err = same_error(
            "channels",
            cpu.conv2d(&xc, &w5c, None, p, None),
            be.conv2d(&xd, &w5d, None, p, None),
        );
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        let err = same_error(
            "bias",
            cpu.conv2d(&xc, &wc, Some(&bc), p, None),
            be.conv2d(&xd, &wd, Some(&bd), p, None),
        );
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        let (sc, sd) = random_pair(be, &mut rng, &[1, 3, 1, 1], DType::F32);
        let p0 = Conv2d {
            stride: 1,
            padding: 0,
        };
        let err = same_error(
            "too small",
            cpu.conv2d(&sc, &wc, None, p0, None),
            be.conv2d(&sd, &wd, None, p0, None),
        );
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        // dy of the wrong spatial size for the given input size.
        let (dyc, dyd) = random_pair(be, &mut rng, &[1, 4, 5, 6], DType::F32);
        let err = same_error(
            "dy size",
            cpu.conv2d_input_grad(&dyc, &wc, (6, 6), p),
            be.conv2d_input_grad(&dyd, &wd, (6, 6), p),
        );
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        // A CPU tensor given to the CUDA backend.
        let err = be.conv2d(&xc, &wd, None, p, None).unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "{err}");
        let err = be.conv2d(&xd, &wd, Some(&bc), p, None);
        assert!(err.is_err());
        let (b4c, _) = random_pair(be, &mut rng, &[4], DType::F32);
        let err = be.conv2d(&xd, &wd, Some(&b4c), p, None).unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "{err}");
        let (dy6c, _) = random_pair(be, &mut rng, &[1, 4, 6, 6], DType::F32);
        let err = be.conv2d_input_grad(&dy6c, &wd, (6, 6), p).unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "{err}");
    }
}

// ---- the fast (tensor-core) kernels of f16 backends, kernels/conv_fast.cu ----

/// Tails for the fast kernels: channels not multiples of the tiles (C = 20, O = 24, 70 > one
/// 64-channel tile), odd images (7x9, 13x11), batch 2, 1x1 and 3x3, stride 1 and 2 with both
/// input sizes of stride 2 (even and odd, pad 1 and the VAE's pad 0), the 4-channel conv_in,
/// a 1x1 stride-2 conv (input-gradient classes without taps), more than one 128-pixel tile,
/// K = C·k·k a multiple of 8 (16-byte weight copies) or not (element loads), and pointwise
/// convs with H·W a multiple of 8 (16-byte activation copies) or not.
const FAST: [Case; 13] = [
    case(2, 20, 7, 9, 24, 3, 1, 1),
    case(2, 20, 7, 9, 24, 1, 1, 0),
    case(2, 20, 8, 8, 24, 3, 2, 1), // stride 2, even input: 8x8 -> 4x4
    case(2, 20, 7, 9, 24, 3, 2, 1), // stride 2, odd input: 7x9 -> 4x5
    case(1, 20, 9, 9, 24, 3, 2, 0), // the VAE's pad 0, odd: 9x9 -> 4x4
    case(1, 20, 10, 10, 24, 3, 2, 0), // ... even: 10x10 -> 4x4, last row/column unreached
    case(2, 4, 9, 7, 70, 3, 1, 1),  // conv_in: C = 4 (K = 36), two channel tiles
    case(1, 24, 13, 11, 20, 1, 2, 0), // 1x1 stride 2
    case(1, 32, 13, 11, 72, 3, 1, 1), // K = 288 (16-byte copies), 143 pixels: two tiles
    case(2, 40, 9, 9, 40, 3, 2, 1), // stride 2 with 16-byte copies in the gradient
    case(1, 16, 8, 8, 8, 1, 1, 0),  // 1x1, K = 16: 16-byte activation copies
    case(3, 16, 4, 6, 8, 1, 1, 0),  // ... 24-pixel images: runs of 8 cross image ends
    case(1, 3, 4, 3, 2, 3, 1, 0),   // output 2x1, C = 3
];

/// SD1.5 layers for the fast kernels: small spatial sizes in the emulator, full on a GPU.
fn fast_sd_cases(gpu: bool) -> Vec<Case> {
    let mut v = sd_cases(gpu);
    if gpu {
        v.push(case(2, 640, 32, 32, 640, 3, 2, 1)); // downsampler 32 -> 16
        v.push(case(1, 512, 129, 129, 512, 3, 2, 0)); // VAE downsampler, 129 after the pad
    } else {
        v.push(case(1, 320, 9, 9, 320, 3, 2, 1)); // a downsampler at odd size
    }
    v
}

/// The CPU references for a fast f16 result: (f32 baseline, f64 reference), both from the
/// f16-rounded inputs.
fn cpu_refs<F: Fn(&lorafuse::CpuBackend, &[Tensor]) -> Tensor>(
    inputs: &[&Tensor],
    f: F,
) -> (Tensor, Tensor) {
    let cpu = cpu();
    let f32s: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    let f64s: Vec<Tensor> = inputs
        .iter()
        .map(|t| cpu.cast(t, DType::F64).unwrap())
        .collect();
    (f(&cpu, &f32s), f(&cpu, &f64s))
}

/// Whether two f16 tensors differ in some element (the fast kernel sums in another order
/// than the simple one, so over a long reduction some roundings differ).
fn differs(a: &Tensor, b: &Tensor) -> bool {
    a.to_f32_vec()
        .iter()
        .zip(b.to_f32_vec())
        .any(|(x, y)| x.to_bits() != y.to_bits())
}

/// Fast vs the f64 reference (f16 criterion) and vs the simple twin; returns whether the
/// fast and the simple results differ bitwise.
fn check_fast_forward(e: &Engine, rng: &mut Rng, c: &Case, bias: bool) -> bool {
    let fast = e.be.clone().with_kernels(KernelChoice::fast());
    let simple = e.be.clone().with_kernels(KernelChoice::simple());
    let (xc, xd) = random_pair(&e.be, rng, &[c.n, c.c, c.h, c.w], DType::F16);
    let (wc, wd) = weights(&e.be, rng, c, DType::F16);
    let (bc, bd) = random_pair(&e.be, rng, &[c.o], DType::F16);
    let p = c.conv();
    let got = fast.conv2d(&xd, &wd, bias.then_some(&bd), p, None).unwrap();
    let twin = simple
        .conv2d(&xd, &wd, bias.then_some(&bd), p, None)
        .unwrap();
    let (base, reference) = cpu_refs(&[&xc, &wc, &bc], |cpu, t| {
        cpu.conv2d(&t[0], &t[1], bias.then_some(&t[2]), p, None)
            .unwrap()
    });
    let what = format!("fast conv2d {c:?} bias {bias} gpu {}", e.gpu);
    let (ge, be) = assert_f16_criterion(&what, &got, &base, &reference);
    let (se, _) = assert_f16_criterion(&format!("{what} (simple)"), &twin, &base, &reference);
    println!("{what}: fast {ge:.3e}, simple {se:.3e}, cpu f32 baseline {be:.3e} vs f64");
    assert_matches(&format!("{what} vs simple"), &got, &twin, tol(DType::F16));
    differs(&got, &twin)
}

fn check_fast_input_grad(e: &Engine, rng: &mut Rng, c: &Case) -> bool {
    let fast = e.be.clone().with_kernels(KernelChoice::fast());
    let simple = e.be.clone().with_kernels(KernelChoice::simple());
    let (ho, wo) = c.out_hw();
    let (dyc, dyd) = random_pair(&e.be, rng, &[c.n, c.o, ho, wo], DType::F16);
    let (wc, wd) = weights(&e.be, rng, c, DType::F16);
    let (p, hw) = (c.conv(), (c.h, c.w));
    let got = fast.conv2d_input_grad(&dyd, &wd, hw, p).unwrap();
    let twin = simple.conv2d_input_grad(&dyd, &wd, hw, p).unwrap();
    let (base, reference) = cpu_refs(&[&dyc, &wc], |cpu, t| {
        cpu.conv2d_input_grad(&t[0], &t[1], hw, p).unwrap()
    });
    let what = format!("fast conv2d_input_grad {c:?} gpu {}", e.gpu);
    let (ge, be) = assert_f16_criterion(&what, &got, &base, &reference);
    let (se, _) = assert_f16_criterion(&format!("{what} (simple)"), &twin, &base, &reference);
    println!("{what}: fast {ge:.3e}, simple {se:.3e}, cpu f32 baseline {be:.3e} vs f64");
    assert_matches(&format!("{what} vs simple"), &got, &twin, tol(DType::F16));
    differs(&got, &twin)
}

/// Tails and SD1.5 shapes through the fast forward kernel. On a GPU the SD1.5 cases (K = 2880
/// and more) must differ bitwise from the simple kernel somewhere (the tensor cores sum in
/// another order): proof the fast path ran. The emulator's mma sums in the simple kernel's
/// order, bit for bit, so there the unit test `fast_path_taken_only_when_chosen`
/// (src/backend/cuda/ops/conv/fast.rs) counts the fast launches instead.
#[test]
fn fast_forward_f16() {
    let mut rng = Rng::new(31);
    for e in engines(DType::F16) {
        for (i, c) in FAST.iter().enumerate() {
            check_fast_forward(&e, &mut rng, c, i % 3 != 1);
        }
        let mut any = false;
        for c in fast_sd_cases(e.gpu) {
            any |= check_fast_forward(&e, &mut rng, &c, true);
        }
        assert!(
            any || !e.gpu,
            "the fast conv2d gave the simple kernel's bits everywhere (not taken?)"
        );
    }
}

#[test]
fn fast_input_grad_f16() {
    let mut rng = Rng::new(32);
    for e in engines(DType::F16) {
        for c in &FAST {
            check_fast_input_grad(&e, &mut rng, c);
        }
        for (h, w, p) in [(8, 8, 1), (7, 7, 1), (8, 7, 1), (10, 10, 0), (9, 9, 0)] {
            let c = case(2, 20, h, w, 24, 3, 2, p);
            check_fast_input_grad(&e, &mut rng, &c);
        }
        let mut any = false;
        for c in fast_sd_cases(e.gpu) {
            any |= check_fast_input_grad(&e, &mut rng, &c);
        }
        assert!(
            any || !e.gpu,
            "the fast input gradient gave the simple kernel's bits everywhere (not taken?)"
        );
    }
}

/// The emulator as a T4 (sm_75): the fast forward and input gradient through m16n8k8 pairs
/// and synchronous copies (both of the kernel's B loads: cp.async copies and staged loads;
/// its pointwise A loads), every result as on the CPU.
#[cfg(feature = "cuda-emu")]
#[test]
fn fast_kernels_on_turing_f16() {
    let e = Engine {
        be: emulating("T4", DType::F16),
        gpu: false,
    };
    let mut rng = Rng::new(33);
    for (i, c) in FAST.iter().enumerate().step_by(3) {
        check_fast_forward(&e, &mut rng, c, i % 2 == 0);
        check_fast_input_grad(&e, &mut rng, c);
    }
    assert_turing_path("conv", &e.be, true);
}

/// f32 backends keep the simple kernels whatever the choice: bit-identical results.
#[test]
fn f32_backends_run_the_simple_kernels() {
    let mut rng = Rng::new(33);
    for e in engines(DType::F32) {
        let c = case(1, 20, 7, 9, 24, 3, 1, 1);
        let (_, xd) = random_pair(&e.be, &mut rng, &[c.n, c.c, c.h, c.w], DType::F32);
        let (_, wd) = weights(&e.be, &mut rng, &c, DType::F32);
        let f = e.be.clone().with_kernels(KernelChoice::fast());
        let s = e.be.clone().with_kernels(KernelChoice::simple());
        let a = f.conv2d(&xd, &wd, None, c.conv(), None).unwrap();
        let b = s.conv2d(&xd, &wd, None, c.conv(), None).unwrap();
        assert!(!differs(&a, &b));
    }
}

/// The fast kernels' bf16 entry points (bf16 backends on compute capability 8.0 and later):
/// forward (with and without bias) and input gradient on every other tail case, against the
/// CPU in f32 on the same bf16-rounded inputs and against the simple bf16 kernels, both with
/// `tol(DType::BF16)`; each op's launches are the fast bf16 kernels', never the simple ones.
#[test]
fn fast_kernels_bf16() {
    let mut rng = Rng::new(34);
    for e in engines(DType::BF16) {
        let dt = DType::BF16;
        let fast = e.be.clone().with_kernels(KernelChoice::fast());
        let simple = e.be.clone().with_kernels(KernelChoice::simple());
        let dev = fast.device().clone();
        for (i, c) in FAST.iter().enumerate().step_by(2) {
            let what = format!("fast bf16 {c:?} gpu {}", e.gpu);
            let taps = format!("conv_fast_t{}{}_bf16", c.k, c.k);
            let (p, hw) = (c.conv(), (c.h, c.w));
            let bias = i % 4 == 0;
            let (xc, xd) = random_pair(&e.be, &mut rng, &[c.n, c.c, c.h, c.w], dt);
            let (wc, wd) = weights(&e.be, &mut rng, c, dt);
            let (bc, bd) = random_pair(&e.be, &mut rng, &[c.o], dt);
            dev.take_launch_counts();
            let got = fast.conv2d(&xd, &wd, bias.then_some(&bd), p, None).unwrap();
            let launched = dev.take_launch_counts();
            assert_eq!(
                launched.get(taps.as_str()),
                Some(&1),
                "{what}: {launched:?}"
            );
            assert_eq!(launched.len(), 1, "{what}: {launched:?}");
            let twin = simple
                .conv2d(&xd, &wd, bias.then_some(&bd), p, None)
                .unwrap();
            let want = cpu()
                .conv2d(&xc, &wc, bias.then_some(&bc), p, None)
                .unwrap();
            assert_eq!(got.dtype(), dt);
            assert_matches(&format!("{what} conv2d"), &got, &want, tol(dt));
            assert_matches(&format!("{what} conv2d vs simple"), &got, &twin, tol(dt));

            let (ho, wo) = c.out_hw();
            let (dyc, dyd) = random_pair(&e.be, &mut rng, &[c.n, c.o, ho, wo], dt);
            dev.take_launch_counts();
            let got = fast.conv2d_input_grad(&dyd, &wd, hw, p).unwrap();
            let launched = dev.take_launch_counts();
            assert_eq!(
                launched.get("conv_fast_wgrad_layout_bf16"),
                Some(&1),
                "{what}: {launched:?}"
            );
            assert!(
                launched
                    .keys()
                    .all(|k| k.starts_with("conv_fast_") && k.ends_with("_bf16")),
                "{what}: {launched:?}"
            );
            let twin = simple.conv2d_input_grad(&dyd, &wd, hw, p).unwrap();
            let want = cpu().conv2d_input_grad(&dyc, &wc, hw, p).unwrap();
            assert_matches(&format!("{what} input grad"), &got, &want, tol(dt));
            assert_matches(
                &format!("{what} input grad vs simple"),
                &got,
                &twin,
                tol(dt),
            );
        }
    }
}
