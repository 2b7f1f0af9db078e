//! bitsandbytes' 8-bit blockwise quantisation of optimizer state, as its CUDA optimizer
//! kernels do it (csrc/kernels.cu: `kOptimizerStatic8bit{1,2}StateBlockwise`, `quantize_2D`):
//!
//! - a state tensor is cut into blocks of [`QUANT_BLOCK`] values; each block keeps its absmax
//!   (f32) and each value a byte code c, the value being `map[c]·absmax`;
//! - the maps are bitsandbytes' dynamic maps (`create_dynamic_map`): [`dynamic_map`]`(true)`
//!   (signed, for first moments) and [`dynamic_map`]`(false)` (unsigned, for Adam's second
//!   moment), 256 sorted f32 values in [-1, 1] (signed) or [0, 1];
//! - a value x/absmax is coded by [`quantize`]: bitsandbytes' search over the sorted map
//!   (its first step through the three quadrant pivots map[63], map[127], map[191]), then the
//!   nearer of the two neighbours by their midpoint.
//!
//! The CPU backend's 8-bit optimizers (cpu/optim8.rs) call these; kernels/optim8.cu is the same
//! search in CUDA.

/// Values per quantisation block: bitsandbytes' blockwise optimizers' block size
/// (kernels/tiles.h).
pub const QUANT_BLOCK: usize = crate::backend::cuda::tiles::QUANT_BLOCK;

/// Blocks of [`QUANT_BLOCK`] for `n` values (the last one may be partial).
pub fn quant_blocks(n: usize) -> usize {
    n.div_ceil(QUANT_BLOCK)
}

/// bitsandbytes' dynamic quantisation map (`create_dynamic_map(signed, 7, 8)`), computed in
/// f32 as it is there with torch: for each exponent i in 0..7, the midpoints of
/// linspace(0.1, 1, k) (k = 2^i + 1 signed, 2^(i+1) + 1 unsigned) times 10^(i−6), and their
/// negatives when signed; then 0 and 1; sorted.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7i32 {
        let k = if signed {
            (1 << i) + 1
        } else {
            (1 << (i + 1)) + 1
        };
        let b = linspace(0.1, 1.0, k);
        let scale = 10f64.powi(i - 6) as f32;
        let means: Vec<f32> = b.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|&m| scale * m));
        if signed {
            data.extend(means.iter().map(|&m| -scale * m));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data.try_into()
        .expect("the dynamic map has 256 entries by construction")
}

/// torch.linspace(start, end, steps) in f32 as torch's CPU kernel computes it (its AVX2 and
/// AVX512 builds, where `start + step·i` compiles to a fused multiply-add): the first half
/// counted up from `start`, the second down from `end`, by step (end − start)/(steps − 1).
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// The code of `x` (a value divided by its block's absmax) in the sorted 256-entry `map`:
/// bitsandbytes' `quantize_2D` (the lower bound is −1 for a signed map, 0 for an unsigned one).
/// A NaN x (0/0 in an all-zero block) takes the path of "not greater" at every step, as there.
pub fn quantize(map: &[f32; 256], signed: bool, x: f32) -> u8 {
    let quadrants = [map[63], map[127], map[191]];
    let mut pivot: i32 = 127;
    let mut upper_pivot: i32 = 255;
    let mut lower_pivot: i32 = 0;
    let mut lower = if signed { -1.0f32 } else { 0.0 };
    let mut upper = 1.0f32;
    let mut val = quadrants[1];
    let mut local_pivot: i32 = 1;
    let mut offset: i32 = 1;
    let mut i = 64;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
            local_pivot += offset;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
            local_pivot -= offset;
        }
        val = if i >= 64 {
            quadrants[local_pivot as usize]
        } else {
            map[pivot as usize]
        };
        offset -= 1;
        i >>= 1;
    }
    let code = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    code as u8
}

/// The code of first-moment value `s` scaled by `absmax` in the signed map, with
/// bitsandbytes' sign repair: when the coded value's sign differs from `s`'s, the code moves
/// one step towards `s` (wrapping as an unsigned char does).
pub fn quantize_signed(map: &[f32; 256], s: f32, absmax: f32) -> u8 {
    let c = quantize(map, true, s / absmax);
    if map[c as usize].is_sign_negative() != s.is_sign_negative() {
        if s > 0.0 {
            c.wrapping_add(1)
        } else {
            c.wrapping_sub(1)
        }
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_and_span_their_range() {
        let s = dynamic_map(true);
        let u = dynamic_map(false);
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "signed map strictly sorted"
        );
        assert!(
            u.windows(2).all(|w| w[0] < w[1]),
            "unsigned map strictly sorted"
        );
        assert_eq!((s[255], u[255], u[0]), (1.0, 1.0, 0.0));
        assert!(s[0] < -0.99 && s[0] > -1.0, "{}", s[0]);
        assert_eq!(s.iter().filter(|&&v| v < 0.0).count(), 127);
    }

    /// bitsandbytes' search visits even pivots only and picks among the last pivot and the
    /// two that bracket it, so its code is the nearest map value or one next to it.
    #[test]
    fn quantize_picks_a_code_next_to_the_value() {
        for signed in [true, false] {
            let map = dynamic_map(signed);
            let lo = if signed { -1.0 } else { 0.0 };
            let mut exact = 0;
            for k in 0..=20000 {
                let x = lo + (1.0 - lo) * k as f32 / 20000.0;
                let c = quantize(&map, signed, x) as i32;
                let best = (0..256)
                    .min_by(|&a, &b| (map[a] - x).abs().total_cmp(&(map[b] - x).abs()))
                    .unwrap() as i32;
                assert!(
                    (c - best).abs() <= 1,
                    "signed={signed} x={x}: code {c} ({}) vs nearest {best} ({})",
                    map[c as usize],
                    map[best as usize]
                );
                exact += (c == best) as usize;
            }
            assert!(exact > 19000, "signed={signed}: {exact} of 20001 nearest");
        }
        // Out of range and NaN (0/0 of an all-zero block) go to the ends.
        let s = dynamic_map(true);
        assert_eq!(quantize(&s, true, 2.0), 255);
        assert_eq!(quantize(&s, true, f32::NAN), 0);
        assert_eq!(quantize_signed(&s, 0.0, 0.0), 255);
    }
}
