//! Multi-head attention: hand-computed forwards (softmax weights, LSE, causal mask, heads kept
//! apart), a naive f64 reference on SD-like shapes, f64 gradient checks of dQ, dK and dV,
//! f32 against f64, a 1024-token smoke test of the blocked path, and errors for bad input.

use crate::common;

use common::attention::Case;
use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Attention;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Error, Tensor};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(shape, v.to_vec()).unwrap()
}

fn attn(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> (Tensor, Tensor) {
    CpuBackend::new()
        .attention(q, k, v, Attention { heads, causal })
        .unwrap()
}

/// The f64 inputs of a case, as flat vectors, for the naive reference.
struct Host {
    c: Case,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

impl Host {
    fn new(c: Case, q: &Tensor, k: &Tensor, v: &Tensor) -> Self {
        Host {
            c,
            q: q.to_f64_vec(),
            k: k.to_f64_vec(),
            v: v.to_f64_vec(),
        }
    }
    fn q(&self, b: usize, h: usize, i: usize, c: usize) -> f64 {
        self.q[(b * self.c.lq + i) * self.c.h * self.c.d + h * self.c.d + c]
    }
    fn k(&self, b: usize, h: usize, j: usize, c: usize) -> f64 {
        self.k[(b * self.c.lk + j) * self.c.h * self.c.d + h * self.c.d + c]
    }
    fn v(&self, b: usize, h: usize, j: usize, c: usize) -> f64 {
        self.v[(b * self.c.lk + j) * self.c.h * self.c.dv + h * self.c.dv + c]
    }
    fn keys(&self, i: usize) -> usize {
        if self.c.causal {
            i + 1
        } else {
            self.c.lk
        }
    }
    /// The softmax row P[i, ..] of head h (full, explicit loops) and its log-sum-exp.
    fn probs(&self, b: usize, h: usize, i: usize) -> (Vec<f64>, f64) {
        let s = 1.0 / (self.c.d as f64).sqrt();
        let scores: Vec<f64> = (0..self.keys(i))
            .map(|j| {
                (0..self.c.d)
                    .map(|c| self.q(b, h, i, c) * self.k(b, h, j, c))
                    .sum::<f64>()
                    * s
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = scores.iter().map(|x| (x - m).exp()).sum();
        let p = scores.iter().map(|x| (x - m).exp() / sum).collect();
        (p, m + sum.ln())
    }
    /// Row i of O for head h, [dv], and lse[b, h, i].
    fn row(&self, b: usize, h: usize, i: usize) -> (Vec<f64>, f64) {
        let (p, lse) = self.probs(b, h, i);
        let o = (0..self.c.dv)
            .map(|c| {
                p.iter()
                    .enumerate()
                    .map(|(j, pj)| pj * self.v(b, h, j, c))
                    .sum()
            })
            .collect();
        (o, lse)
    }
    /// The whole forward: O [b, lq, h·dv] and lse [b, h, lq].
    fn forward(&self) -> (Vec<f64>, Vec<f64>) {
        let c = self.c;
        let mut o = vec![0.0; c.b * c.lq * c.h * c.dv];
        let mut lse = vec![0.0; c.b * c.h * c.lq];
        for b in 0..c.b {
            for h in 0..c.h {
                for i in 0..c.lq {
                    let (row, l) = self.row(b, h, i);
                    let at = (b * c.lq + i) * c.h * c.dv + h * c.dv;
                    o[at..at + c.dv].copy_from_slice(&row);
                    lse[(b * c.h + h) * c.lq + i] = l;
                }
            }
        }
        (o, lse)
    }
    /// Row i of dQ for head h, [d], from dO (given as a flat [b, lq, h·dv] vector):
    /// dQ_i = s·Σ_j P_ij (dP_ij − D_i) K_j with dP_ij = dO_i·V_j and D_i = Σ_j P_ij dP_ij.
    fn dq_row(&self, d_o: &[f64], b: usize, h: usize, i: usize) -> Vec<f64> {
        let c = self.c;
        let s = 1.0 / (c.d as f64).sqrt();
        let (p, _) = self.probs(b, h, i);
        let go = |col: usize| d_o[(b * c.lq + i) * c.h * c.dv + h * c.dv + col];
        let dp: Vec<f64> = (0..p.len())
            .map(|j| (0..c.dv).map(|col| go(col) * self.v(b, h, j, col)).sum())
            .collect();
        let di: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
        (0..c.d)
            .map(|col| {
                s * (0..p.len())
                    .map(|j| p[j] * (dp[j] - di) * self.k(b, h, j, col))
                    .sum::<f64>()
            })
            .collect()
    }
    /// Rows `js` of dK and dV for head h, [d] and [dv] each, from dO: a pass over every query
    /// row i, dK_j = s·Σ_i dS_ij Q_i and dV_j = Σ_i P_ij dO_i, dS_ij = P_ij (dP_ij − D_i).
    fn dkv_rows(&self, d_o: &[f64], b: usize, h: usize, js: &[usize]) -> Vec<(Vec<f64>, Vec<f64>)> {
        let c = self.c;
        let s = 1.0 / (c.d as f64).sqrt();
        let mut out = vec![(vec![0.0; c.d], vec![0.0; c.dv]); js.len()];
        for i in 0..c.lq {
            let (p, _) = self.probs(b, h, i);
            let go = |col: usize| d_o[(b * c.lq + i) * c.h * c.dv + h * c.dv + col];
            let dp = |j: usize| {
                (0..c.dv)
                    .map(|col| go(col) * self.v(b, h, j, col))
                    .sum::<f64>()
            };
            let di: f64 = p.iter().enumerate().map(|(j, pj)| pj * dp(j)).sum();
            for (&j, (dk, dv)) in js.iter().zip(&mut out) {
                let Some(&pij) = p.get(j) else { continue }; // masked: query i does not see key j
                let ds = pij * (dp(j) - di);
                for (col, x) in dk.iter_mut().enumerate() {
                    *x += s * ds * self.q(b, h, i, col);
                }
                for (col, x) in dv.iter_mut().enumerate() {
                    *x += pij * go(col);
                }
            }
        }
        out
    }
}

// ---- hand-computed cases ----

#[test]
fn forward_by_hand_two_keys() {
    // One head, d = 4 so the scale is 1/sqrt(4) = 1/2; dv = 2.
    // Query 0 = [2, 0, 0, 0]; keys k0 = [1, 0, 0, 0], k1 = [1 + ln 3, 0, 0, 0]:
    //   scores = (1/2)·2·[1, 1 + ln 3] = [1, 1 + ln 3]
    //   softmax = [e, 3e] / 4e = [1/4, 3/4]
    //   lse = log(e + 3e) = 1 + ln 4
    // Query 1 = 0: scores [0, 0], softmax [1/2, 1/2], lse = ln 2.
    // V = [[4, 0], [0, 8]]: O_0 = [4/4, 3·8/4] = [1, 6]; O_1 = [2, 4].
    let ln3 = 3f64.ln();
    let q = t(&[1, 2, 4], &[2., 0., 0., 0., 0., 0., 0., 0.]);
    let k = t(&[1, 2, 4], &[1., 0., 0., 0., 1. + ln3, 0., 0., 0.]);
    let v = t(&[1, 2, 2], &[4., 0., 0., 8.]);
    let (o, lse) = attn(&q, &k, &v, 1, false);
    assert_tensor("o", &o, &[1, 2, 2], &[1., 6., 2., 4.], 1e-14);
    assert_tensor("lse", &lse, &[1, 1, 2], &[1. + 4f64.ln(), 2f64.ln()], 1e-14);
    // The same in f32.
    let (o32, lse32) = attn(&to_f32(&q), &to_f32(&k), &to_f32(&v), 1, false);
    assert_eq!((o32.dtype(), lse32.dtype()), (DType::F32, DType::F32));
    assert_tensor("o f32", &o32, &[1, 2, 2], &[1., 6., 2., 4.], 1e-6);
    assert_tensor(
        "lse f32",
        &lse32,
        &[1, 1, 2],
        &[1. + 4f64.ln(), 2f64.ln()],
        1e-6,
    );
}

#[test]
fn lse_is_stable_for_large_scores() {
    // Scores 1000 and 1000 + ln 3: exp would overflow without the max subtraction.
    // d = 1 (scale 1), q = 1, k = [1000, 1000 + ln 3]: softmax [1/4, 3/4], lse = 1000 + ln 4.
    let q = t(&[1, 1, 1], &[1.]);
    let k = t(&[1, 2, 1], &[1000., 1000. + 3f64.ln()]);
    let v = t(&[1, 2, 1], &[4., 8.]);
    let (o, lse) = attn(&q, &k, &v, 1, false);
    assert_tensor("o", &o, &[1, 1, 1], &[7.], 1e-12);
    assert_tensor("lse", &lse, &[1, 1, 1], &[1000. + 4f64.ln()], 1e-12);
    let (o32, lse32) = attn(&to_f32(&q), &to_f32(&k), &to_f32(&v), 1, false);
    assert!(o32.to_f64_vec()[0].is_finite() && lse32.to_f64_vec()[0].is_finite());
}

#[test]
fn causal_by_hand() {
    // One head, d = 1 (scale 1), 3 tokens; q = [1, 1, 1], k = [0, ln 2, ln 3], v = [6, 12, -6].
    // Row 0 sees key 0 only: P = [1], O_0 = V_0 = 6 exactly, lse = 0.
    // Row 1: scores [0, ln 2] -> P = [1/3, 2/3], O_1 = 2 + 8 = 10, lse = ln 3.
    // Row 2: scores [0, ln 2, ln 3] -> P = [1, 2, 3]/6, O_2 = 1 + 4 - 3 = 2, lse = ln 6.
    let q = t(&[1, 3, 1], &[1., 1., 1.]);
    let k = t(&[1, 3, 1], &[0., 2f64.ln(), 3f64.ln()]);
    let v = t(&[1, 3, 1], &[6., 12., -6.]);
    let (o, lse) = attn(&q, &k, &v, 1, true);
    assert_eq!(o.to_f64_vec()[0], 6.0, "causal row 0 is V_0 exactly");
    assert_eq!(lse.to_f64_vec()[0], 0.0);
    assert_tensor("o", &o, &[1, 3, 1], &[6., 10., 2.], 1e-14);
    let want_lse = [0., 3f64.ln(), 6f64.ln()];
    assert_tensor("lse", &lse, &[1, 1, 3], &want_lse, 1e-14);
    // Without the mask every row sees all three keys: row 2's values everywhere.
    let (o, lse) = attn(&q, &k, &v, 1, false);
    assert_tensor("o unmasked", &o, &[1, 3, 1], &[2., 2., 2.], 1e-14);
    assert_tensor("lse unmasked", &lse, &[1, 1, 3], &[6f64.ln(); 3], 1e-14);

    // Random inputs, several batches and heads: causal row 0 is V[b, 0, head] bit for bit.
    let c = Case {
        b: 2,
        h: 3,
        d: 5,
        dv: 4,
        lq: 6,
        lk: 6,
        causal: true,
    };
    let xs = c.inputs(&mut Rng::new(7), 1.0);
    for xs in [xs.clone(), xs.iter().map(to_f32).collect()] {
        let (o, _) = attn(&xs[0], &xs[1], &xs[2], c.h, true);
        let (ov, vv) = (o.to_f64_vec(), xs[2].to_f64_vec());
        for b in 0..c.b {
            let row = b * c.lq * c.h * c.dv;
            assert_eq!(&ov[row..row + c.h * c.dv], &vv[row..row + c.h * c.dv]);
        }
    }
}

#[test]
fn heads_do_not_mix() {
    // Two heads, d = dv = 1, one query, two keys. Token rows hold [head 0, head 1].
    // Head 0: q = 0, so scores [0, 0] whatever the keys: P = [1/2, 1/2], O = (2 + 4)/2 = 3,
    //         lse = ln 2.
    // Head 1: q = 1, keys [0, ln 3]: P = [1/4, 3/4], O = 100/4 + 3·200/4 = 175, lse = ln 4.
    let q = t(&[1, 1, 2], &[0., 1.]);
    let k = t(&[1, 2, 2], &[5., 0., -7., 3f64.ln()]);
    let v = t(&[1, 2, 2], &[2., 100., 4., 200.]);
    let (o, lse) = attn(&q, &k, &v, 2, false);
    assert_tensor("o", &o, &[1, 1, 2], &[3., 175.], 1e-13);
    assert_tensor("lse", &lse, &[1, 2, 1], &[2f64.ln(), 4f64.ln()], 1e-14);
    // Changing head 1's keys and values leaves head 0 exactly as it was.
    let k2 = t(&[1, 2, 2], &[5., 9., -7., -9.]);
    let v2 = t(&[1, 2, 2], &[2., -1e6, 4., 1e6]);
    let (o2, lse2) = attn(&q, &k2, &v2, 2, false);
    assert_eq!(o2.to_f64_vec()[0], o.to_f64_vec()[0]);
    assert_eq!(lse2.to_f64_vec()[0], lse.to_f64_vec()[0]);
    assert_ne!(o2.to_f64_vec()[1], o.to_f64_vec()[1]);
}

// ---- against the naive reference ----

#[test]
fn forward_matches_naive_reference() {
    let cases = [
        // SD cross-attention: 77 text tokens, head dims 40 and 80.
        Case {
            b: 2,
            h: 2,
            d: 40,
            dv: 40,
            lq: 13,
            lk: 77,
            causal: false,
        },
        Case {
            b: 2,
            h: 2,
            d: 80,
            dv: 80,
            lq: 13,
            lk: 77,
            causal: false,
        },
        // CLIP-style causal self-attention.
        Case {
            b: 2,
            h: 2,
            d: 40,
            dv: 40,
            lq: 9,
            lk: 9,
            causal: true,
        },
        // More queries than one block (128), with a tail of 44.
        Case {
            b: 1,
            h: 2,
            d: 40,
            dv: 40,
            lq: 300,
            lk: 77,
            causal: false,
        },
        Case {
            b: 1,
            h: 2,
            d: 16,
            dv: 16,
            lq: 300,
            lk: 300,
            causal: true,
        },
        // dv != d.
        Case {
            b: 2,
            h: 3,
            d: 24,
            dv: 8,
            lq: 5,
            lk: 7,
            causal: false,
        },
    ];
    let mut rng = Rng::new(11);
    for c in cases {
        let xs = c.inputs(&mut rng, 1.0);
        let (o, lse) = attn(&xs[0], &xs[1], &xs[2], c.h, c.causal);
        let (o_ref, lse_ref) = Host::new(c, &xs[0], &xs[1], &xs[2]).forward();
        assert_tensor(
            &format!("o {c:?}"),
            &o,
            &[c.b, c.lq, c.h * c.dv],
            &o_ref,
            1e-12,
        );
        assert_tensor(
            &format!("lse {c:?}"),
            &lse,
            &[c.b, c.h, c.lq],
            &lse_ref,
            1e-12,
        );
    }
}

// ---- gradients ----

fn grad_case(name: &str, c: Case, max_coords: usize, seed: u64) {
    let be = CpuBackend::new();
    let inputs = c.inputs(&mut Rng::new(seed), 0.5);
    let p = c.p();
    gradcheck(
        name,
        &inputs,
        &[0, 1, 2],
        max_coords,
        |xs| be.attention(&xs[0], &xs[1], &xs[2], p).unwrap().0,
        |xs, d_o| {
            let (o, lse) = be.attention(&xs[0], &xs[1], &xs[2], p).unwrap();
            let (dq, dk, dv) = be
                .attention_backward(&xs[0], &xs[1], &xs[2], &o, &lse, d_o, p)
                .unwrap();
            vec![dq, dk, dv]
        },
    );
}

#[test]
fn gradcheck_cross_attention_d40() {
    let c = Case {
        b: 2,
        h: 2,
        d: 40,
        dv: 40,
        lq: 13,
        lk: 77,
        causal: false,
    };
    grad_case("attention d40 x77", c, 80, 21);
}

#[test]
fn gradcheck_cross_attention_d80() {
    let c = Case {
        b: 1,
        h: 2,
        d: 80,
        dv: 80,
        lq: 13,
        lk: 77,
        causal: false,
    };
    grad_case("attention d80 x77", c, 80, 22);
}

#[test]
fn gradcheck_causal() {
    let c = Case {
        b: 2,
        h: 2,
        d: 16,
        dv: 16,
        lq: 9,
        lk: 9,
        causal: true,
    };
    grad_case("attention causal", c, 100, 23);
}

#[test]
fn gradcheck_value_width_differs() {
    let c = Case {
        b: 2,
        h: 3,
        d: 8,
        dv: 12,
        lq: 7,
        lk: 11,
        causal: false,
    };
    grad_case("attention dv != d", c, 100, 24);
}

/// dK and dV summed over two query blocks (128 + 72), non-causal and causal.
#[test]
fn gradcheck_across_query_blocks() {
    let c = Case {
        b: 1,
        h: 2,
        d: 8,
        dv: 8,
        lq: 200,
        lk: 77,
        causal: false,
    };
    grad_case("attention 200 queries", c, 80, 25);
    let c = Case {
        b: 1,
        h: 1,
        d: 8,
        dv: 8,
        lq: 150,
        lk: 150,
        causal: true,
    };
    grad_case("attention causal 150", c, 80, 26);
}

// ---- precision and scale ----

/// f32 agrees with f64 on an SD-like cross-attention, forward and backward.
#[test]
fn f32_matches_f64() {
    let be = CpuBackend::new();
    let c = Case {
        b: 1,
        h: 8,
        d: 40,
        dv: 40,
        lq: 256,
        lk: 77,
        causal: false,
    };
    let mut rng = Rng::new(31);
    let xs = c.inputs(&mut rng, 1.0);
    let d_o = randn(&mut rng, &[c.b, c.lq, c.h * c.dv]);
    let run = |xs: &[Tensor], d_o: &Tensor| {
        let (o, lse) = be.attention(&xs[0], &xs[1], &xs[2], c.p()).unwrap();
        let (dq, dk, dv) = be
            .attention_backward(&xs[0], &xs[1], &xs[2], &o, &lse, d_o, c.p())
            .unwrap();
        [o, lse, dq, dk, dv]
    };
    let want = run(&xs, &d_o);
    let xs32: Vec<Tensor> = xs.iter().map(to_f32).collect();
    let got = run(&xs32, &to_f32(&d_o));
    for (name, (g, w)) in ["o", "lse", "dq", "dk", "dv"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        assert_eq!(g.dtype(), DType::F32, "{name}");
        let w = w.to_f64_vec();
        // Elementwise rtol 1e-4, with an absolute floor at 1e-4 of the tensor's largest value
        // for entries that are sums of cancelling terms.
        let floor = 1e-4 * w.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert_close(name, &g.to_f64_vec(), &w, 1e-4, floor);
    }
}

/// 1024 tokens (8 query blocks): forward rows sampled against the naive reference, lse all
/// finite, and the backward checked by sampled dQ, dK and dV rows and two exact identities.
#[test]
fn blocked_path_at_1024_tokens() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(41);
    for causal in [false, true] {
        let c = Case {
            b: 1,
            h: 2,
            d: 40,
            dv: 40,
            lq: 1024,
            lk: 1024,
            causal,
        };
        // The reference reads the f32-rounded values, so both see the same inputs.
        let xs: Vec<Tensor> = c.inputs(&mut rng, 1.0).iter().map(to_f32).collect();
        let d_o = to_f32(&randn(&mut rng, &[c.b, c.lq, c.h * c.dv]));
        let (o, lse) = be.attention(&xs[0], &xs[1], &xs[2], c.p()).unwrap();
        let (ov, lv) = (o.to_f64_vec(), lse.to_f64_vec());
        assert!(lv.iter().all(|x| x.is_finite()), "lse finite");
        let (dq, dk, dv) = be
            .attention_backward(&xs[0], &xs[1], &xs[2], &o, &lse, &d_o, c.p())
            .unwrap();
        let (dqv, dkv, dvv, dov) = (
            dq.to_f64_vec(),
            dk.to_f64_vec(),
            dv.to_f64_vec(),
            d_o.to_f64_vec(),
        );
        let host = Host::new(c, &xs[0], &xs[1], &xs[2]);
        let w = c.h * c.dv;
        for i in [0, 1, 127, 128, 129, 255, 256, 640, 1000, 1023] {
            for h in 0..c.h {
                let (row, l) = host.row(0, h, i);
                let at = i * w + h * c.dv;
                let what = format!("causal {causal} row {i} head {h}");
                assert_close(&format!("o {what}"), &ov[at..at + c.dv], &row, 1e-4, 1e-5);
                assert_close(
                    &format!("lse {what}"),
                    &[lv[h * c.lq + i]],
                    &[l],
                    1e-5,
                    1e-5,
                );
                let dq_ref = host.dq_row(&dov, 0, h, i);
                let at = i * c.h * c.d + h * c.d;
                assert_close(
                    &format!("dq {what}"),
                    &dqv[at..at + c.d],
                    &dq_ref,
                    1e-3,
                    1e-4,
                );
            }
        }
        let js = [0, 1, 127, 128, 500, 1023];
        for h in 0..c.h {
            for (&j, (dk_ref, dv_ref)) in js.iter().zip(host.dkv_rows(&dov, 0, h, &js)) {
                let what = format!("causal {causal} key {j} head {h}");
                let at = j * c.h * c.d + h * c.d;
                assert_close(
                    &format!("dk {what}"),
                    &dkv[at..at + c.d],
                    &dk_ref,
                    1e-3,
                    1e-4,
                );
                let at = j * w + h * c.dv;
                assert_close(
                    &format!("dv {what}"),
                    &dvv[at..at + c.dv],
                    &dv_ref,
                    1e-3,
                    1e-4,
                );
            }
        }
        // Each row of dS sums to 0, so Σ_j dK_j = s·Σ_i (Σ_j dS_ij)·Q_i = 0; and each row of
        // P sums to 1, so Σ_j dV_j = Σ_j Σ_i P_ij·dO_i = Σ_i dO_i. Per head and channel.
        for col in 0..c.h * c.d {
            let sum: f64 = (0..c.lk).map(|j| dkv[j * c.h * c.d + col]).sum();
            let mag: f64 = (0..c.lk).map(|j| dkv[j * c.h * c.d + col].abs()).sum();
            assert!(
                sum.abs() <= 1e-4 * mag,
                "Σ dK column {col}: {sum} (Σ|dK| {mag})"
            );
        }
        for col in 0..w {
            let sum: f64 = (0..c.lk).map(|j| dvv[j * w + col]).sum();
            let want: f64 = (0..c.lq).map(|i| dov[i * w + col]).sum();
            assert_close(&format!("Σ dV column {col}"), &[sum], &[want], 1e-4, 1e-3);
        }
    }
}

#[test]
fn empty_sizes_do_not_panic() {
    let be = CpuBackend::new();
    let p = Attention {
        heads: 2,
        causal: false,
    };
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32);
    // No batch, no queries, and value heads of width 0.
    for (q, k, v) in [
        ([0, 3, 8], [0, 5, 8], [0, 5, 8]),
        ([1, 0, 8], [1, 5, 8], [1, 5, 6]),
        ([1, 3, 8], [1, 5, 8], [1, 5, 0]),
    ] {
        let (o, lse) = be.attention(&z(&q), &z(&k), &z(&v), p).unwrap();
        assert_eq!(o.dims(), &[q[0], q[1], v[2]]);
        assert_eq!(lse.dims(), &[q[0], 2, q[1]]);
        let (dq, dk, dv) = be
            .attention_backward(&z(&q), &z(&k), &z(&v), &o, &lse, &o, p)
            .unwrap();
        assert_eq!((dq.dims(), dk.dims(), dv.dims()), (&q[..], &k[..], &v[..]));
    }
}

// ---- bad input ----

fn z(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32)
}

/// The forward's error on these shapes (it must fail).
fn fwd_err(q: &[usize], k: &[usize], v: &[usize], heads: usize, causal: bool) -> Error {
    CpuBackend::new()
        .attention(&z(q), &z(k), &z(v), Attention { heads, causal })
        .expect_err("bad shapes must fail")
}

fn assert_names(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "{p:?} missing from: {msg}");
    }
}

