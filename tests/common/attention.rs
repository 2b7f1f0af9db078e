//! The sizes of an attention test case and its random inputs (ops_attention.rs, cpu_flash.rs).

use lorafuse::backend::Attention;
use lorafuse::rng::Rng;
use lorafuse::Tensor;

/// Standard-normal values times `s` (s < 1 keeps the softmax away from saturation).
pub fn randn_s(rng: &mut Rng, shape: &[usize], s: f64) -> Tensor {
    let v = super::randn(rng, shape)
        .to_f64_vec()
        .iter()
        .map(|x| x * s)
        .collect();
    Tensor::from_f64(shape, v).unwrap()
}

/// Sizes of one case: q [b, lq, h·d], k [b, lk, h·d], v [b, lk, h·dv].
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub b: usize,
    pub h: usize,
    pub d: usize,
    pub dv: usize,
    pub lq: usize,
    pub lk: usize,
    pub causal: bool,
}

impl Case {
    /// q, k and v: standard-normal values times `s`.
    pub fn inputs(&self, rng: &mut Rng, s: f64) -> Vec<Tensor> {
        vec![
            randn_s(rng, &[self.b, self.lq, self.h * self.d], s),
            randn_s(rng, &[self.b, self.lk, self.h * self.d], s),
            randn_s(rng, &[self.b, self.lk, self.h * self.dv], s),
        ]
    }
    /// The call's heads and causality.
    pub fn p(&self) -> Attention {
        Attention {
            heads: self.h,
            causal: self.causal,
        }
    }
}
