//! The SVDs of src/linalg against numpy (tests/fixtures/make_svd_fixture.py: LAPACK's singular
//! values of seeded matrices) and by their properties: orthonormal factors, reconstruction,
//! the exact SVD of a product, and the randomized SVD's error on a slowly decaying spectrum.

use lorafuse::linalg::{svd, svd_of_product, truncated_svd, Mat, Randomized, Svd};
use lorafuse::rng::Rng;

struct Case {
    a: Mat,
    s: Vec<f64>,
}

fn fixture() -> Vec<Case> {
    let text = std::fs::read_to_string("tests/fixtures/svd/matrices.json").unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let nums = |x: &serde_json::Value| -> Vec<f64> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|y| y.as_f64().unwrap())
            .collect()
    };
    v["matrices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Case {
            a: Mat::from_vec(
                m["rows"].as_u64().unwrap() as usize,
                m["cols"].as_u64().unwrap() as usize,
                nums(&m["data"]),
            ),
            s: nums(&m["s"]),
        })
        .collect()
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// uᵀu = I and vt·vtᵀ = I (to `tol`), and u·diag(s)·vt = a (relative to ‖a‖).
fn assert_svd(what: &str, a: &Mat, d: &Svd, tol: f64) {
    let k = d.s.len();
    let eye = Mat::identity(k);
    let e_u = max_abs(&d.u.t_matmul(&d.u).data, &eye.data);
    let e_v = max_abs(&d.vt.matmul_t(&d.vt).data, &eye.data);
    assert!(
        e_u < tol && e_v < tol,
        "{what}: orthogonality {e_u:e} {e_v:e}"
    );
    assert!(
        d.s.windows(2).all(|w| w[0] >= w[1]),
        "{what}: s not descending"
    );
    let back = d.reconstruct();
    let e = max_abs(&back.data, &a.data) / a.norm();
    assert!(e < tol, "{what}: reconstruction {e:e}");
}

#[test]
fn exact_svd_matches_numpy_and_is_orthonormal() {
    for (n, c) in fixture().iter().enumerate() {
        let d = svd(&c.a);
        assert_eq!(d.s.len(), c.s.len());
        let e = max_abs(&d.s, &c.s) / c.s[0];
        assert!(e < 1e-13, "matrix {n}: singular values off by {e:e}");
        assert_svd(&format!("matrix {n}"), &c.a, &d, 1e-12);
    }
}

#[test]
fn svd_of_a_product_equals_the_svd_of_the_formed_matrix() {
    let mut rng = Rng::new(3);
    for (o, r, i) in [(36, 8, 40), (6, 8, 36), (20, 3, 5), (4, 4, 4)] {
        let up = Mat::from_vec(o, r, rng.normal_vec(o * r));
        let down = Mat::from_vec(r, i, rng.normal_vec(r * i));
        let w = up.matmul(&down);
        let d = svd_of_product(&up, &down);
        assert_eq!(d.s.len(), o.min(r).min(i));
        let full = svd(&w);
        let e = max_abs(&d.s, &full.s[..d.s.len()]) / full.s[0];
        assert!(e < 1e-13, "{o}x{r}x{i}: {e:e}");
        assert_svd(&format!("{o}x{r}x{i}"), &w, &d, 1e-12);
    }
}

#[test]
fn randomized_svd_recovers_an_exactly_low_rank_matrix() {
    let mut rng = Rng::new(11);
    let (m, n, r) = (200, 330, 5);
    let a = Mat::from_vec(m, r, rng.normal_vec(m * r)).matmul(&Mat::from_vec(
        r,
        n,
        rng.normal_vec(r * n),
    ));
    let d = truncated_svd(&a, r, &Randomized::default());
    assert_eq!(d.s.len(), r);
    assert_svd("rank 5", &a, &d, 1e-11);
    let exact = svd(&a);
    assert!(max_abs(&d.s, &exact.s[..r]) / exact.s[0] < 1e-12);
    assert!(
        exact.s[r] / exact.s[0] < 1e-13,
        "the test matrix has rank 5"
    );
}

/// The bound src/linalg/svd.rs documents: on singular values 1/sqrt(1+i) (a slow decay, as a
/// fine-tune's weight differences have), rank 8 with the defaults is within 1e-3 of the best
/// rank-8 approximation's Frobenius error (numpy's tail singular values) and of the top
/// singular values.
#[test]
fn randomized_svd_error_on_a_slow_spectrum_is_bounded() {
    let cases = fixture();
    let c = cases.last().unwrap();
    assert_eq!((c.a.rows, c.a.cols), (30, 48));
    let k = 8;
    let how = Randomized {
        oversample: 6,
        ..Randomized::default()
    };
    assert!(k + how.oversample < 30, "the randomized path runs");
    let d = truncated_svd(&c.a, k, &how);
    let optimal = c.s[k..].iter().map(|s| s * s).sum::<f64>().sqrt();
    let mut diff = d.reconstruct();
    for (x, y) in diff.data.iter_mut().zip(&c.a.data) {
        *x -= y;
    }
    let got = diff.norm();
    assert!(got >= optimal * (1.0 - 1e-12), "better than Eckart–Young?");
    assert!(
        got <= optimal * (1.0 + 1e-3),
        "error {got} vs optimal {optimal}"
    );
    for j in 0..k {
        assert!(
            (d.s[j] - c.s[j]).abs() / c.s[j] < 1e-3,
            "s[{j}] {} vs numpy {}",
            d.s[j],
            c.s[j]
        );
    }
    let eye = Mat::identity(k);
    assert!(max_abs(&d.u.t_matmul(&d.u).data, &eye.data) < 1e-12);
    assert!(max_abs(&d.vt.matmul_t(&d.vt).data, &eye.data) < 1e-12);
    // Without power iterations the same sample is measurably worse: they do the work.
    let crude = truncated_svd(
        &c.a,
        k,
        &Randomized {
            power_iters: 0,
            ..how
        },
    );
    let mut diff = crude.reconstruct();
    for (x, y) in diff.data.iter_mut().zip(&c.a.data) {
        *x -= y;
    }
    assert!(diff.norm() > got);
}
