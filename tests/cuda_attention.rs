//! The CUDA backend's attention (forward: O and lse; backward: dQ, dK, dV) against the CPU
//! backend, in f32, f16 and bf16: odd sizes that leave a tail in every tile, batch > 1, causal
//! masks shorter and longer than a tile, d != dv, SD1.5's head widths (40, 80, 160) and
//! cross-attention (77 keys), CLIP's causal 77 tokens; on a GPU also the full SD1.5 shapes.
//! Then the degenerate sizes, determinism, and the errors. Last, the fast (tensor-core) f16
//! kernels by the f16 criterion against an f64 CPU reference, next to their simple twins.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::cuda::{CudaBackend, KernelChoice};
use lorafuse::backend::prelude::*;
use lorafuse::backend::Attention;
use lorafuse::rng::Rng;
use lorafuse::{DType, Error, Tensor};

/// q [b, lq, h·d], k [b, lk, h·d], v [b, lk, h·dv].
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    causal: bool,
}

impl Case {
    fn p(&self) -> Attention {
        Attention {
            heads: self.h,
            causal: self.causal,
        }
    }
}

fn self_attn(b: usize, h: usize, l: usize, d: usize) -> Case {
    Case {
        b,
        h,
        lq: l,
        lk: l,
        d,
        dv: d,
        causal: false,
    }
}

/// Runs the forward and the backward of `c` on `be` and on the CPU, from the same inputs,
/// and compares every output.
fn check_case(be: &CudaBackend, dtype: DType, rng: &mut Rng, c: Case) {
    let what = format!("{c:?} {dtype:?}");
    let cpu = cpu();
    let (qc, qg) = random_pair(be, rng, &[c.b, c.lq, c.h * c.d], dtype);
    let (kc, kg) = random_pair(be, rng, &[c.b, c.lk, c.h * c.d], dtype);
    let (vc, vg) = random_pair(be, rng, &[c.b, c.lk, c.h * c.dv], dtype);

    let (o_want, lse_want) = cpu.attention(&qc, &kc, &vc, c.p()).unwrap();
    let (o_got, lse_got) = be.attention(&qg, &kg, &vg, c.p()).unwrap();
    assert_eq!(o_got.dtype(), dtype, "{what}: o dtype");
    assert_eq!(lse_got.dtype(), DType::F32, "{what}: lse is f32 always");
    assert_matches(&format!("{what}: o"), &o_got, &o_want, tol(dtype));
    // lse is f32 on both sides, computed in f32 from the same (rounded) inputs.
    assert_matches(
        &format!("{what}: lse"),
        &lse_got,
        &lse_want,
        tol(DType::F32),
    );

    // The backward from identical saved tensors on both sides: the CPU's O (rounded to the
    // dtype as the device holds it) and lse, and a random dO.
    let o_vals = o_want.to_f32_vec();
    let (oc, og) = pair(be, o_want.dims(), &o_vals, dtype);
    let lse_vals = lse_want.to_f32_vec();
    let lse_g = be
        .tensor_from_f32(lse_want.dims(), &lse_vals, DType::F32)
        .unwrap();
    let (gc, gg) = random_pair(be, rng, o_want.dims(), dtype);
    let (dq_w, dk_w, dv_w) = cpu
        .attention_backward(&qc, &kc, &vc, &oc, &lse_want, &gc, c.p())
        .unwrap();
    let (dq, dk, dv) = be
        .attention_backward(&qg, &kg, &vg, &og, &lse_g, &gg, c.p())
        .unwrap();
    for (name, got, want) in [("dq", &dq, &dq_w), ("dk", &dk, &dk_w), ("dv", &dv, &dv_w)] {
        assert_eq!(got.dtype(), dtype, "{what}: {name} dtype");
        assert_matches(&format!("{what}: {name}"), got, want, tol(dtype));
    }
}

fn check_all(seed: u64, cases: &[Case]) {
    check_all_gpu(seed, cases, &[]);
}

/// `cases` on every engine, and `gpu_cases` (full SD1.5 sizes) on a GPU only.
fn check_all_gpu(seed: u64, cases: &[Case], gpu_cases: &[Case]) {
    check_all_in(&[DType::F32, DType::F16], seed, cases, gpu_cases);
}

/// [`check_all_gpu`] in `dtypes`.
fn check_all_in(dtypes: &[DType], seed: u64, cases: &[Case], gpu_cases: &[Case]) {
    for &dtype in dtypes {
        let mut rng = Rng::new(seed);
        for e in engines(dtype) {
            let extra = if e.gpu { gpu_cases } else { &[] };
            for &c in cases.iter().chain(extra) {
                check_case(&e.be, dtype, &mut rng, c);
            }
        }
    }
}

