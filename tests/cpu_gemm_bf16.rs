//! The bf16 GEMM of `cpu_precision: bf16` (src/backend/cpu/gemm_bf16.rs), checked
//! - against the f64 product of the bf16-rounded operands, within the f32 summation's bound
//!   (k·2⁻²⁴·Σ|a||b|, far below the 2⁻⁷ of two bf16 roundings, so that an f32 product of the
//!   unrounded operands fails it on all but the smallest shapes);
//! - against the f64 product of the f32 operands, within bf16's bound ((2⁻⁷ + 2⁻¹⁶ +
//!   k·2⁻²⁴)·Σ|a||b|: each operand is rounded by up to 2⁻⁸), and closer to the rounded
//!   operands' product than to it over the whole matrix;
//!
//! on shapes that leave partial register tiles and task blocks, odd K, K beyond one slice,
//! every transposed layout, a C wider than the product (ldc > n), beta = 0 over NaN, and
//! beta ≠ 0 with alpha ≠ 1, views with no unit stride (the plain packing loop); and the rounding itself (ties to even, NaN, overflow, subnormals).
//!
//! A frozen weight's panels, packed once and kept with its tensor (`gemm_frozen`): the same
//! bits as packing both operands on every call, for the weight on either side in either
//! layout, and never stale: a weight changed in place, a new tensor over the same buffer,
//! a clone and a reshape all give the product of their own elements. The tensor's side
//! store itself (`Tensor::derived`) is checked on any CPU: kept, dropped by a change, a
//! reshape, absent from a clone and from a new tensor over the same buffer.
//! Skipped, with a line saying so, only on a CPU without AVX512_BF16.

use lorafuse::backend::cpu::gemm::{gemm, gemm_frozen, Frozen, Mat, Side};
use lorafuse::backend::cpu::gemm_bf16::{available, from_bf16, gemm_bf16, round_bf16, to_bf16};
use lorafuse::backend::cpu::{CpuPrecision, Real};
use lorafuse::rng::Rng;
use lorafuse::tensor::{CpuData, Storage, Tensor};

fn skip() -> bool {
    if !available() {
        println!("SKIPPED: this CPU has no AVX512_BF16; the bf16 GEMM cannot run here");
        return true;
    }
    false
}

/// The (i, j) element of a row-major m×k (or, transposed, stored k×m) matrix.
fn at(v: &[f32], rows: usize, cols: usize, t: bool, i: usize, j: usize) -> f64 {
    (if t { v[j * rows + i] } else { v[i * cols + j] }) as f64
}

