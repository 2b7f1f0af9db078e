//! The numpy grid functions diffusers' schedulers build their timesteps and sigmas with, in
//! f64: `linspace`, `interp`, and the log-σ interpolation `_sigma_to_t`.

/// np.linspace(start, stop, num): start + i·(stop − start)/(num − 1), the last exactly `stop`;
/// one value gives `[start]`.
pub(super) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| {
            if i + 1 == num {
                stop
            } else {
                start + i as f64 * step
            }
        })
        .collect()
}

/// np.linspace(0, T−1, n)[::-1]: n values from T−1 down to 0.
pub(super) fn linspace_desc(t_max: usize, n: usize) -> Vec<f64> {
    let mut v = linspace(0.0, (t_max - 1) as f64, n);
    v.reverse();
    v
}

/// np.interp(x, 0..len, table): linear between integer points, clamped at both ends.
pub(super) fn interp(x: f64, table: &[f64]) -> f64 {
    let last = table.len().saturating_sub(1);
    if table.is_empty() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return table[0];
    }
    if x >= last as f64 {
        return table[last];
    }
    let i = x.floor() as usize;
    let f = x - i as f64;
    if f == 0.0 {
        table[i]
    } else {
        table[i] + f * (table[i + 1] - table[i])
    }
}

/// diffusers' `_sigma_to_t`: the fractional timestep whose σ is `sigma`, by linear
/// interpolation of ln σ between the two training timesteps around it (`log_sigmas` rising
/// with t), clamped to [0, T−1]. Needs at least two timesteps.
pub(super) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose ln σ is at most ours (0 when none is), at most T−2.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Karras et al.'s schedule (diffusers' `_convert_to_karras`, ρ = 7): n values from
/// `sigma_max` down to `sigma_min`, evenly spaced in σ^(1/ρ).
pub(super) fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / RHO), sigma_max.powf(1.0 / RHO));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(RHO))
        .collect()
}
