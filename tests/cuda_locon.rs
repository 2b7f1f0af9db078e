//! LoCon on the CUDA backend against the CPU: the conv weight-gradient kernel (f32, f16 and bf16
//! inputs, f32 dw, `=` and `+=`), and a LoRA conv's forward (y, the hidden) and backward (dX,
//! d(down), d(up)), with and without a dropout mask, strides 1 and 2, odd sizes, and ranks and
//! channel counts that leave tails in the kernels' tiles: the fused kernels of f16 and bf16
//! backends (kernels/conv_fast.cu; their launches asserted) against the composed simple path
//! and the CPU.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::cuda::KernelChoice;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Adapter, AdapterBackward, Conv2d, Lora, LoraBackward};
use lorafuse::rng::Rng;
use lorafuse::{DType, Tensor};

/// One LoCon layer: a 3x3 conv with padding 1, x [n, c, h, w], w [o, c, 3, 3], the adapter
/// down [rank, c, 3, 3] with the layer's stride and up [o, rank, 1, 1], with or without a
/// dropout mask on the hidden.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    rank: usize,
    stride: usize,
    masked: bool,
}

impl Case {
    fn conv(&self) -> Conv2d {
        Conv2d {
            stride: self.stride,
            padding: 1,
        }
    }
    fn out_hw(&self) -> (usize, usize) {
        let p = self.conv();
        (
            p.out_size(self.h, 3).unwrap(),
            p.out_size(self.w, 3).unwrap(),
        )
    }
}

/// Tails in every tile dimension of the fused kernels, strides 1 and 2, masks on and off.
const CASES: [Case; 4] = [
    // Odd sizes, rank 3 (weight rows loaded by elements), batch 2.
    Case {
        n: 2,
        c: 5,
        h: 7,
        w: 9,
        o: 6,
        rank: 3,
        stride: 1,
        masked: false,
    },
    // A down-sampler: stride 2, 8x8 -> 4x4; O = 66, so the down rows share the second
    // channel tile with w's last two; rank 8 (16-byte weight copies); a mask.
    Case {
        n: 1,
        c: 8,
        h: 8,
        w: 8,
        o: 66,
        rank: 8,
        stride: 2,
        masked: true,
    },
    // 8x8 (the up conv's 16-byte pixel runs), C·9 = 144 (16-byte weight copies), a mask.
    Case {
        n: 1,
        c: 16,
        h: 8,
        w: 8,
        o: 24,
        rank: 4,
        stride: 1,
        masked: true,
    },
    // Stride 2 on an odd input (7x6 -> 4x3), batch 2, rank 1.
    Case {
        n: 2,
        c: 3,
        h: 7,
        w: 6,
        o: 4,
        rank: 1,
        stride: 2,
        masked: false,
    },
];

/// A case's random values: the layer's, the adapter's (f32, as trained), a keep mask
/// (p = 0.25) and two output gradients.
struct Values {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    down: Vec<f32>,
    up: Vec<f32>,
    mask: Option<Vec<f32>>,
    dy: [Vec<f32>; 2],
}

impl Values {
    fn new(rng: &mut Rng, c: &Case) -> Values {
        let (ho, wo) = c.out_hw();
        let fan = ((c.c * 9) as f32).sqrt();
        let half = |v: Vec<f32>| v.iter().map(|x| x * 0.5).collect::<Vec<f32>>();
        let mask = (0..c.n * c.rank * ho * wo)
            .map(|_| {
                if rng.uniform_vec(1, 0.0, 1.0)[0] < 0.25 {
                    0.0
                } else {
                    1.0 / 0.75
                }
            })
            .collect();
        Values {
            x: nonzero(rng, c.n * c.c * c.h * c.w),
            w: nonzero(rng, c.o * c.c * 9)
                .iter()
                .map(|x| x / fan)
                .collect(),
            b: nonzero(rng, c.o),
            down: half(nonzero(rng, c.rank * c.c * 9)),
            up: half(nonzero(rng, c.o * c.rank)),
            mask: c.masked.then_some(mask),
            dy: [
                nonzero(rng, c.n * c.o * ho * wo),
                nonzero(rng, c.n * c.o * ho * wo),
            ],
        }
    }
}

