//! LoCon on the CUDA backend against the CPU: the conv weight-gradient kernel (f32, f16 and bf16
//! inputs, f32 dw, `=` and `+=`), and a LoRA conv's forward (y, the hidden) and backward (dX,
//! d(down), d(up)), with and without a dropout mask, strides 1 and 2, odd sizes, and ranks and
//! channel counts that leave tails in the kernels' tiles.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::cuda::CudaBackend;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Adapter, AdapterBackward, Conv2d, Lora, LoraBackward};
use lorafuse::rng::Rng;
use lorafuse::{DType, Tensor};

/// (n, c, h, w, o, r, stride): every case is a 3x3 conv with padding 1.
/// (n, c, h, w, o, rank, stride).
type Case = (usize, usize, usize, usize, usize, usize, usize);
const CASES: [Case; 4] = [
    (2, 3, 7, 9, 5, 2, 1),
    (1, 5, 13, 11, 37, 4, 2), // stride 2, odd input
    (2, 70, 5, 6, 3, 8, 1),   // C·k·k past one reduction chunk
    (1, 4, 8, 8, 66, 1, 2),   // rank 1, two channel tiles
];

/// An f32 adapter weight on the device and its CPU copy as the kernels see it (rounded to
/// f16 when the backend computes in f16: the backend casts it).
fn adapter_pair(
    be: &CudaBackend,
    rng: &mut Rng,
    shape: &[usize],
    dtype: DType,
) -> (Tensor, Tensor) {
    let v: Vec<f32> = nonzero(rng, shape.iter().product())
        .iter()
        .map(|x| x * 0.5)
        .collect();
    let host = if dtype == DType::F16 {
        round_f16(&v)
    } else {
        v.clone()
    };
    (
        Tensor::from_f32(shape, host).unwrap(),
        be.tensor_from_f32(shape, &v, DType::F32).unwrap(),
    )
}

/// A keep mask (p = 0.25) on the CPU and the device, in `dtype`.
fn mask_pair(be: &CudaBackend, rng: &mut Rng, shape: &[usize], dtype: DType) -> (Tensor, Tensor) {
    let v: Vec<f32> = (0..shape.iter().product())
        .map(|_| {
            if rng.uniform_vec(1, 0.0, 1.0)[0] < 0.25 {
                0.0
            } else {
                1.0 / 0.75
            }
        })
        .collect();
    pair(be, shape, &v, dtype)
}

#[test]
fn weight_grad_matches_cpu() {
    weight_grad_matches_cpu_in(&[DType::F32, DType::F16], &CASES);
}

/// The same in bf16 (compute capability 8.0 and later) on the stride-2, odd-input case (the
/// kernel is the f16 one's template: this checks its bf16 loads; the emulated weight gradient
/// is slow, so one case).
#[test]
fn weight_grad_matches_cpu_bf16() {
    weight_grad_matches_cpu_in(&[DType::BF16], &CASES[1..2]);
}

fn weight_grad_matches_cpu_in(dtypes: &[DType], cases: &[Case]) {
    let mut rng = Rng::new(31);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for &(n, c, h, w, o, _, s) in cases {
                for k in [3, 1] {
                    let p = Conv2d {
                        stride: if k == 1 { 1 } else { s },
                        padding: k / 2,
                    };
                    let (ho, wo) = (p.out_size(h, k).unwrap(), p.out_size(w, k).unwrap());
                    let (xc, xd) = random_pair(&e.be, &mut rng, &[n, c, h, w], dtype);
                    let (dyc, dyd) = random_pair(&e.be, &mut rng, &[n, o, ho, wo], dtype);
                    let shape = [o, c, k, k];
                    let mut want = Tensor::from_f32(shape, vec![0.0; o * c * k * k]).unwrap();
                    let mut got = e.be.zeros(&shape, DType::F32).unwrap();
                    for accum in [Accum::Assign, Accum::Add] {
                        cpu()
                            .conv2d_weight_grad(&xc, &dyc, p, 0.7, &mut want, accum)
                            .unwrap();
                        e.be.conv2d_weight_grad(&xd, &dyd, p, 0.7, &mut got, accum)
                            .unwrap();
                        let what =
                            format!("wgrad {:?} k{k} {dtype:?} {accum:?}", (n, c, h, w, o, s));
                        assert_eq!(got.dtype(), DType::F32);
                        assert_matches(&what, &got, &want, (1e-4, 1e-4));
                    }
                }
            }
        }
    }
}