#[test]
fn odd_sizes_batched_with_d_not_dv() {
    // Tails in the 16-row query tiles, 32-row key tiles and 8-column accumulator groups.
    check_all(
        1,
        &[
            Case {
                b: 2,
                h: 3,
                lq: 37,
                lk: 29,
                d: 5,
                dv: 7,
                causal: false,
            },
            Case {
                b: 1,
                h: 2,
                lq: 1,
                lk: 45,
                d: 9,
                dv: 3,
                causal: false,
            },
        ],
    );
}

#[test]
fn causal_within_and_across_tiles() {
    let causal = |b, h, l, d, dv| Case {
        b,
        h,
        lq: l,
        lk: l,
        d,
        dv,
        causal: true,
    };
    // 13 < one tile; 45 spans three query tiles and two key tiles, with tails.
    check_all(2, &[causal(2, 3, 13, 6, 4), causal(2, 2, 45, 7, 11)]);
}

/// bf16 (compute capability 8.0 and later; the fast kernels, as f16's, by default) against the
/// CPU in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`: tails in every tile, d != dv, causal
/// across tiles, SD1.5's head widths (the dK/dV split of 160-wide heads included).
#[test]
fn odd_causal_and_sd15_widths_bf16() {
    let causal = |b, h, l, d, dv| Case {
        b,
        h,
        lq: l,
        lk: l,
        d,
        dv,
        causal: true,
    };
    let odd = Case {
        b: 2,
        h: 3,
        lq: 37,
        lk: 29,
        d: 5,
        dv: 7,
        causal: false,
    };
    let cases = [
        odd,
        causal(2, 2, 45, 7, 11),
        self_attn(1, 2, 23, 80),
        self_attn(1, 1, 19, 160),
    ];
    check_all_in(&[DType::BF16], 6, &cases, &[self_attn(1, 8, 4096, 40)]);
}

#[test]
fn cross_attention_like() {
    // SD1.5's cross-attention at the first level: 8 heads of 40 over CLIP's 77 tokens.
    let c = Case {
        b: 1,
        h: 8,
        lq: 64,
        lk: 77,
        d: 40,
        dv: 40,
        causal: false,
    };
    // On a GPU: 64x64 latents, 4096 queries.
    check_all_gpu(3, &[c], &[Case { lq: 4096, ..c }]);
}

#[test]
fn sd15_head_widths() {
    // SD1.5's self-attention head widths (320/8, 640/8, 1280/8) at small lengths, and the
    // widest head the kernels take.
    check_all_gpu(
        4,
        &[
            self_attn(1, 2, 40, 40),
            self_attn(1, 2, 23, 80),
            self_attn(1, 1, 19, 160),
            self_attn(1, 1, 9, 256),
        ],
        // On a GPU: 64x64, 32x32 and 16x16 latents.
        &[
            self_attn(1, 8, 4096, 40),
            self_attn(1, 8, 1024, 80),
            self_attn(1, 8, 256, 160),
        ],
    );
}

#[test]
fn clip_like_causal() {
    // CLIP ViT-L/14's text encoder: 77 tokens, 12 heads of 64, causal.
    check_all(
        5,
        &[Case {
            b: 1,
            h: 12,
            lq: 77,
            lk: 77,
            d: 64,
            dv: 64,
            causal: true,
        }],
    );
}

#[test]
fn degenerate_sizes_match_the_cpu() {
    // No queries (dK = dV = 0 must still be written), no batch, and a zero-width v.
    check_all(
        6,
        &[
            Case {
                b: 2,
                h: 2,
                lq: 0,
                lk: 5,
                d: 3,
                dv: 4,
                causal: false,
            },
            Case {
                b: 0,
                h: 2,
                lq: 3,
                lk: 5,
                d: 3,
                dv: 4,
                causal: false,
            },
            Case {
                b: 1,
                h: 2,
                lq: 6,
                lk: 5,
                d: 3,
                dv: 0,
                causal: false,
            },
        ],
    );
}