#[test]
fn rounding_is_to_nearest_even() {
    // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa (1).
    assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
    // 1 + 3·2⁻⁸ lies halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶ (even).
    assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
    // Just above the tie rounds up.
    assert_eq!(
        round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
        1.0 + 2f32.powi(-7)
    );
    assert_eq!(round_bf16(-1.0 - 2f32.powi(-8)), -1.0);
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    assert_eq!(round_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
    let sub = f32::from_bits(0x0001_8000); // a subnormal with a tie below bit 16
    assert_eq!(to_bf16(sub), 0x0002);
    assert_eq!(from_bf16(0x3f80), 1.0);
}

#[test]
fn matches_the_rounded_product_in_every_layout() {
    if skip() {
        return;
    }
    let mut rng = Rng::new(19);
    // (m, k, n): one partial tile; odd K; M and N past one task block (96, 256) with partial
    // tiles; K past one slice (256) and odd; a single row and column; K = 1.
    for (m, k, n) in [
        (5, 7, 3),
        (13, 33, 47),
        (200, 601, 300),
        (1, 300, 1),
        (37, 1, 70),
    ] {
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let a: Vec<f32> = rng.normal_vec(m * k).iter().map(|&x| x as f32).collect();
            let b: Vec<f32> = rng.normal_vec(k * n).iter().map(|&x| x as f32).collect();
            let am = if a_t {
                Mat::new(&a, k, m).t()
            } else {
                Mat::new(&a, m, k)
            };
            let bm = if b_t {
                Mat::new(&b, n, k).t()
            } else {
                Mat::new(&b, k, n)
            };
            // C two columns wider than the product, poisoned: beta = 0 must not read it and
            // the columns past n must stay as they were.
            let ldc = n + 2;
            let mut c = vec![f32::NAN; m * ldc];
            gemm_bf16(1.0, am, bm, 0.0, &mut c, ldc);
            let what = format!("{m}x{k}x{n} a_t={a_t} b_t={b_t}");
            check(&what, &c, ldc, (m, k, n), |i, p, j| {
                let (x, y) = (at(&a, m, k, a_t, i, p), at(&b, k, n, b_t, p, j));
                (x, y)
            });
            for i in 0..m {
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
            }
            // C = 0.5·A·B + 2·C.
            let before = c.clone();
            gemm_bf16(0.5, am, bm, 2.0, &mut c, ldc);
            for i in 0..m {
                for j in 0..n {
                    let (got, was) = (c[i * ldc + j] as f64, before[i * ldc + j] as f64);
                    let want = 2.5 * was;
                    let scale: f64 = (0..k)
                        .map(|p| (at(&a, m, k, a_t, i, p) * at(&b, k, n, b_t, p, j)).abs())
                        .sum();
                    let tol = 4.0 * 2f64.powi(-24) * (k as f64 + 4.0) * scale + 1e-30;
                    assert!(
                        (got - want).abs() <= tol,
                        "{what} accumulate ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Compares c (m×n at ldc) with the f64 products of the operands `ab(i, p, j)` returns: with
/// both rounded to bf16 within the f32 summation bound, unrounded within bf16's bound.
fn check(
    what: &str,
    c: &[f32],
    ldc: usize,
    (m, k, n): (usize, usize, usize),
    ab: impl Fn(usize, usize, usize) -> (f64, f64),
) {
    let u = 2f64.powi(-24);
    let (mut off_rounded, mut off_exact) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut rounded, mut scale) = (0f64, 0f64, 0f64);
            for p in 0..k {
                let (x, y) = ab(i, p, j);
                exact += x * y;
                rounded += round_bf16(x as f32) as f64 * round_bf16(y as f32) as f64;
                scale += (x * y).abs();
            }
            let got = c[i * ldc + j] as f64;
            let tight = (k as f64 + 2.0) * u * scale * 1.01 + 1e-30;
            assert!(
                (got - rounded).abs() <= tight,
                "{what} ({i},{j}): {got} vs rounded-operand product {rounded} (bound {tight})"
            );
            let loose =
                (2f64.powi(-7) + 2f64.powi(-16) + (k as f64 + 2.0) * u) * scale * 1.01 + 1e-30;
            assert!(
                (got - exact).abs() <= loose,
                "{what} ({i},{j}): {got} vs f32 product {exact} (bound {loose})"
            );
            off_rounded += (got - rounded).abs();
            off_exact += (got - exact).abs();
        }
    }
    // The operands were rounded: over the matrix, the result lies closer to the product of
    // the rounded operands than to the f32 product.
    assert!(
        off_rounded < off_exact,
        "{what}: no bf16 rounding seen ({off_rounded:e} vs {off_exact:e})"
    );
}

#[test]
fn views_strided_both_ways_take_the_plain_packing() {
    if skip() {
        return;
    }
    // Every other element of a row-major buffer, both ways: neither stride is 1.
    let mut rng = Rng::new(23);
    let (m, k, n) = (21, 37, 35);
    let a: Vec<f32> = rng
        .normal_vec(4 * m * k)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let b: Vec<f32> = rng
        .normal_vec(4 * k * n)
        .iter()
        .map(|&x| x as f32)
        .collect();
    fn view(data: &[f32], rows: usize, cols: usize) -> Mat<'_, f32> {
        Mat {
            data,
            rows,
            cols,
            rs: 4 * cols,
            cs: 2,
        }
    }
    let mut c = vec![f32::NAN; m * n];
    gemm_bf16(1.0, view(&a, m, k), view(&b, k, n), 0.0, &mut c, n);
    check("strided", &c, n, (m, k, n), |i, p, j| {
        (a[i * 4 * k + 2 * p] as f64, b[p * 4 * n + 2 * j] as f64)
    });
}

#[test]
fn empty_and_zero_k_products() {
    if skip() {
        return;
    }
    let a = [1.0f32; 6];
    let mut c = vec![3.0f32; 6];
    // K = 0: C = beta·C.
    gemm_bf16(1.0, Mat::new(&a, 2, 0), Mat::new(&a, 0, 3), 0.5, &mut c, 3);
    assert_eq!(c, vec![1.5; 6]);
    gemm_bf16(1.0, Mat::new(&a, 2, 0), Mat::new(&a, 0, 3), 0.0, &mut c, 3);
    assert_eq!(c, vec![0.0; 6]);
    // M = 0 touches nothing.
    let mut c = vec![7.0f32; 3];
    gemm_bf16(1.0, Mat::new(&a, 0, 2), Mat::new(&a, 2, 3), 0.0, &mut c, 3);
    assert_eq!(c, vec![7.0; 3]);
}

fn randf(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.normal_vec(n).iter().map(|&x| x as f32).collect()
}

/// The weight's view as operand `side` of an m×k·k×n product: [M, K] for A, [K, N] for B,
/// stored as that matrix or (`t`) as its transpose.
fn weight_view(w: &Tensor, side: Side, t: bool, (m, k, n): (usize, usize, usize)) -> Mat<'_, f32> {
    let d = f32::data(w).unwrap();
    let (rows, cols) = match side {
        Side::A => (m, k),
        Side::B => (k, n),
    };
    if t {
        Mat::new(d, cols, rows).t()
    } else {
        Mat::new(d, rows, cols)
    }
}

/// gemm_frozen with the weight `w` on `side` (view `t`) and activations `x` on the other:
/// C [m, n] = W·X or X·W.
fn frozen_product(
    precision: CpuPrecision,
    w: &Tensor,
    side: Side,
    t: bool,
    x: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Vec<f32> {
    let wv = weight_view(w, side, t, (m, k, n));
    let f = Frozen {
        precision,
        weight: w,
        side,
    };
    let mut c = vec![f32::NAN; m * n];
    match side {
        Side::A => gemm_frozen(f, 1.0, wv, Mat::new(x, k, n), 0.0, &mut c, n),
        Side::B => gemm_frozen(f, 1.0, Mat::new(x, m, k), wv, 0.0, &mut c, n),
    }
    c
}

/// The same product with both operands packed on the call (`gemm_bf16`), and `check`ed
/// against the f64 products; returns it.
fn plain_product(
    w: &Tensor,
    side: Side,
    t: bool,
    x: &[f32],
    (m, k, n): (usize, usize, usize),
    what: &str,
) -> Vec<f32> {
    let wv = weight_view(w, side, t, (m, k, n));
    let mut c = vec![f32::NAN; m * n];
    let (a, b) = match side {
        Side::A => (wv, Mat::new(x, k, n)),
        Side::B => (Mat::new(x, m, k), wv),
    };
    gemm_bf16(1.0, a, b, 0.0, &mut c, n);
    let at = |v: Mat<f32>, i: usize, j: usize| v.data[i * v.rs + j * v.cs] as f64;
    check(what, &c, n, (m, k, n), |i, p, j| (at(a, i, p), at(b, p, j)));
    c
}

#[test]
fn derived_values_are_kept_until_the_elements_change() {
    let mut t = Tensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let sum = |t: &Tensor| f32::data(t).unwrap().iter().sum::<f32>();
    let made = std::cell::Cell::new(0);
    let get = |t: &Tensor, key: u8| {
        *t.derived(key, || {
            made.set(made.get() + 1);
            sum(t)
        })
    };
    assert_eq!(
        (get(&t, 0), get(&t, 0), made.get()),
        (21.0, 21.0, 1),
        "computed once"
    );
    // Another key, and another value type under an equal key, are other entries.
    assert_eq!(get(&t, 1), 21.0);
    assert_eq!(*t.derived(0u8, || "text"), "text");
    assert_eq!((t.derived_count(), made.get()), (3, 2));
    // A change through `storage_mut` (every mutable access) drops them all.
    f32::data_mut(&mut t).unwrap()[0] = 10.0;
    assert_eq!(t.derived_count(), 0);
    assert_eq!((get(&t, 0), made.get()), (30.0, 3));
    // A clone starts empty; the original keeps its own.
    let c = t.clone();
    assert_eq!((c.derived_count(), t.derived_count()), (0, 1));
    // A new tensor over the same buffer starts empty.
    let Storage::Cpu(CpuData::F32(v)) = t.storage_mut() else {
        unreachable!("a host f32 tensor")
    };
    let mut v = std::mem::take(v);
    let at = v.as_ptr();
    v[1] = 20.0;
    let t2 = Tensor::from_f32([2, 3], v).unwrap();
    assert!(std::ptr::eq(f32::data(&t2).unwrap().as_ptr(), at));
    assert_eq!((t2.derived_count(), get(&t2, 0)), (0, 48.0));
    // A reshape drops them (they were computed for the old shape).
    assert_eq!(t2.reshape([3, 2]).unwrap().derived_count(), 0);
}

#[test]
fn frozen_weight_panels_are_packed_once_and_give_the_same_bits() {
    if skip() {
        return;
    }
    let mut rng = Rng::new(29);
    // Partial tiles and odd K; then M, N past a task block and K past one slice.
    for mkn in [(13, 33, 47), (150, 301, 290)] {
        let (m, k, n) = mkn;
        for side in [Side::A, Side::B] {
            for t in [false, true] {
                let what = format!("{m}x{k}x{n} weight {side:?} transposed={t}");
                let wlen = match side {
                    Side::A => m * k,
                    Side::B => k * n,
                };
                let xlen = m * k + k * n - wlen;
                let w = Tensor::from_f32([wlen], randf(&mut rng, wlen)).unwrap();
                // Two products with the same weight and new activations: the first packs
                // the weight, the second reuses its panels.
                for round in 0..2 {
                    let x = randf(&mut rng, xlen);
                    let got = frozen_product(CpuPrecision::Bf16, &w, side, t, &x, mkn);
                    let want = plain_product(&w, side, t, &x, mkn, &what);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}, product {round}: not the bits of packing on every call"
                    );
                    assert_eq!(w.derived_count(), 1, "{what}: one set of panels kept");
                }
                // f32 keeps nothing and is `gemm`'s product.
                let w32 = w.clone();
                let x = randf(&mut rng, xlen);
                let got = frozen_product(CpuPrecision::F32, &w32, side, t, &x, mkn);
                let wv = weight_view(&w32, side, t, mkn);
                let mut want = vec![0f32; m * n];
                match side {
                    Side::A => gemm(1.0, wv, Mat::new(&x, k, n), 0.0, &mut want, n),
                    Side::B => gemm(1.0, Mat::new(&x, m, k), wv, 0.0, &mut want, n),
                }
                assert_eq!(got, want, "{what}: f32");
                assert_eq!(w32.derived_count(), 0, "{what}: f32 keeps no panels");
            }
        }
    }
}