/// A case's tensors on one backend: activations and the layer's weights in `dt`, the adapter
/// in f32.
struct Inputs {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    down: Tensor,
    up: Tensor,
    mask: Option<Tensor>,
    dy: [Tensor; 2],
}

impl Inputs {
    /// On the device (`dt` its dtype) or, with `rounded_to`, on the CPU in f32 from the values
    /// as the device holds or casts them (the adapter too: the forward casts it).
    fn new(be: &dyn Backend, c: &Case, v: &Values, dt: DType, rounded_to: Option<DType>) -> Self {
        let (ho, wo) = c.out_hw();
        let t = |shape: &[usize], v: &[f32], d: DType| {
            let v = rounded_to.map_or(v.to_vec(), |r| rounded(r, v));
            be.tensor_from_f32(shape, &v, d).unwrap()
        };
        Inputs {
            x: t(&[c.n, c.c, c.h, c.w], &v.x, dt),
            w: t(&[c.o, c.c, 3, 3], &v.w, dt),
            b: t(&[c.o], &v.b, dt),
            down: t(&[c.rank, c.c, 3, 3], &v.down, DType::F32),
            up: t(&[c.o, c.rank, 1, 1], &v.up, DType::F32),
            mask: v.mask.as_ref().map(|m| t(&[c.n, c.rank, ho, wo], m, dt)),
            dy: [0, 1].map(|i| t(&[c.n, c.o, ho, wo], &v.dy[i], dt)),
        }
    }
    fn lora(&self) -> Lora<'_> {
        Lora {
            down: &self.down,
            up: &self.up,
            scale: 0.6,
            dropout: self.mask.as_ref(),
        }
    }
}

/// The backward from dy[0] with `Accum::Assign`, then from dy[1] with `Accum::Add` (the
/// gradients start as NaN: `Assign` must overwrite them): the two dX and d(down), d(up).
fn backward(be: &dyn Backend, c: &Case, i: &Inputs, hidden: &Tensor) -> [Tensor; 4] {
    let nan = |shape: &[usize]| {
        let n = shape.iter().product();
        be.tensor_from_f32(shape, &vec![f32::NAN; n], DType::F32)
            .unwrap()
    };
    let (mut gd, mut gu) = (nan(&[c.rank, c.c, 3, 3]), nan(&[c.o, c.rank, 1, 1]));
    let mut dx = vec![];
    for (dy, accum) in i.dy.iter().zip([Accum::Assign, Accum::Add]) {
        let lb = LoraBackward {
            lora: i.lora(),
            x: &i.x,
            hidden,
            grad_down: &mut gd,
            grad_up: &mut gu,
            accum,
        };
        let adapter = Some(AdapterBackward::Lora(lb));
        dx.push(
            be.conv2d_backward(dy, &i.w, (c.h, c.w), c.conv(), adapter)
                .unwrap(),
        );
    }
    let [a, b] = <[Tensor; 2]>::try_from(dx).unwrap();
    [a, b, gd, gu]
}

/// Forward (y, hidden) and backward ([`backward`]) of a case on one backend.
fn locon(be: &dyn Backend, c: &Case, i: &Inputs) -> (Tensor, Tensor, [Tensor; 4]) {
    let out = be
        .conv2d_out(
            &i.x,
            &i.w,
            Some(&i.b),
            c.conv(),
            Some(Adapter::Lora(i.lora())),
        )
        .unwrap();
    let hidden = out.lora_hidden.unwrap();
    let grads = backward(be, c, i, &hidden);
    (out.y, hidden, grads)
}