#[test]
fn deterministic() {
    let c = Case {
        b: 1,
        h: 2,
        lq: 70,
        lk: 50,
        d: 12,
        dv: 10,
        causal: false,
    };
    for dtype in [DType::F32, DType::F16] {
        let mut rng = Rng::new(7);
        for e in engines(dtype) {
            let be = &e.be;
            let (_, q) = random_pair(be, &mut rng, &[c.b, c.lq, c.h * c.d], dtype);
            let (_, k) = random_pair(be, &mut rng, &[c.b, c.lk, c.h * c.d], dtype);
            let (_, v) = random_pair(be, &mut rng, &[c.b, c.lk, c.h * c.dv], dtype);
            let (_, g) = random_pair(be, &mut rng, &[c.b, c.lq, c.h * c.dv], dtype);
            let run = || {
                let (o, lse) = be.attention(&q, &k, &v, c.p()).unwrap();
                let (dq, dk, dv) = be
                    .attention_backward(&q, &k, &v, &o, &lse, &g, c.p())
                    .unwrap();
                [o, lse, dq, dk, dv].map(|t| t.to_f32_vec())
            };
            let (a, b) = (run(), run());
            for (x, y) in a.iter().zip(&b) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(x), bits(y), "{dtype:?}: two runs differ");
            }
        }
    }
}

fn kind(e: &Error) -> std::mem::Discriminant<Error> {
    std::mem::discriminant(e)
}

#[test]
fn errors() {
    let cpu = cpu();
    for e in engines(DType::F32) {
        let be = &e.be;
        let dev = |shape: &[usize]| {
            let v = vec![0.5f32; shape.iter().product()];
            be.tensor_from_f32(shape, &v, DType::F32).unwrap()
        };
        let host =
            |shape: &[usize]| Tensor::from_f32(shape, vec![0.5; shape.iter().product()]).unwrap();
        let p = |heads, causal| Attention { heads, causal };

        // Bad shapes: the same error kind as the CPU backend.
        type Shapes<'a> = (&'a [usize], &'a [usize], &'a [usize], usize, bool);
        let shape_cases: [Shapes; 5] = [
            (&[1, 4, 8], &[1, 5, 6], &[1, 5, 6], 2, false), // q and k widths differ
            (&[2, 4, 8], &[1, 5, 8], &[1, 5, 8], 2, false), // batch differs
            (&[1, 4, 8], &[1, 5, 8], &[1, 5, 8], 3, false), // heads do not divide
            (&[1, 4, 8], &[1, 5, 8], &[1, 5, 8], 2, true),  // causal with Lq != Lk
            (&[4, 8], &[1, 5, 8], &[1, 5, 8], 2, false),    // rank
        ];
        for (q, k, v, heads, causal) in shape_cases {
            let want = cpu
                .attention(&host(q), &host(k), &host(v), p(heads, causal))
                .expect_err("cpu must refuse");
            let got = be
                .attention(&dev(q), &dev(k), &dev(v), p(heads, causal))
                .expect_err("cuda must refuse");
            assert_eq!(kind(&got), kind(&want), "{got} vs {want}");
        }
        // Backward: lse as [B, Lq, H].
        let (q, k, v) = ([1, 4, 8], [1, 5, 8], [1, 5, 6]);
        let o = [1, 4, 6];
        let want = cpu
            .attention_backward(
                &host(&q),
                &host(&k),
                &host(&v),
                &host(&o),
                &host(&[1, 4, 2]),
                &host(&o),
                p(2, false),
            )
            .expect_err("cpu must refuse");
        let got = be
            .attention_backward(
                &dev(&q),
                &dev(&k),
                &dev(&v),
                &dev(&o),
                &dev(&[1, 4, 2]),
                &dev(&o),
                p(2, false),
            )
            .expect_err("cuda must refuse");
        assert!(matches!(got, Error::ShapeMismatch { .. }), "{got}");
        assert_eq!(kind(&got), kind(&want), "{got} vs {want}");

        // A CPU tensor given to the CUDA backend.
        let got = be
            .attention(&dev(&q), &host(&k), &dev(&k), p(2, false))
            .expect_err("a host tensor must be refused");
        assert!(matches!(got, Error::Device { .. }), "{got}");
        let got = be
            .attention_backward(
                &dev(&q),
                &dev(&k),
                &dev(&v),
                &dev(&o),
                &host(&[1, 2, 4]),
                &dev(&o),
                p(2, false),
            )
            .expect_err("a host lse must be refused");
        assert!(matches!(got, Error::Device { .. }), "{got}");

        // lse must be f32, and the inputs share one dtype.
        let lse16 = be
            .tensor_from_f32(&[1, 2, 4], &[0.5; 8], DType::F16)
            .unwrap();
        let got = be
            .attention_backward(
                &dev(&q),
                &dev(&k),
                &dev(&v),
                &dev(&o),
                &lse16,
                &dev(&o),
                p(2, false),
            )
            .expect_err("an f16 lse must be refused");
        assert!(matches!(got, Error::DType { .. }), "{got}");
        let k16 = be.tensor_from_f32(&k, &[0.5; 40], DType::F16).unwrap();
        let got = be
            .attention(&dev(&q), &k16, &dev(&k), p(2, false))
            .expect_err("mixed dtypes must be refused");
        assert!(matches!(got, Error::DType { .. }), "{got}");

        // Heads wider than the tiled kernels take: the forward runs (tests/cuda_attention_wide.rs),
        // the backward is refused (the CPU accepts both).
        let wide = [1, 2, 257];
        let (o, lse) = be
            .attention(&dev(&wide), &dev(&wide), &dev(&wide), p(1, false))
            .unwrap();
        let got = be
            .attention_backward(
                &dev(&wide),
                &dev(&wide),
                &dev(&wide),
                &o,
                &lse,
                &o,
                p(1, false),
            )
            .expect_err("head_dim 257 must be refused in the backward");
        assert!(matches!(got, Error::BadValue { .. }), "{got}");
    }
}