#[test]
fn bad_shapes_name_both_shapes() {
    // q and k widths differ.
    let e = fwd_err(&[1, 4, 8], &[1, 5, 6], &[1, 5, 6], 2, false);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert_names(&e, &["[1, 4, 8]", "[1, 5, 6]"]);
    // Batch sizes differ.
    let e = fwd_err(&[2, 4, 8], &[1, 5, 8], &[1, 5, 8], 2, false);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert_names(&e, &["[2, 4, 8]", "[1, 5, 8]"]);
    // k and v lengths differ.
    let e = fwd_err(&[1, 4, 8], &[1, 5, 8], &[1, 6, 8], 2, false);
    assert_names(&e, &["[1, 5, 8]", "[1, 6, 8]"]);
    // Heads divide neither q's width nor v's.
    let e = fwd_err(&[1, 4, 8], &[1, 5, 8], &[1, 5, 8], 3, false);
    assert!(matches!(e, Error::BadValue { .. }), "{e}");
    assert_names(&e, &["heads = 3", "[1, 4, 8]", "[1, 5, 8]"]);
    let e = fwd_err(&[1, 4, 8], &[1, 5, 8], &[1, 5, 10], 4, false);
    assert_names(&e, &["heads = 4", "[1, 4, 8]", "[1, 5, 10]"]);
    let e = fwd_err(&[1, 4, 8], &[1, 5, 8], &[1, 5, 8], 0, false);
    assert!(matches!(e, Error::BadValue { .. }), "{e}");
    // Causal with Lq != Lk.
    let e = fwd_err(&[1, 4, 8], &[1, 5, 8], &[1, 5, 8], 2, true);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert_names(&e, &["[1, 4, 8]", "[1, 5, 8]", "causal"]);
    // Wrong rank, no keys, zero-width heads.
    let e = fwd_err(&[4, 8], &[1, 5, 8], &[1, 5, 8], 2, false);
    assert!(matches!(e, Error::BadShape { .. }), "{e}");
    let e = fwd_err(&[1, 4, 8], &[1, 0, 8], &[1, 0, 8], 2, false);
    assert_names(&e, &["[1, 4, 8]", "[1, 0, 8]"]);
    let e = fwd_err(&[1, 4, 0], &[1, 5, 0], &[1, 5, 8], 2, false);
    assert!(matches!(e, Error::BadShape { .. }), "{e}");
}

