//! The kernel machinery itself, in the emulator and (when present) on the GPU: block
//! reductions over 1..32 warps, warp shuffles, mma.sync m16n8k16 through ldmatrix (plain and
//! transposed), and cp.async with a zero-filled tail, each against a CPU computation.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

mod common;

use common::cuda::*;
use lorafuse::backend::cuda::selftest;
use lorafuse::rng::Rng;
use lorafuse::DType;

#[test]
fn block_reductions_over_every_warp_count() {
    let mut rng = Rng::new(1);
    for e in engines(DType::F32) {
        for (rows, cols, block) in [(3, 1, 32), (2, 97, 96), (5, 1000, 256), (2, 3001, 1024)] {
            let x = nonzero(&mut rng, rows * cols);
            let got = selftest::block_reduce(&e.be, &x, rows, cols, block).unwrap();
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                let sum: f64 = row.iter().map(|&v| v as f64).sum();
                let max = row.iter().cloned().fold(f32::MIN, f32::max);
                assert!(
                    (got[2 * r] as f64 - sum).abs() < 1e-4 * (1.0 + sum.abs()),
                    "{rows}x{cols}/{block}: sum {} vs {sum}",
                    got[2 * r]
                );
                assert_eq!(got[2 * r + 1], max, "{rows}x{cols}/{block}: max");
            }
        }
    }
}

#[test]
fn warp_shuffles() {
    let mut rng = Rng::new(2);
    for e in engines(DType::F32) {
        let x = nonzero(&mut rng, 128);
        let y = selftest::shuffles(&e.be, &x, 64).unwrap();
        for i in 0..128 {
            let (w, l) = (i / 32 * 32, i % 32);
            let down = if l + 1 < 32 { x[i + 1] } else { x[i] };
            assert_eq!(y[3 * i], down, "shfl_down at {i}");
            assert_eq!(y[3 * i + 1], x[w + (l ^ 5)], "shfl_xor at {i}");
            assert_eq!(y[3 * i + 2], x[w + 7], "shfl at {i}");
        }
    }
}

#[test]
fn mma_through_ldmatrix_plain_and_transposed() {
    let mut rng = Rng::new(3);
    for e in engines(DType::F32) {
        let a = round_f16(&nonzero(&mut rng, 256));
        let bt = round_f16(&nonzero(&mut rng, 128));
        let c = nonzero(&mut rng, 128);
        let mut want = vec![0f64; 128];
        for m in 0..16 {
            for n in 0..8 {
                want[m * 8 + n] = c[m * 8 + n] as f64
                    + (0..16)
                        .map(|k| a[m * 16 + k] as f64 * bt[n * 16 + k] as f64)
                        .sum::<f64>();
            }
        }
        let at: Vec<f32> = (0..256).map(|i| a[(i % 16) * 16 + i / 16]).collect();
        for (trans, input) in [(false, &a), (true, &at)] {
            let d = selftest::mma_tile(&e.be, input, &bt, &c, trans).unwrap();
            for i in 0..128 {
                assert!(
                    (d[i] as f64 - want[i]).abs() < 1e-4,
                    "trans {trans}: D[{}][{}] = {} vs {}",
                    i / 8,
                    i % 8,
                    d[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn cp_async_copies_whole_chunks_and_zero_fills_the_tail() {
    let mut rng = Rng::new(4);
    for e in engines(DType::F32) {
        let x = nonzero(&mut rng, 256);
        for n in [256, 101, 4, 0] {
            let y = selftest::cp_async_copy(&e.be, &x, n).unwrap();
            let whole = n / 4 * 4;
            for i in 0..256 {
                let want = if i < whole { x[i] } else { 0.0 };
                assert_eq!(y[i], want, "n {n}, element {i}");
            }
        }
    }
}

#[test]
fn the_emulator_exposes_a_missing_syncthreads() {
    // Under ThreadSanitizer the same kernel is (rightly) a reported race: skip it there.
    if std::env::var_os("LORAFUSE_EMU_TSAN").is_some() {
        println!("skipped under ThreadSanitizer: this kernel races on purpose");
        return;
    }
    for e in engines(DType::F32) {
        if e.gpu {
            continue; // undefined behaviour on real hardware: the emulator's check only
        }
        let y = selftest::missing_barrier(&e.be, 2, 64).unwrap();
        // Ascending order in block 0: thread t reads s[t+1] before thread t+1 wrote it;
        // descending in block 1: thread 63 reads s[0] before thread 0 wrote it.
        assert!(
            y[..63].iter().all(|v| v.is_nan()),
            "block 0: {:?}",
            &y[..64]
        );
        assert!(y[64 + 63].is_nan(), "block 1: {:?}", &y[64..]);
    }
}
