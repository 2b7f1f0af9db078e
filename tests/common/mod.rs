//! Shared test helpers: random tensors, closeness checks, and the finite-difference
//! gradient check every backward is held to.
#![allow(dead_code)]

pub mod attention;
pub mod checkpointing;
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub mod cuda;
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub mod cuda_layers;
pub mod diffusers_check;
pub mod golden;
pub mod http;
pub mod images;
pub mod tools;
pub mod webdriver;

use lorafuse::rng::Rng;
use lorafuse::{Shape, Tensor};

/// A rank-2 matrix [rows, cols] from `seed`, entries of order 0.1: a known difference for
/// `extract` to find.
pub fn low_rank(rows: usize, cols: usize, seed: u64) -> lorafuse::linalg::Mat {
    use lorafuse::linalg::Mat;
    let mut rng = Rng::new(seed);
    let a = Mat::from_vec(rows, 2, rng.normal_vec(rows * 2));
    let b = Mat::from_vec(2, cols, rng.normal_vec(2 * cols));
    let mut d = a.matmul(&b);
    for x in &mut d.data {
        *x *= 0.05;
    }
    d
}

/// Distance in units in the last place between two finite f16 values.
pub fn f16_ulps(a: half::f16, b: half::f16) -> u32 {
    let key = |x: half::f16| {
        let bits = x.to_bits() as i32;
        if bits & 0x8000 != 0 {
            -(bits & 0x7fff)
        } else {
            bits
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// A tensor of f64 values uniform in [lo, hi).
pub fn uniform(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f64(shape, rng.uniform_vec(n, lo, hi)).unwrap()
}

/// A tensor of standard-normal f64 values.
pub fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f64(shape, rng.normal_vec(n)).unwrap()
}

/// The same values as f32.
pub fn to_f32(t: &Tensor) -> Tensor {
    Tensor::from_f32(t.shape().clone(), t.to_f32_vec()).unwrap()
}

/// Asserts |got - want| <= atol + rtol·|want| elementwise, naming the first bad index.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} != {}",
        got.len(),
        want.len()
    );
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w} (rtol {rtol}, atol {atol})"
        );
    }
}

/// Asserts a tensor's shape and values.
pub fn assert_tensor(what: &str, t: &Tensor, shape: &[usize], want: &[f64], tol: f64) {
    assert_eq!(t.shape(), &Shape::from(shape), "{what}: shape");
    assert_close(what, &t.to_f64_vec(), want, tol, tol);
}

/// ||a - b|| / max(||a||, ||b||): the norm-wise relative error.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = na.max(nb);
    if scale == 0.0 {
        0.0
    } else {
        diff / scale
    }
}

/// The gradient-check tolerance (f64, norm-wise relative error over the checked coordinates).
pub const GRAD_TOL: f64 = 1e-6;

/// Checks the analytic gradient of L = Σ r ⊙ f(inputs), r a fixed random cotangent, against a
/// fourth-order central difference in f64, for each input in `check`.
///
/// `f` runs the forward; `grads(inputs, r)` runs the backward from dY = r and returns one
/// gradient per entry of `check`, in order. At most `max_coords` coordinates of each input are
/// differentiated (all of them when it is smaller; otherwise a random sample that always
/// includes the first and last element, to catch tail bugs).
pub fn gradcheck(
    name: &str,
    inputs: &[Tensor],
    check: &[usize],
    max_coords: usize,
    f: impl Fn(&[Tensor]) -> Tensor,
    grads: impl Fn(&[Tensor], &Tensor) -> Vec<Tensor>,
) {
    let mut rng = Rng::new(0x5eed ^ name.len() as u64);
    let y = f(inputs);
    let r = randn(&mut rng, y.dims());
    let rv = r.to_f64_vec();
    let analytic = grads(inputs, &r);
    assert_eq!(
        analytic.len(),
        check.len(),
        "{name}: one gradient per checked input"
    );
    let loss =
        |xs: &[Tensor]| -> f64 { f(xs).to_f64_vec().iter().zip(&rv).map(|(a, b)| a * b).sum() };
    for (slot, &i) in check.iter().enumerate() {
        let g = &analytic[slot];
        assert_eq!(
            g.shape(),
            inputs[i].shape(),
            "{name}: gradient {slot} has the input's shape"
        );
        let gv = g.to_f64_vec();
        let n = inputs[i].numel();
        let coords: Vec<usize> = if n <= max_coords {
            (0..n).collect()
        } else {
            let mut c: Vec<usize> = (0..max_coords - 2)
                .map(|_| rng.below(n as u64) as usize)
                .collect();
            c.push(0);
            c.push(n - 1);
            c
        };
        let mut num = Vec::with_capacity(coords.len());
        let mut ana = Vec::with_capacity(coords.len());
        for &j in &coords {
            let base = inputs[i].to_f64_vec();
            let h = 1e-4 * base[j].abs().max(1.0);
            let at = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_f64(inputs[i].shape().clone(), v).unwrap();
                loss(&xs)
            };
            let d = (at(-2.0 * h) - 8.0 * at(-h) + 8.0 * at(h) - at(2.0 * h)) / (12.0 * h);
            num.push(d);
            ana.push(gv[j]);
        }
        let err = rel_err(&ana, &num);
        assert!(
            ana.iter().any(|v| v.abs() > 1e-8),
            "{name}: input {i}: the analytic gradient is all zero on the checked coordinates"
        );
        assert!(
            err < GRAD_TOL,
            "{name}: input {i}: relative error {err:e} >= {GRAD_TOL:e} over {} coordinates\nanalytic {:?}\nnumeric  {:?}",
            coords.len(),
            &ana[..ana.len().min(8)],
            &num[..num.len().min(8)]
        );
        println!(
            "{name}: input {i}: {} coordinates, relative error {err:.2e}",
            coords.len()
        );
    }
}

