//! The seedable RNG: same seed, same stream; sane moments; unbiased ranges.

use lorafuse::rng::Rng;

#[test]
fn deterministic_per_seed() {
    let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
    let va: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
    let vb: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
    let vc: Vec<u64> = (0..10).map(|_| c.next_u64()).collect();
    assert_eq!(va, vb);
    assert_ne!(va, vc);
}

#[test]
fn moments_and_ranges() {
    let mut r = Rng::new(1);
    let n = 200_000;
    let z = r.normal_vec(n);
    let mean = z.iter().sum::<f64>() / n as f64;
    let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
        "mean {mean} var {var}"
    );
    let u = r.uniform_vec(n, -2.0, 3.0);
    assert!(u.iter().all(|&x| (-2.0..3.0).contains(&x)));
    let um = u.iter().sum::<f64>() / n as f64;
    assert!((um - 0.5).abs() < 0.02, "{um}");
    let mut counts = [0usize; 7];
    for _ in 0..70_000 {
        counts[r.below(7) as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (9_000..11_000).contains(&c)),
        "{counts:?}"
    );
}
