//! The CPU GEMM wrapper against a naive triple loop: transposed and strided views, beta = 0
//! over poisoned output, beta = 1 accumulation, and sizes on both sides of the threshold
//! above which a product runs on several threads, of the rule that sends a tall product
//! with a transposed A to matrixmultiply (300x64x40 with A transposed goes there) and of the
//! rule that cuts a skinny product along its long side (1000x300x16 by rows, 16x300x1000 by
//! columns); a cut product gives the same bits as the uncut one.

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
    // (m, k, n): small (serial), tall (row split), wide and short (column split), k = 1,
    // skinny (cut by rows, by columns, with a short last part).
    for (m, k, n) in [
        (3, 5, 7),
        (300, 64, 40),
        (8, 96, 700),
        (33, 1, 65),
        (1, 17, 1),
        (1000, 300, 16),
        (16, 300, 1000),
        (64, 97, 515),
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

/// `gemm` of f32 operands on a pool of `threads` threads.
fn gemm_on(threads: usize, a: Mat<f32>, b: Mat<f32>, c: &mut [f32], ldc: usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    pool.install(|| gemm(1.0, a, b, 0.0, c, ldc));
}

#[test]
fn skinny_cuts_give_the_uncut_bits() {
    let mut rng = Rng::new(12);
    let f32s = |v: Vec<f64>| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    // C's shorter side 16-64 and the longer one cut in 4 parts (2 threads) or 6 (3 threads);
    // A transposed or not, and C written at a leading dimension wider than n.
    for (m, k, n, a_t) in [
        (1280, 576, 16, false),
        (1100, 300, 64, false),
        (16, 640, 1280, false),
        (40, 200, 777, true),
        (900, 128, 24, true),
    ] {
        let a = f32s(rng.normal_vec(m * k));
        let b = f32s(rng.normal_vec(k * n));
        let am = if a_t {
            Mat::new(&a, k, m).t()
        } else {
            Mat::new(&a, m, k)
        };
        let bm = Mat::new(&b, k, n);
        let ldc = n + 3;
        let mut whole = vec![f32::NAN; m * ldc];
        gemm_on(1, am, bm, &mut whole, ldc);
        for threads in [2, 3] {
            let mut cut = vec![f32::NAN; m * ldc];
            gemm_on(threads, am, bm, &mut cut, ldc);
            for i in 0..m {
                let (w, c) = (&whole[i * ldc..][..n], &cut[i * ldc..][..n]);
                assert!(
                    w.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}x{k}x{n} (A transposed: {a_t}) on {threads} threads: row {i} differs \
                     from the uncut product"
                );
            }
        }
    }
}
