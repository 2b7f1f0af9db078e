//! The CPU profile (src/backend/cpu/profile.rs): ops and products are counted while it is on
//! and not while it is off, a product's FLOPs and layout are its own, an op's time in products
//! is part of its time, an op inside another counts toward the outer one only, and bf16
//! products are filed apart from f32 ones.
//!
//! One test: the switch is process-wide, and other tests' ops may land in the tables while it
//! is on (the shapes here are odd enough to be this test's own).

use crate::common;

use common::{randn, to_f32};
use lorafuse::backend::cpu::{gemm_bf16, profile, CpuPrecision};
use lorafuse::backend::prelude::*;
use lorafuse::rng::Rng;
use lorafuse::CpuBackend;

fn op(key: &str) -> Option<profile::Entry> {
    profile::ops().into_iter().find(|e| e.key == key)
}

#[test]
fn counts_ops_and_products_only_while_on() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(31);
    let x = to_f32(&randn(&mut rng, &[1, 70, 24]));
    let w = to_f32(&randn(&mut rng, &[16, 24]));
    profile::set_enabled(true);
    for _ in 0..2 {
        be.linear(&x, &w, None, None).expect("linear");
    }
    let lin = op("linear [1, 70, 24]").expect("the linear op is in the table");
    assert!(lin.calls >= 2, "{lin:?}");
    assert!(
        lin.extra > 0.0 && lin.extra <= lin.secs,
        "time in products is part of the op's time: {lin:?}"
    );
    // y = x·Wᵀ: A [70, 24] as stored, B = Wᵀ a transposed view.
    let p = profile::products()
        .into_iter()
        .find(|e| e.key == "70x24x16 AN BT")
        .expect("the product is in the table");
    assert!(p.calls >= 2 && p.secs > 0.0, "{p:?}");
    assert_eq!(
        p.extra,
        p.calls as f64 * 2.0 * (70 * 24 * 16) as f64,
        "FLOPs"
    );
    let report = profile::report(100);
    assert!(
        report.contains("linear [1, 70, 24]") && report.contains("70x24x16 AN BT"),
        "{report}"
    );

    // `cpu_precision: bf16` files its frozen-weight products apart, marked bf16.
    if gemm_bf16::available() {
        let bf = CpuBackend::with_precision(CpuPrecision::Bf16).expect("bf16 backend");
        bf.linear(&x, &w, None, None).expect("bf16 linear");
        let p = profile::products()
            .into_iter()
            .find(|e| e.key == "70x24x16 AN BT bf16")
            .expect("the bf16 product is in the table");
        assert_eq!(p.extra, p.calls as f64 * 2.0 * (70 * 24 * 16) as f64);
    } else {
        println!("SKIPPED (the bf16 part only): this CPU has no AVX512_BF16");
    }

    // Nested timers: only the outermost is recorded.
    {
        let _outer = profile::OpTimer::start("profile-test-outer", &x);
        let _inner = profile::OpTimer::start("profile-test-inner", &x);
    }
    assert!(op("profile-test-outer [1, 70, 24]").is_some());
    assert!(op("profile-test-inner [1, 70, 24]").is_none());

    profile::set_enabled(false);
    let before = op("linear [1, 70, 24]").expect("still there").calls;
    be.linear(&x, &w, None, None).expect("linear");
    assert_eq!(op("linear [1, 70, 24]").expect("still there").calls, before);
}
