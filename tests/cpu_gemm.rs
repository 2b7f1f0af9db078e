//! The CPU GEMM wrapper against a naive triple loop: transposed and strided views, beta = 0
//! over poisoned output, beta = 1 accumulation, and sizes on both sides of the threshold
//! above which a product runs on several threads and of the rule that sends a tall product
//! with a transposed A to matrixmultiply (300x64x40 with A transposed goes there).

use crate::common;

use common::assert_close;
use lorafuse::backend::cpu::gemm::{gemm, Mat};
use lorafuse::rng::Rng;

fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, a_t: bool, b_t: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let av = if a_t { a[p * m + i] } else { a[i * k + p] };
                let bv = if b_t { b[j * k + p] } else { b[p * n + j] };
                s += av * bv;
            }
            c[i * n + j] = s;
        }
    }
    c
}

#[test]
fn matches_naive_in_every_layout_and_split() {
    let mut rng = Rng::new(9);
    // (m, k, n): small (serial), tall (row split), wide and short (column split), k = 1.
    for (m, k, n) in [
        (3, 5, 7),
        (300, 64, 40),
        (8, 96, 700),
        (33, 1, 65),
        (1, 17, 1),
    ] {
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rng.normal_vec(m * k);
            let b = rng.normal_vec(k * n);
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
            let mut c = vec![f64::NAN; m * n];
            gemm(1.0, am, bm, 0.0, &mut c, n);
            let want = naive(&a, &b, m, k, n, a_t, b_t);
            assert_close(&format!("{m}x{k}x{n} {a_t} {b_t}"), &c, &want, 1e-12, 1e-12);
            // beta = 1 accumulates, alpha scales.
            gemm(0.5, am, bm, 1.0, &mut c, n);
            let want2: Vec<f64> = want.iter().map(|v| 1.5 * v).collect();
            assert_close("accumulate", &c, &want2, 1e-12, 1e-12);
        }
    }
}

#[test]
fn strided_views_and_leading_dimension() {
    let mut rng = Rng::new(10);
    // A is columns 4..4+k of a [m, 20] matrix; C is written into columns 0..n of a [m, 9] buffer.
    let (m, k, n, lda, ldc) = (50, 6, 5, 20, 9);
    let wide = rng.normal_vec(m * lda);
    let b = rng.normal_vec(k * n);
    let mut c = vec![-7.0; m * ldc];
    gemm(
        1.0,
        Mat::strided(&wide[4..], m, k, lda),
        Mat::new(&b, k, n),
        0.0,
        &mut c,
        ldc,
    );
    let a: Vec<f64> = (0..m)
        .flat_map(|i| wide[i * lda + 4..i * lda + 4 + k].to_vec())
        .collect();
    let want = naive(&a, &b, m, k, n, false, false);
    for i in 0..m {
        assert_close(
            "row",
            &c[i * ldc..i * ldc + n],
            &want[i * n..(i + 1) * n],
            1e-12,
            1e-12,
        );
        assert!(
            c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == -7.0),
            "columns past n untouched"
        );
    }
}

#[test]
fn f32_matches_f64() {
    let mut rng = Rng::new(11);
    let (m, k, n) = (257, 320, 129);
    let a = rng.normal_vec(m * k);
    let b = rng.normal_vec(k * n);
    let (a32, b32): (Vec<f32>, Vec<f32>) = (
        a.iter().map(|&x| x as f32).collect(),
        b.iter().map(|&x| x as f32).collect(),
    );
    let mut c32 = vec![0f32; m * n];
    gemm(
        1.0,
        Mat::new(&a32, m, k),
        Mat::new(&b32, k, n),
        0.0,
        &mut c32,
        n,
    );
    let want = naive(&a, &b, m, k, n, false, false);
    let got: Vec<f64> = c32.iter().map(|&x| x as f64).collect();
    assert_close("f32", &got, &want, 1e-4, 1e-4);
}