/// The fourth-order central difference (f(−2h) − 8f(−h) + 8f(h) − f(2h)) / 12h of `f`, a
/// function of the perturbation.
pub fn central_difference(mut f: impl FnMut(f64) -> f64, h: f64) -> f64 {
    (f(-2.0 * h) - 8.0 * f(-h) + 8.0 * f(h) - f(2.0 * h)) / (12.0 * h)
}

/// Whole-model gradient checks: the analytic and numeric gradients of sampled parameters must
/// agree to GRAD_TOL norm-wise, and each one to GRAD_TOL of the largest. Returns the norm-wise
/// relative error (printed with `what`).
pub fn assert_gradients_match(
    what: &str,
    ana: &[f64],
    num: &[f64],
    labels: &[impl std::fmt::Debug],
) -> f64 {
    let rel = rel_err(ana, num);
    println!("{what}: {} parameters, relative error {rel:.2e}", ana.len());
    assert!(
        rel < GRAD_TOL,
        "{what}: relative error {rel:e}\nanalytic {ana:?}\nnumeric {num:?}"
    );
    let scale = num.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    for (i, (a, b)) in ana.iter().zip(num).enumerate() {
        assert!(
            (a - b).abs() < GRAD_TOL * scale,
            "{what}: parameter {:?}: analytic {a} numeric {b}",
            labels[i]
        );
    }
    rel
}

/// A training run's fixed-noise loss fell below `factor` times where it started; both printed
/// under `what`.
pub fn assert_loss_fell(what: &str, r: &lorafuse::train::trainer::TrainReport, factor: f64) {
    eprintln!(
        "{what}: fixed-noise loss {:.4} -> {:.4}",
        r.train_loss_before, r.train_loss_after
    );
    assert!(
        r.train_loss_after < factor * r.train_loss_before,
        "{what}: loss {} -> {}",
        r.train_loss_before,
        r.train_loss_after
    );
}

/// A training run of `cfg` on `be` from the start, its events dropped, never cancelled.
pub fn train_quietly(
    cfg: &lorafuse::config::TrainConfig,
    be: &dyn lorafuse::backend::Backend,
) -> lorafuse::Result<lorafuse::train::trainer::TrainReport> {
    lorafuse::train::trainer::train(
        cfg,
        be,
        false,
        &std::sync::atomic::AtomicBool::new(false),
        &mut lorafuse::train::trainer::Recorder::default(),
    )
}

/// What a block-wise run of one AdamW step set ([`assert_block_wise`]).
pub struct BlockWise<'a> {
    pub layout: lorafuse::lora::blocks::BlockLayout,
    /// Each block's rank (`block_dims`) and its 3x3 conv adapters' (`conv_block_dims`); alpha =
    /// rank everywhere but the linear adapters of block `half_alpha`, at 0.5.
    pub dims: &'a [usize],
    pub conv_dims: &'a [usize],
    pub half_alpha: usize,
    pub lr: f64,
    /// Each block's lr weight.
    pub weight: &'a dyn Fn(usize) -> f64,
}

/// Every module of `lora` has its block's rank and alpha, exactly the blocks `want` have
/// adapters, and one AdamW step from up = 0 moved each block's up matrices by lr × its
/// weight (Adam's first step is ±lr per element wherever the gradient is not tiny).
pub fn assert_block_wise(
    lora: &lorafuse::lora::LoraSet,
    run: &BlockWise,
    want: &std::collections::BTreeSet<usize>,
) {
    let mut moved = std::collections::BTreeMap::<usize, f32>::new();
    for m in lora.modules() {
        let b = run.layout.index(&m.name).unwrap();
        let expected = if matches!(m.kind, lorafuse::lora::LayerKind::Conv { kernel: 3 }) {
            (run.conv_dims[b], run.conv_dims[b] as f64)
        } else if b == run.half_alpha {
            (run.dims[b], 0.5)
        } else {
            (run.dims[b], run.dims[b] as f64)
        };
        assert_eq!((m.rank(), m.alpha), expected, "{}", m.name);
        let top = m.up.to_f32_vec().iter().fold(0f32, |a, v| a.max(v.abs()));
        let at = moved.entry(b).or_default();
        *at = at.max(top);
    }
    let seen: std::collections::BTreeSet<usize> = moved.keys().copied().collect();
    assert_eq!(&seen, want, "the blocks with adapters");
    for (&b, &top) in &moved {
        let ratio = top as f64 / (run.lr * (run.weight)(b));
        assert!((0.99..=1.0 + 1e-4).contains(&ratio), "block {b}: {ratio}");
    }
}