/// The fused LoCon kernels (f16 and bf16 backends, conv family fast) against the composed
/// path (the same backend with the simple kernels) and the CPU; f32 (always composed)
/// against the CPU. Forward y and hidden, backward dX twice and both adapter gradients
/// (`Assign` then `Add`); the launches of the fused path (exactly the fast kernels, no
/// mask, scale or add passes), and of the composed one (its scale pass).
#[test]
fn locon_matches_cpu() {
    locon_matches_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later): the fused kernels' bf16 entry points.
#[test]
fn locon_matches_cpu_bf16() {
    locon_matches_cpu_in(&[DType::BF16]);
}

fn locon_matches_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(32);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for c in &CASES {
                let v = Values::new(&mut rng, c);
                let cpu_in = Inputs::new(&cpu(), c, &v, DType::F32, Some(dtype));
                let (y, u, g) = locon(&cpu(), c, &cpu_in);
                let what = format!("locon {c:?} {dtype:?} gpu {}", e.gpu);
                // The adapters' gradients sum over every output pixel: 16-bit inputs give them
                // the inputs' relative error, not the f32 accumulation's.
                let gtol = match dtype {
                    DType::F16 => (2e-2, 2e-2),
                    DType::BF16 => (1.6e-1, 1.6e-1),
                    _ => (1e-4, 1e-4),
                };
                let check = |side: &str, (gy, gu, gg): &(Tensor, Tensor, [Tensor; 4])| {
                    let what = format!("{what} {side}");
                    assert_eq!(gy.dtype(), dtype);
                    assert_matches(&format!("{what} y"), gy, &y, tol(dtype));
                    assert_matches(&format!("{what} hidden"), gu, &u, tol(dtype));
                    for (k, name) in ["dx (assign)", "dx (add)"].iter().enumerate() {
                        assert_matches(&format!("{what} {name}"), &gg[k], &g[k], tol(dtype));
                    }
                    assert_matches(&format!("{what} d(down)"), &gg[2], &g[2], gtol);
                    assert_matches(&format!("{what} d(up)"), &gg[3], &g[3], gtol);
                };
                let sides: &[(&str, KernelChoice)] = if dtype == DType::F32 {
                    &[("composed", KernelChoice::fast())]
                } else {
                    &[
                        ("fused", KernelChoice::fast()),
                        ("composed", KernelChoice::simple()),
                    ]
                };
                for &(side, choice) in sides {
                    let be = e.be.clone().with_kernels(choice);
                    let dev = be.device().clone();
                    let inp = Inputs::new(&be, c, &v, dtype, None);
                    dev.take_launch_counts();
                    let out = be
                        .conv2d_out(
                            &inp.x,
                            &inp.w,
                            Some(&inp.b),
                            c.conv(),
                            Some(Adapter::Lora(inp.lora())),
                        )
                        .unwrap();
                    let fwd = dev.take_launch_counts();
                    let hidden = out.lora_hidden.unwrap();
                    let grads = backward(&be, c, &inp, &hidden);
                    let bwd = dev.take_launch_counts();
                    check(side, &(out.y, hidden, grads));
                    let sfx = format!("{dtype:?}").to_lowercase();
                    if side == "fused" {
                        assert_fused_launches(&what, c, &sfx, &fwd, &bwd);
                    } else {
                        assert_eq!(fwd.get(format!("scale_{sfx}").as_str()), Some(&1), "{what}");
                    }
                }
            }
        }
    }
}