#[test]
fn locon_matches_cpu() {
    let mut rng = Rng::new(32);
    for dtype in [DType::F32, DType::F16] {
        for e in engines(dtype) {
            for (i, &(n, c, h, w, o, r, s)) in CASES.iter().enumerate() {
                let p = Conv2d {
                    stride: s,
                    padding: 1,
                };
                let (ho, wo) = (p.out_size(h, 3).unwrap(), p.out_size(w, 3).unwrap());
                let (xc, xd) = random_pair(&e.be, &mut rng, &[n, c, h, w], dtype);
                let fan = ((c * 9) as f32).sqrt();
                let wv: Vec<f32> = nonzero(&mut rng, o * c * 9)
                    .iter()
                    .map(|x| x / fan)
                    .collect();
                let (wc, wd) = pair(&e.be, &[o, c, 3, 3], &wv, dtype);
                let (bc, bd) = random_pair(&e.be, &mut rng, &[o], dtype);
                let (dc, dd) = adapter_pair(&e.be, &mut rng, &[r, c, 3, 3], dtype);
                let (uc, ud) = adapter_pair(&e.be, &mut rng, &[o, r, 1, 1], dtype);
                let masked = i % 2 == 1;
                let (mc, md) = mask_pair(&e.be, &mut rng, &[n, r, ho, wo], dtype);
                let lora = |down, up, m| Lora {
                    down,
                    up,
                    scale: 0.6,
                    dropout: if masked { Some(m) } else { None },
                };
                let want = cpu()
                    .conv2d_out(
                        &xc,
                        &wc,
                        Some(&bc),
                        p,
                        Some(Adapter::Lora(lora(&dc, &uc, &mc))),
                    )
                    .unwrap();
                let got =
                    e.be.conv2d_out(
                        &xd,
                        &wd,
                        Some(&bd),
                        p,
                        Some(Adapter::Lora(lora(&dd, &ud, &md))),
                    )
                    .unwrap();
                let what = format!(
                    "locon {:?} masked {masked} {dtype:?}",
                    (n, c, h, w, o, r, s)
                );
                assert_eq!(got.y.dtype(), dtype);
                assert_matches(&format!("{what} y"), &got.y, &want.y, tol(dtype));
                let (hc, hd) = (want.lora_hidden.unwrap(), got.lora_hidden.unwrap());
                assert_matches(&format!("{what} hidden"), &hd, &hc, tol(dtype));

                // The backward from the same dY, with each side's own saved hidden.
                let (dyc, dyd) = random_pair(&e.be, &mut rng, &[n, o, ho, wo], dtype);
                let mut cpu_g = (
                    Tensor::from_f32([r, c, 3, 3], vec![f32::NAN; r * c * 9]).unwrap(),
                    Tensor::from_f32([o, r, 1, 1], vec![f32::NAN; o * r]).unwrap(),
                );
                let mut dev_g = (
                    e.be.zeros(&[r, c, 3, 3], DType::F32).unwrap(),
                    e.be.zeros(&[o, r, 1, 1], DType::F32).unwrap(),
                );
                let dx_c = cpu()
                    .conv2d_backward(
                        &dyc,
                        &wc,
                        (h, w),
                        p,
                        Some(AdapterBackward::Lora(LoraBackward {
                            lora: lora(&dc, &uc, &mc),
                            x: &xc,
                            hidden: &hc,
                            grad_down: &mut cpu_g.0,
                            grad_up: &mut cpu_g.1,
                            accum: Accum::Assign,
                        })),
                    )
                    .unwrap();
                let dx_d =
                    e.be.conv2d_backward(
                        &dyd,
                        &wd,
                        (h, w),
                        p,
                        Some(AdapterBackward::Lora(LoraBackward {
                            lora: lora(&dd, &ud, &md),
                            x: &xd,
                            hidden: &hd,
                            grad_down: &mut dev_g.0,
                            grad_up: &mut dev_g.1,
                            accum: Accum::Assign,
                        })),
                    )
                    .unwrap();
                assert_matches(&format!("{what} dx"), &dx_d, &dx_c, tol(dtype));
                // The adapters' gradients sum over every output pixel: f16 inputs give them
                // the f16 inputs' relative error, not the f32 accumulation's.
                let gtol = if dtype == DType::F16 {
                    (2e-2, 2e-2)
                } else {
                    (1e-4, 1e-4)
                };
                assert_matches(&format!("{what} d(down)"), &dev_g.0, &cpu_g.0, gtol);
                assert_matches(&format!("{what} d(up)"), &dev_g.1, &cpu_g.1, gtol);
            }
        }
    }
}