// ---- the fast kernels (kernels/attention_fast.cu), f16 and bf16 ----

/// Runs `c` on f16 with the fast kernels and with the simple ones, and checks O, lse, dQ, dK
/// and dV of both by the f16 criterion: against the CPU in f64 on the same f16-rounded inputs,
/// at most 2x the error of the CPU in f32 (its output rounded to f16). Also: the fast kernels
/// ran (their results differ bitwise from the simple ones somewhere), and the two lse agree
/// to f32 accuracy (the same convention, so each backward takes the other's lse).
/// [`check_fast_on`] does the same in the dtype of its backend (bf16: inputs and baseline
/// rounded to bf16).
fn check_fast(rng: &mut Rng, c: Case) {
    for e in engines(DType::F16) {
        check_fast_on(&e.be, rng, c);
    }
}

fn check_fast_on(be: &CudaBackend, rng: &mut Rng, c: Case) {
    let dt = be.compute_dtype();
    let cpu = cpu();
    let f64_of = |t: &Tensor| cpu.cast(t, DType::F64).unwrap();
    {
        let fast = be.clone().with_kernels(KernelChoice::fast());
        let simple = be.clone().with_kernels(KernelChoice::simple());
        let what = format!("{c:?} {dt:?}");
        let (qc, qg) = random_pair(&fast, rng, &[c.b, c.lq, c.h * c.d], dt);
        let (kc, kg) = random_pair(&fast, rng, &[c.b, c.lk, c.h * c.d], dt);
        let (vc, vg) = random_pair(&fast, rng, &[c.b, c.lk, c.h * c.dv], dt);
        let (q64, k64, v64) = (f64_of(&qc), f64_of(&kc), f64_of(&vc));

        let (o_base, lse_base) = cpu.attention(&qc, &kc, &vc, c.p()).unwrap();
        let (o_ref, lse_ref) = cpu.attention(&q64, &k64, &v64, c.p()).unwrap();
        let (o_f, lse_f) = fast.attention(&qg, &kg, &vg, c.p()).unwrap();
        let (o_s, lse_s) = simple.attention(&qg, &kg, &vg, c.p()).unwrap();
        let mut differs = false;
        for (name, f, s, base, refr) in [
            ("o", &o_f, &o_s, &o_base, &o_ref),
            ("lse", &lse_f, &lse_s, &lse_base, &lse_ref),
        ] {
            let (ef, eb) = assert_criterion(dt, &format!("{what}: fast {name}"), f, base, refr);
            let (es, _) = assert_criterion(dt, &format!("{what}: simple {name}"), s, base, refr);
            println!("{what} {name}: fast {ef:.3e}, simple {es:.3e}, baseline {eb:.3e}");
            differs |= f.to_f32_vec() != s.to_f32_vec();
        }
        // Same lse convention: within f32 accuracy of each other and of the reference.
        let lr = lse_ref.to_f64_vec();
        for (name, l) in [("fast", &lse_f), ("simple", &lse_s)] {
            for (i, (&x, &r)) in l.to_f32_vec().iter().zip(&lr).enumerate() {
                let err = (x as f64 - r).abs();
                assert!(
                    err <= 1e-4 * (1.0 + r.abs()),
                    "{what}: {name} lse[{i}] {x} vs {r}"
                );
            }
        }

        // Backward from the reference O (rounded to dt) and lse, and a random dO.
        let (oc, og) = pair(&fast, o_ref.dims(), &o_ref.to_f32_vec(), dt);
        let lse_vals = lse_ref.to_f32_vec();
        let lse_c = Tensor::from_f32(lse_ref.dims(), lse_vals.clone()).unwrap();
        let lse_g = fast
            .tensor_from_f32(lse_ref.dims(), &lse_vals, DType::F32)
            .unwrap();
        let (gc, gg) = random_pair(&fast, rng, o_ref.dims(), dt);
        let base = cpu
            .attention_backward(&qc, &kc, &vc, &oc, &lse_c, &gc, c.p())
            .unwrap();
        let (o64, l64, g64) = (f64_of(&oc), f64_of(&lse_c), f64_of(&gc));
        let refr = cpu
            .attention_backward(&q64, &k64, &v64, &o64, &l64, &g64, c.p())
            .unwrap();
        let got_f = fast
            .attention_backward(&qg, &kg, &vg, &og, &lse_g, &gg, c.p())
            .unwrap();
        let got_s = simple
            .attention_backward(&qg, &kg, &vg, &og, &lse_g, &gg, c.p())
            .unwrap();
        let names = ["dq", "dk", "dv"];
        let f = [&got_f.0, &got_f.1, &got_f.2];
        let s = [&got_s.0, &got_s.1, &got_s.2];
        let b = [&base.0, &base.1, &base.2];
        let r = [&refr.0, &refr.1, &refr.2];
        for i in 0..3 {
            let name = names[i];
            let (ef, eb) = assert_criterion(dt, &format!("{what}: fast {name}"), f[i], b[i], r[i]);
            let (es, _) = assert_criterion(dt, &format!("{what}: simple {name}"), s[i], b[i], r[i]);
            println!("{what} {name}: fast {ef:.3e}, simple {es:.3e}, baseline {eb:.3e}");
            differs |= f[i].to_f32_vec() != s[i].to_f32_vec();
        }
        assert!(
            differs,
            "{what}: fast and simple agree bitwise: fast path not taken?"
        );

        // Either backward takes the fast forward's own O and lse.
        for (name, be) in [("fast", &fast), ("simple", &simple)] {
            let (dq2, _, _) = be
                .attention_backward(&qg, &kg, &vg, &o_f, &lse_f, &gg, c.p())
                .unwrap();
            assert_matches(
                &format!("{what}: {name} dq from the fast forward"),
                &dq2,
                &refr.0,
                tol(dt),
            );
        }
    }
}