#[test]
fn backward_bad_saved_shapes_name_both_shapes() {
    let be = CpuBackend::new();
    let p = Attention {
        heads: 2,
        causal: false,
    };
    let (q, k, v) = (z(&[1, 4, 8]), z(&[1, 5, 8]), z(&[1, 5, 6]));
    let (o, lse) = be.attention(&q, &k, &v, p).unwrap();
    assert_eq!((o.dims(), lse.dims()), (&[1, 4, 6][..], &[1, 2, 4][..]));
    let bwd = |o: &Tensor, lse: &Tensor, d_o: &Tensor| {
        be.attention_backward(&q, &k, &v, o, lse, d_o, p)
            .expect_err("bad saved shapes must fail")
    };
    // lse as [B, Lq, H] instead of [B, H, Lq].
    let e = bwd(&o, &z(&[1, 4, 2]), &o);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert_names(&e, &["lse", "[1, 4, 2]", "[1, 4, 8]", "[1, 2, 4]"]);
    // o with v's width wrong, and with q's length wrong.
    let e = bwd(&z(&[1, 4, 8]), &lse, &z(&[1, 4, 8]));
    assert_names(&e, &["[1, 4, 8]", "[1, 5, 6]", "[1, 4, 6]"]);
    let e = bwd(&z(&[1, 3, 6]), &lse, &z(&[1, 3, 6]));
    assert_names(&e, &["[1, 3, 6]", "[1, 4, 8]"]);
    // dO not o's shape.
    let e = bwd(&o, &lse, &z(&[1, 4, 5]));
    assert_names(&e, &["d_o", "[1, 4, 5]", "[1, 4, 6]"]);
    // The forward's checks run in the backward too.
    let e = be
        .attention_backward(
            &q,
            &k,
            &v,
            &o,
            &lse,
            &o,
            Attention {
                heads: 2,
                causal: true,
            },
        )
        .err()
        .unwrap();
    assert_names(&e, &["[1, 4, 8]", "[1, 5, 8]", "causal"]);
}