#[test]
fn a_changed_or_replaced_weight_gives_its_own_product() {
    if skip() {
        return;
    }
    let mut rng = Rng::new(31);
    // The linear layer's forward: x [m, k] · Wᵀ, W [n, k] (weight on B, transposed view).
    let mkn = (20, 40, 36);
    let (m, k, n) = mkn;
    let product =
        |w: &Tensor, x: &[f32]| frozen_product(CpuPrecision::Bf16, w, Side::B, true, x, mkn);
    let plain = |w: &Tensor, x: &[f32], what: &str| plain_product(w, Side::B, true, x, mkn, what);
    let x = randf(&mut rng, m * k);
    let mut w = Tensor::from_f32([n, k], randf(&mut rng, n * k)).unwrap();
    let first = product(&w, &x);
    assert_eq!(first, plain(&w, &x, "first weight"));
    // Both layouts of the same weight are two sets of panels: the forward's and the input
    // gradient's, dY [m, n] · W [n, k].
    let dy = randf(&mut rng, m * n);
    frozen_product(CpuPrecision::Bf16, &w, Side::B, false, &dy, (m, n, k));
    assert_eq!(w.derived_count(), 2);

    // Changed in place: the panels go with the change, the product is the new weight's.
    for v in f32::data_mut(&mut w).unwrap().iter_mut().step_by(3) {
        *v = -2.0 * *v + 0.5;
    }
    assert_eq!(w.derived_count(), 0, "a change drops the panels");
    let changed = product(&w, &x);
    assert_eq!(changed, plain(&w, &x, "changed in place"));
    assert_ne!(changed, first);

    // A new tensor over the very same buffer (the case an address-keyed cache gets wrong).
    let Storage::Cpu(CpuData::F32(v)) = w.storage_mut() else {
        unreachable!("a host f32 tensor")
    };
    let mut v = std::mem::take(v);
    let at = v.as_ptr();
    v.iter_mut().for_each(|x| *x = 1.5 - *x);
    let w2 = Tensor::from_f32([n, k], v).unwrap();
    assert!(
        std::ptr::eq(f32::data(&w2).unwrap().as_ptr(), at),
        "same buffer"
    );
    let replaced = product(&w2, &x);
    assert_eq!(replaced, plain(&w2, &x, "new tensor, same buffer"));
    assert_ne!(replaced, changed);

    // A weight freed and another allocated in its place (the allocator usually hands back
    // the same address; the product is the new one's either way).
    let at = f32::data(&w2).unwrap().as_ptr();
    drop(w2);
    let w3 = Tensor::from_f32([n, k], randf(&mut rng, n * k)).unwrap();
    let reused = std::ptr::eq(f32::data(&w3).unwrap().as_ptr(), at);
    println!("freed weight's address reused by the next: {reused}");
    assert_eq!(product(&w3, &x), plain(&w3, &x, "freed and reallocated"));

    // A clone starts without panels; a reshape drops them.
    let w4 = w3.clone();
    assert_eq!((w3.derived_count(), w4.derived_count()), (1, 0));
    assert_eq!(product(&w4, &x), plain(&w4, &x, "clone"));
    assert_eq!(w3.reshape([k, n]).unwrap().derived_count(), 0);
}
