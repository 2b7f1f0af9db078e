//! The kernels' tile sizes, threads per block and shared-memory formulas, as the launchers
//! use them: kernels/tiles.h, which the kernels include, translated by build.rs (one source
//! for both sides; see the rules at the top of tiles.h). Constants are `usize`; formulas are
//! `const fn`s of `usize` arguments, named as in tiles.h in lower case (`LF_SMEM_BYTES` ->
//! `lf_smem_bytes`; a C `bool` argument is passed as 0 or 1).

// Generated code: the copied C keeps its parentheses, and a constant only the kernels use
// is unused here.
#[allow(unused_parens, dead_code, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/tiles.rs"));
}
pub(crate) use generated::*;

#[cfg(test)]
mod tests {
    use super::*;

    /// The translated formulas give the sizes the launchers computed by hand before tiles.h
    /// (the previous Rust expressions, kept here as the check that the translation keeps C's
    /// meaning).
    #[test]
    fn formulas_keep_their_values() {
        for r in [0usize, 1, 3, 4, 8, 64, 107, 124, 192, 195] {
            for (bm, bn) in [(128, 128), (128, 64), (64, 64)] {
                for kn in [false, true] {
                    let a = bm * (32 + 8);
                    let b = if kn { 32 * (bn + 8) } else { bn * (32 + 8) };
                    let ring = 3 * (a + b) * 2 + 3 * r.next_multiple_of(4) * 36 * 4;
                    let want = ring.max(r * bn * 4) + bm * (r | 1) * 4;
                    assert_eq!(lf_smem_bytes(bm, bn, kn as usize, r), want, "{bm}x{bn} {r}");
                }
            }
        }
        assert_eq!(
            [
                (LF_L_BM, LF_L_BN, LF_L_WM, LF_L_WN),
                (LF_M_BM, LF_M_BN, LF_M_WM, LF_M_WN)
            ]
            .map(|(a, b, c, d)| lf_threads(a, b, c, d)),
            [256, 128]
        );
        assert_eq!(lf_threads(LF_S_BM, LF_S_BN, LF_S_WM, LF_S_WN), 128);
        for dm in [64, 96, 160] {
            let (kt, qt, ds) = if dm > 96 {
                (32, 16, dm + 8)
            } else {
                (64, 32, dm + 8)
            };
            assert_eq!(af_fwd_smem(dm, af_kt(dm)), 2 * (64 * ds + 4 * kt * ds));
            assert_eq!(af_dq_smem(dm, af_kt(dm)), 2 * (2 * 64 * ds + 4 * kt * ds));
            assert_eq!(af_kt_small(dm), kt / 2);
            assert_eq!(
                af_dkv_smem(dm),
                2 * (2 * 64 * ds + 4 * qt * ds) + 4 * 4 * qt
            );
        }
        for (d, dv) in [(1, 1), (40, 40), (64, 80), (255, 256)] {
            let want = 4 * (16 * d + 32 * (d | 1) + 32 * dv + 16 * 33 + 3 * 16);
            assert_eq!(att_fwd_smem(d, dv), want);
            let want = 4 * (16 * d + 16 * dv + 32 * (d | 1) + 32 * (dv | 1) + 16 * 33 + 2 * 16);
            assert_eq!(att_dq_smem(d, dv), want);
            let want = 4 * (16 * d + 16 * dv + 32 * (d | 1) + 32 * (dv | 1) + 2 * 16 * 33 + 2 * 32);
            assert_eq!(att_dkv_smem(d, dv), want);
        }
        assert_eq!(wide_smem(512, 4096), 4 * (512 + 4096));
        assert_eq!((GEMM_BM, GEMM_BN, GEMM_BK, GEMM_THREADS), (64, 64, 16, 64));
    }
}
