//! LoRA dropout (kohya's `network_dropout`) through the whole tiny UNet in f64: with p = 0.3
//! the analytic LoRA gradients match finite differences of the loss under the same masks (the
//! dropout source is replayed from its seed, so every forward draws the forward's masks), and
//! p = 0 gives exactly the gradients of training without dropout.

use crate::common;

use common::{assert_gradients_match, central_difference};
use std::path::{Path, PathBuf};

use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::{kohya, LoraDropout, LoraGrads, LoraSet};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Setup {
    be: CpuBackend,
    unet: Unet,
    lora: LoraSet,
    x: Tensor,
    t: Tensor,
    ctx: Tensor,
    target: Tensor,
}

/// The fixture UNet and its kohya LoRA in f64, batch 2 at 16x16, 77 context tokens.
fn setup() -> Setup {
    let be = CpuBackend::f64();
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let lora = kohya::load(fixtures().join("tiny-lora.safetensors"), &be, DType::F64).unwrap();
    let mut rng = Rng::new(5);
    let mut randn = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_f64(shape, rng.normal_vec(n)).unwrap()
    };
    let x = randn(&[2, 4, 16, 16]);
    let target = randn(&[2, 4, 16, 16]);
    let ctx = randn(&[2, 77, ck.unet.0.cross_attention_dim]);
    let t = Tensor::from_f64([2], vec![123.0, 700.0]).unwrap();
    Setup {
        be,
        unet,
        lora,
        x,
        t,
        ctx,
        target,
    }
}

impl Setup {
    fn cx<'a>(&'a self, lora: &'a LoraSet, dropout: Option<&'a LoraDropout>) -> Ctx<'a> {
        Ctx::new(&self.be, Some(lora)).with_dropout(dropout)
    }

    /// The loss of `lora` with masks drawn from `dropout` (none: no dropout).
    fn loss(&self, lora: &LoraSet, dropout: Option<&LoraDropout>) -> f64 {
        let cx = self.cx(lora, dropout);
        let (out, _) = self
            .unet
            .forward(&cx, &self.x, &self.t, &self.ctx, false, None)
            .unwrap();
        self.be.mse_loss(&out, &self.target, None, 1.0).unwrap().0
    }

    /// Loss, output and LoRA gradients of one training forward and backward.
    fn train(&self, dropout: Option<&LoraDropout>) -> (f64, Tensor, LoraGrads) {
        let cx = self.cx(&self.lora, dropout);
        let (out, tape) = self
            .unet
            .forward(&cx, &self.x, &self.t, &self.ctx, true, None)
            .unwrap();
        let (loss, d_out) = self.be.mse_loss(&out, &self.target, None, 1.0).unwrap();
        let mut grads = self.lora.zero_grads(&self.be).unwrap();
        grads.accum = Accum::Assign;
        self.unet
            .backward(&cx, &d_out, &self.ctx, tape.unwrap(), &mut grads)
            .unwrap();
        (loss, out, grads)
    }
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn dropout_gradients_match_finite_differences_under_the_same_masks() {
    gradcheck_with("p = 0.3", &|site| {
        LoraDropout::for_site(0.3, 7, site).unwrap()
    });
}

/// kohya's rank_dropout and module_dropout (with a little elementwise dropout) under the same
/// check: their masks are inputs of the same op, saved for the backward.
#[test]
fn rank_and_module_dropout_gradients_match_finite_differences() {
    gradcheck_with("p = 0.1, rank 0.3, module 0.2", &|site| {
        LoraDropout::for_site(0.1, 7, site)
            .unwrap()
            .with_rank_and_module(0.3, 0.2)
            .unwrap()
    });
}

/// One training pass with the dropout source `make(site)` gives: replayable, other than
/// without dropout, and its gradients those of finite differences under the same masks.
fn gradcheck_with(what: &str, make: &dyn Fn(&[u64]) -> LoraDropout) {
    let s = setup();
    let drop = make(&[4, 0, 0]);
    let (loss, _, grads) = s.train(Some(&drop));
    let n = s.lora.len();
    assert_eq!(drop.draws(), n as u64, "one mask per adapter call");

    // The forward is replayable: the same masks give the same loss, bit for bit; other masks
    // (or none) give another loss.
    assert_eq!(
        s.loss(&s.lora, Some(&drop.replay())).to_bits(),
        loss.to_bits()
    );
    let without = s.loss(&s.lora, None);
    let other = s.loss(&s.lora, Some(&make(&[4, 0, 1])));
    assert!(
        (loss - without).abs() > 1e-6 * without,
        "{loss} vs {without}"
    );
    assert!((loss - other).abs() > 1e-6 * other, "{loss} vs {other}");

    // Both parameters (A and B) of every 11th module, which walks through all 12 kinds of
    // adapter in a Transformer2D, and of the last one.
    let mut rng = Rng::new(9);
    let mut picks: Vec<(usize, bool, usize)> = Vec::new();
    for m in (0..n).step_by(11).chain([n - 1]) {
        for down in [true, false] {
            let md = &s.lora.modules()[m];
            let len = if down { md.down.numel() } else { md.up.numel() };
            picks.push((m, down, rng.below(len as u64) as usize));
        }
    }
    let mut lora = s.lora.clone();
    let (mut ana, mut num) = (Vec::new(), Vec::new());
    for &(m, down, j) in &picks {
        let g = if down { &grads.down[m] } else { &grads.up[m] };
        ana.push(g.to_f64_vec()[j]);
        let base = {
            let md = &lora.modules()[m];
            if down {
                md.down.clone()
            } else {
                md.up.clone()
            }
        };
        let mut at = |delta: f64| {
            let mut v = base.to_f64_vec();
            v[j] += delta;
            let t = Tensor::from_f64(base.shape().clone(), v).unwrap();
            let md = &mut lora.modules_mut()[m];
            if down {
                md.down = t
            } else {
                md.up = t
            }
            // The masks of the forward above, drawn again.
            s.loss(&lora, Some(&drop.replay()))
        };
        num.push(central_difference(&mut at, 1e-3));
        let md = &mut lora.modules_mut()[m];
        if down {
            md.down = base
        } else {
            md.up = base
        }
    }
    assert!(
        ana.iter().filter(|v| v.abs() > 1e-12).count() > picks.len() / 2,
        "most sampled gradients are non-zero: {ana:?}"
    );
    assert_gradients_match(&format!("{what}, {n} modules"), &ana, &num, &picks);

    // The gradients really are those of the dropped-out network: without dropout they differ.
    let (_, _, plain) = s.train(None);
    let differs = (0..n).any(|m| bits(&plain.down[m]) != bits(&grads.down[m]));
    assert!(differs, "dropout changes the gradients");
}

#[test]
fn zero_dropout_equals_no_dropout_exactly() {
    let s = setup();
    let drop = LoraDropout::for_site(0.0, 7, &[4, 0, 0]).unwrap();
    let (loss0, out0, g0) = s.train(Some(&drop));
    assert_eq!(drop.draws(), 0, "p = 0 draws no masks");
    let (loss, out, g) = s.train(None);
    assert_eq!(loss0.to_bits(), loss.to_bits());
    assert_eq!(bits(&out0), bits(&out));
    for m in 0..s.lora.len() {
        assert_eq!(bits(&g0.down[m]), bits(&g.down[m]), "dA of module {m}");
        assert_eq!(bits(&g0.up[m]), bits(&g.up[m]), "dB of module {m}");
    }
}