/// The whole tiny UNet with LoCon (the fixture's linear LoRA plus adapters on every 3x3 conv,
/// time projection and shortcut, all with non-zero up weights): output and every adapter
/// gradient against the CPU, f32 and f16.
#[test]
fn tiny_unet_with_locon_matches_the_cpu() {
    use lorafuse::backend::Backend;
    use lorafuse::lora::{kohya, LoraModule, LoraSet};
    use lorafuse::model::checkpoint::load_sd15;
    use lorafuse::model::layers::Ctx;
    use lorafuse::model::unet::Unet;
    use std::path::Path;

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ck = load_sd15(fixtures.join("tiny-sd15-diffusers")).unwrap();
    let d_ctx = ck.unet.0.cross_attention_dim;
    let mut rng = Rng::new(33);
    let mut inputs = vec![];
    for shape in [vec![2, 4, 16, 16], vec![2, 4, 16, 16], vec![2, 77, d_ctx]] {
        let n = shape.iter().product();
        inputs.push((shape, nonzero(&mut rng, n)));
    }
    inputs.push((vec![2], vec![37.0, 911.0]));
    // The conv adapters' weights, host side: (name, kind, down shape + values, up).
    let cpu_unet = Unet::load(&ck.unet.0, &ck.unet.1, &cpu(), "unet").unwrap();
    let targets = [cpu_unet.conv_targets(), cpu_unet.resnet_linear_targets()].concat();
    let host: Vec<_> = targets
        .iter()
        .map(|l| {
            let (ds, us) = l.kind.shapes(3, l.in_features, l.out_features);
            let scale = |v: Vec<f32>| v.iter().map(|x| x * 0.1).collect::<Vec<f32>>();
            let dv = scale(nonzero(&mut rng, ds.iter().product()));
            let uv = scale(nonzero(&mut rng, us.iter().product()));
            (l.name.clone(), l.kind, (ds, dv), (us, uv))
        })
        .collect();

    let step = |be: &dyn Backend| -> (Vec<f32>, Vec<Vec<f32>>) {
        let unet = Unet::load(&ck.unet.0, &ck.unet.1, be, "unet").unwrap();
        let linear = kohya::load(fixtures.join("tiny-lora.safetensors"), be, DType::F32).unwrap();
        let convs = host
            .iter()
            .map(|(name, kind, (ds, dv), (us, uv))| LoraModule {
                name: name.clone(),
                down: be.tensor_from_f32(ds, dv, DType::F32).unwrap(),
                up: be.tensor_from_f32(us, uv, DType::F32).unwrap(),
                alpha: 2.0,
                kind: *kind,
                algo: Default::default(),
            })
            .collect();
        let n = linear.len();
        let lora = linear.with_inserted(n, LoraSet::new(convs));
        let dt = be.compute_dtype();
        let up = |i: usize| be.tensor_from_f32(&inputs[i].0, &inputs[i].1, dt).unwrap();
        let (x, target, ctx, t) = (up(0), up(1), up(2), up(3));
        let cx = Ctx::new(be, Some(&lora));
        let (out, tape) = unet.forward(&cx, &x, &t, &ctx, true, None).unwrap();
        let scale = if dt == DType::F16 { 1024.0 } else { 1.0 };
        let (_, d_out) = be.mse_loss(&out, &target, None, scale).unwrap();
        let mut grads = lora.zero_grads(be).unwrap();
        grads.accum = Accum::Assign;
        unet.backward(&cx, &d_out, &ctx, tape.unwrap(), &mut grads)
            .unwrap();
        let g = grads
            .down
            .iter()
            .chain(&grads.up)
            .map(|t| {
                let v = be.to_f32_vec(t).unwrap();
                v.iter().map(|g| g / scale as f32).collect()
            })
            .collect();
        (be.to_f32_vec(&out).unwrap(), g)
    };
    let rel = |a: &[f32], b: &[f32]| {
        let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (d / n.max(1e-30)).sqrt()
    };
    let (out_c, g_c) = step(&cpu());
    for dtype in [DType::F32, DType::F16] {
        let bound = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
        for e in engines(dtype) {
            let (out_g, g_g) = step(&e.be);
            let r = rel(&out_g, &out_c);
            assert!(r < bound, "{dtype:?}: output rel. error {r}");
            let mut worst = 0.0f64;
            for (i, (a, b)) in g_g.iter().zip(&g_c).enumerate() {
                assert!(a.iter().all(|x| x.is_finite()), "{dtype:?}: gradient {i}");
                worst = worst.max(rel(a, b));
            }
            println!("LoCon UNet {dtype:?}: output {r:.2e}, worst adapter gradient {worst:.2e}");
            assert!(
                worst < 10.0 * bound,
                "{dtype:?}: worst gradient rel. error {worst}"
            );
        }
    }
}

/// LoHa (lora/loha.rs) on a linear layer (3-D and 2-D input) and a conv (stride 2, odd
/// sizes) on the CUDA backend against the CPU: y, dX and the four factors' gradients.
#[test]
fn loha_layers_match_cpu() {
    use common::cuda_layers::*;
    use lorafuse::lora::Algo;

    let mut rng = Rng::new(44);
    let (i, o, r, c, k) = (IN, OUT, RANK, CHANNELS, KERNEL);
    let case = AdapterCase {
        linear: vec![
            host(&mut rng, &[r, i], 1.0),
            host(&mut rng, &[o, r], 0.3),
            host(&mut rng, &[o, r], 0.3),
            host(&mut rng, &[r, i], 1.0),
        ],
        conv: vec![
            host(&mut rng, &[r, c * k * k], 1.0),
            host(&mut rng, &[o, r], 0.3),
            host(&mut rng, &[o, r], 0.3),
            host(&mut rng, &[r, c * k * k], 1.0),
        ],
        algo: |rest| Algo::Loha {
            w2_a: rest.next().unwrap(),
            w2_b: rest.next().unwrap(),
        },
    };
    let outputs = adapter_layers_match_cpu(&mut rng, &case);
    assert_eq!(outputs, 6 + 8, "y, dX x3 and 4 gradients per module");
}