/// The fused path's launches: forward a cast of each adapter weight, the 3x3 launch writing
/// y and the hidden, the 1x1 launch adding s·up·u; each backward the layouts (up and down
/// from f32, w), the hidden's gradient (1x1), dX per residue class of the stride, and the two
/// adapter weight gradients. Nothing else: no mask product, scale or add pass.
fn assert_fused_launches(
    what: &str,
    c: &Case,
    sfx: &str,
    fwd: &std::collections::BTreeMap<&'static str, u64>,
    bwd: &std::collections::BTreeMap<&'static str, u64>,
) {
    let map = |v: &[(&str, u64)]| -> std::collections::BTreeMap<String, u64> {
        v.iter().map(|(k, n)| (format!("{k}_{sfx}"), *n)).collect()
    };
    let own = |m: &std::collections::BTreeMap<&'static str, u64>| {
        m.iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let want_fwd = map(&[("cast_f32", 2), ("conv_fast_t33", 1), ("conv_fast_t11", 1)]);
    assert_eq!(own(fwd), want_fwd, "{what}: forward launches");
    // Per backward: g (1x1) plus the classes of dX (stride 2: 2x2, 2x1, 1x2, 1x1 taps).
    let classes: &[(&str, u64)] = if c.stride == 1 {
        &[("conv_fast_t11", 1), ("conv_fast_t33", 1)]
    } else {
        &[
            ("conv_fast_t11", 2),
            ("conv_fast_t12", 1),
            ("conv_fast_t21", 1),
            ("conv_fast_t22", 1),
        ]
    };
    let mut want_bwd = map(&[
        ("conv_fast_wgrad_layout_adapter", 4),
        ("conv_fast_wgrad_layout", 2),
        ("conv2d_wgrad", 4),
    ]);
    for (k, n) in map(classes) {
        want_bwd.insert(k, 2 * n);
    }
    assert_eq!(
        own(bwd),
        want_bwd,
        "{what}: backward launches (two backwards)"
    );
}

/// The weight-gradient kernel's cases (it also runs in every LoCon backward above): strides 1
/// and 2, odd sizes, a reduction over N·Ho·Wo = 288 pixels (more than the block's 256 threads).
const WGRAD_CASES: [Case; 3] = [
    Case {
        n: 2,
        c: 3,
        h: 7,
        w: 9,
        o: 5,
        rank: 0,
        stride: 1,
        masked: false,
    },
    Case {
        n: 2,
        c: 4,
        h: 12,
        w: 12,
        o: 6,
        rank: 0,
        stride: 1,
        masked: false,
    },
    Case {
        n: 1,
        c: 5,
        h: 13,
        w: 11,
        o: 7,
        rank: 0,
        stride: 2,
        masked: false,
    },
];

#[test]
fn weight_grad_matches_cpu() {
    weight_grad_matches_cpu_in(&[DType::F32, DType::F16], &WGRAD_CASES);
}

/// The same in bf16 (compute capability 8.0 and later) on the stride-2, odd-input case (the
/// kernel is the f16 one's template: this checks its bf16 loads; the emulated weight gradient
/// is slow, so one case).
#[test]
fn weight_grad_matches_cpu_bf16() {
    weight_grad_matches_cpu_in(&[DType::BF16], &WGRAD_CASES[2..]);
}

fn weight_grad_matches_cpu_in(dtypes: &[DType], cases: &[Case]) {
    let mut rng = Rng::new(31);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for case in cases {
                let Case {
                    n,
                    c,
                    h,
                    w,
                    o,
                    stride: s,
                    ..
                } = *case;
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

/// The whole tiny UNet with LoCon (the fixture's linear LoRA plus adapters on every 3x3 conv,
/// time projection and shortcut, all with non-zero up weights): output and every adapter
/// gradient against the CPU, in f16: the fast kernels and the fused LoCon conv, as GPU training
/// runs. (f32 LoCon, the simple kernels, is checked per layer by `locon_matches_cpu`; the
/// model's wiring of the adapters does not depend on the dtype, and an f32 run here cost a
/// third of the test's emulated time.)
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
    // One 16x16 latent (levels 16, 8, 4, 2; at 8x8 the last level is 1x1 and its GroupNorms
    // make some adapter gradients exactly 0), half the emulator's time of two (batches > 1
    // are the layer tests' business).
    for shape in [vec![1, 4, 16, 16], vec![1, 4, 16, 16], vec![1, 77, d_ctx]] {
        let n = shape.iter().product();
        inputs.push((shape, nonzero(&mut rng, n)));
    }
    inputs.push((vec![1], vec![911.0]));
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
    let dtype = DType::F16;
    let bound = 3e-2;
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