fn case(b: usize, h: usize, lq: usize, lk: usize, d: usize, dv: usize, causal: bool) -> Case {
    Case {
        b,
        h,
        lq,
        lk,
        d,
        dv,
        causal,
    }
}

#[test]
fn fast_tails_cross_attention() {
    // 37 queries x 77 keys: tails in the 64-row query tiles and the 64/32-row key tiles,
    // for each of SD1.5's head widths (buckets 64, 96, 160), batch·heads > 1.
    let mut rng = Rng::new(11);
    for d in [40, 80, 160] {
        check_fast(&mut rng, case(2, 2, 37, 77, d, d, false));
    }
}

#[test]
fn fast_self_attention_lengths() {
    // More than one query tile and key tile, with tails; the small-width element-load path
    // (d, dv not multiples of 8), d != dv across a bucket.
    let mut rng = Rng::new(12);
    for c in [
        case(1, 2, 70, 70, 40, 40, false),
        case(2, 1, 23, 45, 5, 7, false),
        case(1, 2, 19, 33, 64, 96, false),
        case(1, 1, 9, 100, 16, 160, false),
    ] {
        check_fast(&mut rng, c);
    }
}

#[test]
fn fast_causal() {
    // CLIP's causal 77 tokens (12 heads of 64, here 2), and causal across 64-row tiles.
    let mut rng = Rng::new(13);
    for c in [
        case(1, 2, 77, 77, 64, 64, true),
        case(2, 1, 13, 13, 6, 4, true),
        case(1, 1, 67, 67, 160, 160, true),
    ] {
        check_fast(&mut rng, c);
    }
}

