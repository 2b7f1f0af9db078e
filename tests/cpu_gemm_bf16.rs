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
//! Skipped, with a line saying so, only on a CPU without AVX512_BF16.

use lorafuse::backend::cpu::gemm::Mat;
use lorafuse::backend::cpu::gemm_bf16::{available, from_bf16, gemm_bf16, round_bf16, to_bf16};
use lorafuse::rng::Rng;

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
