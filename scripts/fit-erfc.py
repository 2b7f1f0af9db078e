#!/usr/bin/env python3
"""The coefficients of src/backend/cpu/vact.rs's erfc: R(t) ≈ erfc(a)·exp(a²) with
t = 1/(1 + P·a), a polynomial of degree 9 in t, fitted on 0 ≤ a ≤ 6 by least squares on the
relative error, reweighted 40 times towards the largest errors (a cheap step towards minimax).
Prints the coefficients (t⁰ first, as f32) and the relative error of R evaluated in f32 by
Horner's rule on a fine grid.

    pip install numpy==2.4.6 mpmath==1.3.0 && python3 scripts/fit-erfc.py

The reference values come from mpmath at 30 digits.
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 30
P, DEGREE, A = 0.4, 9, 6.0


def erfcx(v: float) -> float:
    return float(mp.erfc(v) * mp.exp(v * v))


def main() -> None:
    # Uniform points plus Chebyshev-spaced ones (denser at the ends).
    a = np.concatenate([np.linspace(0, A, 4000), np.cos(np.linspace(0, np.pi, 4000)) * A / 2 + A / 2])
    y = np.array([erfcx(v) for v in a])
    v = np.vander(1 / (1 + P * a), DEGREE + 1, increasing=True) / y[:, None]
    w = np.ones_like(y)
    for _ in range(40):
        c, *_ = np.linalg.lstsq(v * w[:, None], w, rcond=None)
        e = np.abs(v @ c - 1)
        w = w * (1 + 5 * e / e.max())
        w /= w.mean()
    c32 = c.astype(np.float32)
    aa = np.linspace(0, A, 20001).astype(np.float32)
    yy = np.array([erfcx(float(x)) for x in aa])
    t = (np.float32(1) / (np.float32(1) + np.float32(P) * aa)).astype(np.float32)
    r = np.full_like(t, c32[-1])
    for k in range(DEGREE - 1, -1, -1):
        r = (r * t + c32[k]).astype(np.float32)
    print("coefficients (t^0 first):", [float(x) for x in c32])
    print("relative error of R in f32:", float(np.abs(r / yy - 1).max()))


if __name__ == "__main__":
    main()