#[test]
fn bad_dtypes_are_errors() {
    let be = CpuBackend::new();
    let p = Attention {
        heads: 2,
        causal: false,
    };
    let h = |s: &[usize]| Tensor::zeros(s, DType::F16);
    let e = be
        .attention(&h(&[1, 4, 8]), &h(&[1, 5, 8]), &h(&[1, 5, 8]), p)
        .err()
        .unwrap();
    assert_names(&e, &["f16", "cast"]);
    // Mixed dtypes name the odd argument.
    let k64 = Tensor::zeros([1, 5, 8], DType::F64);
    let e = be
        .attention(&z(&[1, 4, 8]), &k64, &z(&[1, 5, 8]), p)
        .err()
        .unwrap();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    assert_names(&e, &["k", "f64", "f32"]);
    let (q, k, v) = (z(&[1, 4, 8]), z(&[1, 5, 8]), z(&[1, 5, 8]));
    let (o, lse) = be.attention(&q, &k, &v, p).unwrap();
    let lse64 = Tensor::zeros(lse.dims(), DType::F64);
    let e = be
        .attention_backward(&q, &k, &v, &o, &lse64, &o, p)
        .err()
        .unwrap();
    assert_names(&e, &["lse", "f64"]);
    let e = be
        .attention_backward(&h(&[1, 4, 8]), &k, &v, &o, &lse, &o, p)
        .err()
        .unwrap();
    assert_names(&e, &["f16", "cast"]);
}