/// The emulator as a T4 (sm_75, 64 KiB of shared memory per block): the fast kernels of
/// every head bucket through m16n8k8 pairs and synchronous copies, the 96 bucket's forward and
/// dQ and the 160 bucket's dQ on their half key tiles, the simple kernels' dK/dV of 160-wide
/// heads as two launches (dK, dV); both by the f16 criterion, and f32 (the simple kernels
/// only) against the CPU.
#[cfg(feature = "cuda-emu")]
#[test]
fn turing_fast_and_simple() {
    let mut rng = Rng::new(15);
    let be = emulating("T4", DType::F16);
    for c in [
        case(2, 1, 37, 77, 40, 40, false),
        case(1, 2, 70, 45, 80, 80, false),
        case(1, 1, 67, 67, 160, 160, true),
    ] {
        check_fast_on(&be, &mut rng, c);
        let launches = be.device().take_launch_counts();
        println!("{c:?} on T4: {launches:?}");
        let has = |k: &str| launches.contains_key(k);
        match c.d {
            80 => assert!(
                has("attention_fast_fwd_d96_kt32") && has("attention_fast_dq_d96_kt32"),
                "{launches:?}"
            ),
            160 => assert!(
                has("attention_fast_fwd_d160")
                    && has("attention_fast_dq_d160_kt16")
                    && split_dkv(&launches, "f16"),
                "{launches:?}"
            ),
            _ => assert!(has("attention_fast_dq_d64"), "{launches:?}"),
        }
        // (the launches were taken: the tally reports the whole case)
        assert_turing_path(&format!("{c:?}"), &be, true);
    }
    let f32_be = emulating("T4", DType::F32);
    check_case(
        &f32_be,
        DType::F32,
        &mut rng,
        case(1, 2, 19, 33, 160, 160, false),
    );
    let launches = f32_be.device().take_launch_counts();
    assert!(split_dkv(&launches, "f32"), "{launches:?}");
    assert_turing_path("attention f32, d 160", &f32_be, false);
}

/// bf16 on the fast kernels (compute capability 8.0+: the emulator's A100, or the GPU): each
/// head bucket (40, 80 and 160 wide), tails in the query and key tiles, the element-load path
/// (d, dv not multiples of 8) and causal masking across query tiles, forward and backward by
/// the criterion with the baseline rounded to bf16; the launches were the `_bf16` entry
/// points (the full key tiles: bf16 devices have 99 KiB and more), on tensor cores.
#[test]
fn fast_bf16() {
    let mut rng = Rng::new(16);
    for e in engines(DType::BF16) {
        for c in [
            case(2, 1, 37, 77, 40, 40, false),
            case(1, 1, 70, 45, 80, 80, false),
            case(1, 1, 67, 67, 160, 160, true),
            case(2, 1, 23, 45, 5, 7, false),
        ] {
            check_fast_on(&e.be, &mut rng, c);
        }
        let launches = assert_bf16_fast_path("attention bf16", &e.be, &["attention_fast_"], true);
        for k in [
            "attention_fast_fwd_d64_bf16",
            "attention_fast_fwd_d96_bf16",
            "attention_fast_fwd_d160_bf16",
            "attention_fast_dot_bf16",
            "attention_fast_dkv_d160_bf16",
            "attention_fast_dq_d96_bf16",
            "attention_fast_dq_d160_bf16",
        ] {
            assert!(launches.contains_key(k), "no {k} launch: {launches:?}");
        }
    }
}

/// Whether every simple backward among `launches` ran dK and dV as two launches (two dK/dV
/// launches per dQ launch).
#[cfg(feature = "cuda-emu")]
fn split_dkv(launches: &std::collections::BTreeMap<&'static str, u64>, dt: &str) -> bool {
    let n = |k: String| launches.get(k.as_str()).copied().unwrap_or(0);
    let dq = n(format!("attention_bwd_dq_{dt}"));
    dq > 0 && n(format!("attention_bwd_dkv_{dt}")) == 2 * dq
}

#[test]
fn fast_sd15_full_shapes_on_gpu() {
    // Full SD1.5 shapes on a GPU only: 512² (4096 queries) and 768² (9216 queries) at the
    // first level, self- and cross-attention, and the deeper levels' widths.
    let mut rng = Rng::new(14);
    for e in engines(DType::F16) {
        if !e.gpu {
            continue;
        }
        for c in [
            case(1, 8, 4096, 77, 40, 40, false),
            case(1, 2, 4096, 4096, 40, 40, false),
            case(1, 8, 9216, 77, 40, 40, false),
            case(1, 8, 1024, 1024, 80, 80, false),
            case(1, 8, 256, 256, 160, 160, false),
            case(1, 12, 77, 77, 64, 64, true),
        ] {
            check_fast_on(&e.be, &mut rng, c);
        }
    }
}
