//! 2-D convolution: hand-computed forward and input gradient, a naive 7-loop reference,
//! f64 gradient checks of the input gradient on awkward shapes, f32 against f64, the 1x1 fast
//! path against the general path, poisoned inputs, and errors for bad shapes.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Conv2d;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Error, Tensor};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(shape, v.to_vec()).unwrap()
}

fn conv(stride: usize, padding: usize) -> Conv2d {
    Conv2d { stride, padding }
}

/// Direct convolution in f64, straight from the definition:
/// y[n, o, oh, ow] = bias[o] + Σ_{c, i, j} w[o, c, i, j] · x[n, c, oh·s + i - p, ow·s + j - p].
fn naive_conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2d) -> Vec<f64> {
    let [n, c, h, wd] = x.dims().try_into().unwrap();
    let [o, _, k, _] = w.dims().try_into().unwrap();
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let bv = bias.map(|b| b.to_f64_vec());
    let ho = (h + 2 * p.padding - k) / p.stride + 1;
    let wo = (wd + 2 * p.padding - k) / p.stride + 1;
    let mut y = vec![0.0; n * o * ho * wo];
    for ni in 0..n {
        for oi in 0..o {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = bv.as_ref().map_or(0.0, |b| b[oi]);
                    for ci in 0..c {
                        for i in 0..k {
                            for j in 0..k {
                                let ih = (oh * p.stride + i) as isize - p.padding as isize;
                                let iw = (ow * p.stride + j) as isize - p.padding as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let (ih, iw) = (ih as usize, iw as usize);
                                acc += wv[((oi * c + ci) * k + i) * k + j]
                                    * xv[((ni * c + ci) * h + ih) * wd + iw];
                            }
                        }
                    }
                    y[((ni * o + oi) * ho + oh) * wo + ow] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn forward_3x3_pad1_by_hand() {
    let be = CpuBackend::new();
    // x = 1 2 3   w = 1 0  0     y[i, j] = x[i-1, j-1] - x[i, j+1] + 2·x[i+1, j+1]
    //     4 5 6       0 0 -1     (cross-correlation, as PyTorch; 0 outside x)
    //     7 8 9       0 0  2
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = t(&[1, 1, 3, 3], &[1., 0., 0., 0., 0., -1., 0., 0., 2.]);
    // y[0,0] = 0 - 2 + 2·5 = 8     y[0,1] = 0 - 3 + 2·6 = 9     y[0,2] = 0 - 0 + 0 = 0
    // y[1,0] = 0 - 5 + 2·8 = 11    y[1,1] = 1 - 6 + 2·9 = 13    y[1,2] = 2 - 0 + 0 = 2
    // y[2,0] = 0 - 8 + 0 = -8      y[2,1] = 4 - 9 + 0 = -5      y[2,2] = 5 - 0 + 0 = 5
    let want = [8., 9., 0., 11., 13., 2., -8., -5., 5.];
    let y = be.conv2d(&x, &w, None, conv(1, 1), None).unwrap();
    assert_tensor("y", &y, &[1, 1, 3, 3], &want, 1e-15);
    let y32 = be
        .conv2d(&to_f32(&x), &to_f32(&w), None, conv(1, 1), None)
        .unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    assert_tensor("y f32", &y32, &[1, 1, 3, 3], &want, 1e-6);
}

#[test]
fn input_grad_3x3_pad1_by_hand() {
    let be = CpuBackend::new();
    // Same w as above, dy = all ones. dx[a, b] = Σ over taps of w[i, j] when the output
    // pixel (a - i + 1, b - j + 1) exists:
    //   tap (0,0) = 1 reaches dx[a, b] for a <= 1, b <= 1
    //   tap (1,2) = -1 for b >= 1;  tap (2,2) = 2 for a >= 1, b >= 1
    // dx = 1  1-1=0  -1         = 1 0 -1
    //      1  1-1+2  -1+2         1 2  1
    //      0  -1+2   -1+2         0 1  1
    let w = t(&[1, 1, 3, 3], &[1., 0., 0., 0., 0., -1., 0., 0., 2.]);
    let dy = t(&[1, 1, 3, 3], &[1.; 9]);
    let dx = be.conv2d_input_grad(&dy, &w, (3, 3), conv(1, 1)).unwrap();
    assert_tensor(
        "dx",
        &dx,
        &[1, 1, 3, 3],
        &[1., 0., -1., 1., 2., 1., 0., 1., 1.],
        1e-15,
    );
}

#[test]
fn forward_stride2_by_hand() {
    let be = CpuBackend::new();
    // x[i, j] = 4i + j on a 4x4 grid.
    let x = t(&[1, 1, 4, 4], &(0..16).map(f64::from).collect::<Vec<_>>());
    // 3x3 of ones, stride 2, padding 1: Ho = (4 + 2 - 3)/2 + 1 = 2; windows centred on
    // (0,0), (0,2), (2,0), (2,2), clipped to the grid:
    //   rows 0-1, cols 0-1: 0+1+4+5 = 10          rows 0-1, cols 1-3: 1+2+3+5+6+7 = 24
    //   rows 1-3, cols 0-1: 4+5+8+9+12+13 = 51    rows 1-3, cols 1-3: 5+6+7+9+10+11+13+14+15 = 90
    let ones = t(&[1, 1, 3, 3], &[1.; 9]);
    let y = be.conv2d(&x, &ones, None, conv(2, 1), None).unwrap();
    assert_tensor(
        "y 3x3 s2 p1",
        &y,
        &[1, 1, 2, 2],
        &[10., 24., 51., 90.],
        1e-15,
    );
    // 2x2 kernel [[1, 2], [0, -1]], stride 2, no padding:
    // y[a, b] = x[2a, 2b] + 2·x[2a, 2b+1] - x[2a+1, 2b+1]
    //   (0,0): 0 + 2 - 5 = -3    (0,1): 2 + 6 - 7 = 1
    //   (1,0): 8 + 18 - 13 = 13  (1,1): 10 + 22 - 15 = 17
    let w = t(&[1, 1, 2, 2], &[1., 2., 0., -1.]);
    let y = be.conv2d(&x, &w, None, conv(2, 0), None).unwrap();
    assert_tensor("y 2x2 s2", &y, &[1, 1, 2, 2], &[-3., 1., 13., 17.], 1e-15);
    // Its input gradient for dy = [[1, 2], [3, 4]]: each dy value scatters the kernel onto its
    // own 2x2 block (the blocks do not overlap), w·dy[a, b] at rows 2a.., cols 2b..
    let dy = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let dx = be.conv2d_input_grad(&dy, &w, (4, 4), conv(2, 0)).unwrap();
    #[rustfmt::skip]
    let want = [
        1., 2., 2., 4.,
        0., -1., 0., -2.,
        3., 6., 4., 8.,
        0., -3., 0., -4.,
    ];
    assert_tensor("dx 2x2 s2", &dx, &[1, 1, 4, 4], &want, 1e-15);
    // With a 5x5 input the same conv gives the same 2x2 output; row and column 4 are never
    // read, so their gradient is exactly 0.
    let dx5 = be.conv2d_input_grad(&dy, &w, (5, 5), conv(2, 0)).unwrap();
    let mut want5 = vec![0.0; 25];
    for r in 0..4 {
        want5[r * 5..r * 5 + 4].copy_from_slice(&want[r * 4..r * 4 + 4]);
    }
    assert_tensor("dx 2x2 s2 on 5x5", &dx5, &[1, 1, 5, 5], &want5, 0.0);
}

#[test]
fn forward_1x1_with_bias_by_hand() {
    let be = CpuBackend::new();
    // x: channel 0 = [1, 2, 3, 4], channel 1 = [10, 20, 30, 40] on a 2x2 grid.
    let x = t(&[1, 2, 2, 2], &[1., 2., 3., 4., 10., 20., 30., 40.]);
    // w [3, 2, 1, 1]: y0 = x0 + 0.5, y1 = x1 - 1, y2 = 2·x0 - x1 + 3.
    let w = t(&[3, 2, 1, 1], &[1., 0., 0., 1., 2., -1.]);
    let bias = t(&[3], &[0.5, -1., 3.]);
    // y2 = [2 - 10 + 3, 4 - 20 + 3, 6 - 30 + 3, 8 - 40 + 3] = [-5, -13, -21, -29]
    let want = [1.5, 2.5, 3.5, 4.5, 9., 19., 29., 39., -5., -13., -21., -29.];
    let y = be.conv2d(&x, &w, Some(&bias), conv(1, 0), None).unwrap();
    assert_tensor("y", &y, &[1, 3, 2, 2], &want, 1e-15);
    // dy channel o = o + 1 everywhere: dx_c = Σ_o w[o, c]·(o + 1)
    //   dx_0 = 1·1 + 0·2 + 2·3 = 7;   dx_1 = 0·1 + 1·2 - 1·3 = -1
    let dy = t(
        &[1, 3, 2, 2],
        &[1., 1., 1., 1., 2., 2., 2., 2., 3., 3., 3., 3.],
    );
    let dx = be.conv2d_input_grad(&dy, &w, (2, 2), conv(1, 0)).unwrap();
    assert_tensor(
        "dx",
        &dx,
        &[1, 2, 2, 2],
        &[7., 7., 7., 7., -1., -1., -1., -1.],
        1e-15,
    );
}

#[test]
fn forward_multichannel_batch_by_hand() {
    let be = CpuBackend::new();
    // Two images (the second is twice the first), two input channels, 2x2 kernel, no padding:
    // a 1x1 output that is Σ w·x over the whole image.
    let x1 = [1., 2., 3., 4., 5., 6., 7., 8.];
    let x: Vec<f64> = x1
        .iter()
        .copied()
        .chain(x1.iter().map(|v| 2. * v))
        .collect();
    let x = t(&[2, 2, 2, 2], &x);
    // Output 0: channel 0 taps [1, 0, 0, 1], channel 1 taps [0, -1, 1, 0]:
    //   1 + 4 - 6 + 7 = 6. Output 1: all ones: 1 + ... + 8 = 36. Second image: 12 and 72.
    let w = t(
        &[2, 2, 2, 2],
        &[
            1., 0., 0., 1., 0., -1., 1., 0., 1., 1., 1., 1., 1., 1., 1., 1.,
        ],
    );
    let bias = t(&[2], &[0.25, -0.5]);
    let y = be.conv2d(&x, &w, Some(&bias), conv(1, 0), None).unwrap();
    assert_tensor("y", &y, &[2, 2, 1, 1], &[6.25, 35.5, 12.25, 71.5], 1e-15);
}

#[test]
fn matches_naive_reference() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(1);
    // (n, c, o, h, w, k, stride, padding)
    let cases = [
        (2, 3, 5, 7, 9, 3, 1, 1),
        (2, 3, 5, 7, 9, 3, 2, 1),
        (1, 4, 3, 5, 5, 3, 2, 1),
        (1, 4, 3, 8, 6, 3, 2, 1),
        (2, 3, 4, 6, 7, 3, 1, 0),
        (1, 5, 2, 9, 4, 3, 2, 0),
        (2, 6, 7, 5, 3, 1, 1, 0),
        (1, 3, 2, 7, 6, 1, 2, 0),
        (1, 3, 2, 4, 5, 1, 1, 1),
        (1, 2, 3, 6, 6, 2, 2, 1),
        (1, 2, 3, 3, 4, 5, 1, 2),
        (1, 2, 2, 2, 2, 3, 1, 2),
    ];
    for (n, c, o, h, wd, k, s, p) in cases {
        let x = randn(&mut rng, &[n, c, h, wd]);
        let w = randn(&mut rng, &[o, c, k, k]);
        let b = randn(&mut rng, &[o]);
        let what = format!("n{n} c{c} o{o} {h}x{wd} k{k} s{s} p{p}");
        for bias in [None, Some(&b)] {
            let y = be.conv2d(&x, &w, bias, conv(s, p), None).unwrap();
            let want = naive_conv(&x, &w, bias, conv(s, p));
            let ho = (h + 2 * p - k) / s + 1;
            let wo = (wd + 2 * p - k) / s + 1;
            assert_eq!(y.dims(), [n, o, ho, wo], "{what}");
            assert_close(&what, &y.to_f64_vec(), &want, 1e-12, 1e-12);
        }
    }
}

/// Gradient check of conv2d_input_grad as the gradient of conv2d with respect to x.
#[allow(clippy::too_many_arguments)]
fn check_input_grad(
    name: &str,
    n: usize,
    c: usize,
    o: usize,
    (h, wd): (usize, usize),
    k: usize,
    p: Conv2d,
) {
    let be = CpuBackend::new();
    let mut rng = Rng::new(name.len() as u64);
    let x = randn(&mut rng, &[n, c, h, wd]);
    let w = randn(&mut rng, &[o, c, k, k]);
    let b = randn(&mut rng, &[o]);
    gradcheck(
        name,
        &[x],
        &[0],
        400,
        |xs| be.conv2d(&xs[0], &w, Some(&b), p, None).unwrap(),
        |_, dy| vec![be.conv2d_input_grad(dy, &w, (h, wd), p).unwrap()],
    );
}

#[test]
fn gradcheck_3x3_stride1_pad1() {
    check_input_grad("conv 3x3 s1 p1 3->5 N2 6x7", 2, 3, 5, (6, 7), 3, conv(1, 1));
}

#[test]
fn gradcheck_3x3_stride2_odd() {
    check_input_grad("conv 3x3 s2 p1 3->5 N2 7x9", 2, 3, 5, (7, 9), 3, conv(2, 1));
    check_input_grad("conv 3x3 s2 p1 5->3 N1 5x5", 1, 5, 3, (5, 5), 3, conv(2, 1));
}

#[test]
fn gradcheck_3x3_stride2_even() {
    check_input_grad("conv 3x3 s2 p1 3->5 N2 8x6", 2, 3, 5, (8, 6), 3, conv(2, 1));
    check_input_grad("conv 3x3 s2 p0 3->4 N1 8x8", 1, 3, 4, (8, 8), 3, conv(2, 0));
}

#[test]
fn gradcheck_3x3_no_padding() {
    check_input_grad("conv 3x3 s1 p0 3->5 N2 5x6", 2, 3, 5, (5, 6), 3, conv(1, 0));
}

#[test]
fn gradcheck_1x1() {
    // The fast path (stride 1, no padding) and the general path with a 1x1 kernel.
    check_input_grad("conv 1x1 s1 p0 3->5 N2 4x5", 2, 3, 5, (4, 5), 1, conv(1, 0));
    check_input_grad("conv 1x1 s2 p0 3->5 N2 5x7", 2, 3, 5, (5, 7), 1, conv(2, 0));
    check_input_grad("conv 1x1 s1 p1 5->3 N1 3x4", 1, 5, 3, (3, 4), 1, conv(1, 1));
}

#[test]
fn gradcheck_other_kernels() {
    check_input_grad("conv 2x2 s2 p0 3->5 N1 7x5", 1, 3, 5, (7, 5), 2, conv(2, 0));
    check_input_grad("conv 5x5 s1 p2 3->2 N1 4x6", 1, 3, 2, (4, 6), 5, conv(1, 2));
}

/// The f32 path agrees with the f64 path (which the gradient checks trust).
#[test]
fn f32_matches_f64() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, &[2, 32, 17, 13]);
    let w = randn(&mut rng, &[48, 32, 3, 3]);
    let b = randn(&mut rng, &[48]);
    for p in [conv(1, 1), conv(2, 1)] {
        let y64 = be.conv2d(&x, &w, Some(&b), p, None).unwrap();
        let y32 = be
            .conv2d(&to_f32(&x), &to_f32(&w), Some(&to_f32(&b)), p, None)
            .unwrap();
        assert_eq!(y32.dtype(), DType::F32);
        assert_eq!(y32.dims(), y64.dims());
        let what = format!("y {p:?}");
        assert_close(&what, &y32.to_f64_vec(), &y64.to_f64_vec(), 1e-4, 1e-4);

        let dy = randn(&mut rng, y64.dims());
        let dx64 = be.conv2d_input_grad(&dy, &w, (17, 13), p).unwrap();
        let dx32 = be
            .conv2d_input_grad(&to_f32(&dy), &to_f32(&w), (17, 13), p)
            .unwrap();
        assert_eq!(dx32.dtype(), DType::F32);
        let what = format!("dx {p:?}");
        assert_close(&what, &dx32.to_f64_vec(), &dx64.to_f64_vec(), 1e-4, 1e-4);
    }
}

/// The 1x1 fast path (no im2col) against the general path: the same weights placed at the
/// centre of an otherwise zero 3x3 kernel with padding 1 compute the same map.
#[test]
fn fast_1x1_matches_general_path() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(4);
    let (n, c, o, h, wd) = (2, 7, 5, 6, 9);
    let x = randn(&mut rng, &[n, c, h, wd]);
    let w1 = randn(&mut rng, &[o, c, 1, 1]);
    let b = randn(&mut rng, &[o]);
    let mut w3v = vec![0.0; o * c * 9];
    for (oc, &v) in w1.to_f64_vec().iter().enumerate() {
        w3v[oc * 9 + 4] = v;
    }
    let w3 = t(&[o, c, 3, 3], &w3v);
    let fast = be.conv2d(&x, &w1, Some(&b), conv(1, 0), None).unwrap();
    let general = be.conv2d(&x, &w3, Some(&b), conv(1, 1), None).unwrap();
    assert_close("y", &fast.to_f64_vec(), &general.to_f64_vec(), 1e-13, 1e-13);
    assert_close(
        "y vs naive",
        &fast.to_f64_vec(),
        &naive_conv(&x, &w1, Some(&b), conv(1, 0)),
        1e-13,
        1e-13,
    );
    let dy = randn(&mut rng, fast.dims());
    let fast = be.conv2d_input_grad(&dy, &w1, (h, wd), conv(1, 0)).unwrap();
    let general = be.conv2d_input_grad(&dy, &w3, (h, wd), conv(1, 1)).unwrap();
    assert_close(
        "dx",
        &fast.to_f64_vec(),
        &general.to_f64_vec(),
        1e-13,
        1e-13,
    );
    // And in f32.
    let fast = be
        .conv2d(&to_f32(&x), &to_f32(&w1), None, conv(1, 0), None)
        .unwrap();
    let general = be
        .conv2d(&to_f32(&x), &to_f32(&w3), None, conv(1, 1), None)
        .unwrap();
    assert_close(
        "y f32",
        &fast.to_f64_vec(),
        &general.to_f64_vec(),
        1e-5,
        1e-5,
    );
}

/// Outputs never depend on stale or unread memory: NaN in a batch neighbour or in pixels that
/// no window reads does not leak, and pixels no window reads get a gradient of exactly 0.
#[test]
fn poison_does_not_leak() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(5);
    for (k, p) in [(3, conv(1, 1)), (3, conv(2, 1)), (1, conv(1, 0))] {
        let (c, o, h, wd) = (3, 4, 7, 6);
        let w = randn(&mut rng, &[o, c, k, k]);
        let img = rng.normal_vec(c * h * wd);
        let mut xv = vec![f64::NAN; c * h * wd];
        xv.extend(&img);
        let x = t(&[2, c, h, wd], &xv);
        let alone = t(&[1, c, h, wd], &img);
        let y = be.conv2d(&x, &w, None, p, None).unwrap().to_f64_vec();
        let y1t = be.conv2d(&alone, &w, None, p, None).unwrap();
        let y1 = y1t.to_f64_vec();
        assert!(y[..y.len() / 2].iter().all(|v| v.is_nan()), "{p:?}");
        assert_eq!(
            &y[y.len() / 2..],
            &y1[..],
            "{p:?}: image 1 after a NaN image"
        );

        let out = y1.len();
        let dy1 = rng.normal_vec(out);
        let mut dyv = vec![f64::NAN; out];
        dyv.extend(&dy1);
        let (ho, wo) = (y1t.dims()[2], y1t.dims()[3]);
        let dy = t(&[2, o, ho, wo], &dyv);
        let dy_alone = t(&[1, o, ho, wo], &dy1);
        let dx = be
            .conv2d_input_grad(&dy, &w, (h, wd), p)
            .unwrap()
            .to_f64_vec();
        let dx1 = be
            .conv2d_input_grad(&dy_alone, &w, (h, wd), p)
            .unwrap()
            .to_f64_vec();
        assert_eq!(&dx[dx.len() / 2..], &dx1[..], "{p:?}: dx of image 1");
        // Same call twice, same bits.
        let again = be
            .conv2d_input_grad(&dy_alone, &w, (h, wd), p)
            .unwrap()
            .to_f64_vec();
        assert_eq!(dx1, again);
    }

    // 1x1, stride 2 on 5x5 reads only even rows and columns: NaN elsewhere cannot matter,
    // and the gradient there is exactly 0.
    let (h, wd) = (5, 5);
    let mut xv = rng.normal_vec(2 * h * wd);
    for (i, v) in xv.iter_mut().enumerate() {
        let (r, col) = (i / wd % h, i % wd);
        if r % 2 == 1 || col % 2 == 1 {
            *v = f64::NAN;
        }
    }
    let x = t(&[1, 2, h, wd], &xv);
    let w = randn(&mut rng, &[3, 2, 1, 1]);
    let y = be.conv2d(&x, &w, None, conv(2, 0), None).unwrap();
    assert_eq!(y.dims(), [1, 3, 3, 3]);
    assert!(y.to_f64_vec().iter().all(|v| v.is_finite()));
    let dy = randn(&mut rng, &[1, 3, 3, 3]);
    let dx = be.conv2d_input_grad(&dy, &w, (h, wd), conv(2, 0)).unwrap();
    for (i, v) in dx.to_f64_vec().iter().enumerate() {
        let (r, col) = (i / wd % h, i % wd);
        if r % 2 == 1 || col % 2 == 1 {
            assert_eq!(*v, 0.0, "dx element {i}");
        } else {
            assert!(*v != 0.0, "dx element {i}");
        }
    }
}

/// A shape error, whose message must name both shapes.
fn shape_error(e: Error, a: &str, b: &str) {
    let msg = e.to_string();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains(a) && msg.contains(b), "{msg}");
}

#[test]
fn bad_shapes_name_both_shapes() {
    let be = CpuBackend::new();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32);
    let p = conv(1, 1);
    // Channels of x and w differ.
    let e = be.conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 5, 3, 3]), None, p, None);
    shape_error(e.err().unwrap(), "[1, 3, 8, 8]", "[4, 5, 3, 3]");
    // Wrong ranks.
    let e = be.conv2d(&z(&[3, 8, 8]), &z(&[4, 3, 3, 3]), None, p, None);
    shape_error(e.err().unwrap(), "[3, 8, 8]", "[4, 3, 3, 3]");
    let e = be.conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 27]), None, p, None);
    shape_error(e.err().unwrap(), "[4, 27]", "[1, 3, 8, 8]");
    let e = be.conv2d_input_grad(&z(&[4, 8, 8]), &z(&[4, 3, 3, 3]), (8, 8), p);
    shape_error(e.err().unwrap(), "[4, 8, 8]", "[4, 3, 3, 3]");
    // Non-square kernel.
    let e = be.conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 1]), None, p, None);
    shape_error(e.err().unwrap(), "[4, 3, 3, 1]", "[1, 3, 8, 8]");
    // Bias not [O].
    let e = be.conv2d(
        &z(&[1, 3, 8, 8]),
        &z(&[4, 3, 3, 3]),
        Some(&z(&[3])),
        p,
        None,
    );
    shape_error(e.err().unwrap(), "[3]", "[4, 3, 3, 3]");
    // Kernel larger than the padded input.
    let e = be.conv2d(&z(&[1, 1, 2, 2]), &z(&[1, 1, 5, 5]), None, p, None);
    shape_error(e.err().unwrap(), "[1, 1, 2, 2]", "[1, 1, 5, 5]");
    // dy's channels are not w's outputs.
    let e = be.conv2d_input_grad(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 3]), (8, 8), p);
    shape_error(e.err().unwrap(), "[1, 3, 8, 8]", "[4, 3, 3, 3]");
    // dy is not the output size of input_hw: 3x3, p1, s1 on 9x9 gives 9x9, not 8x8.
    let e = be.conv2d_input_grad(&z(&[1, 4, 8, 8]), &z(&[4, 3, 3, 3]), (9, 9), p);
    shape_error(e.err().unwrap(), "[1, 4, 8, 8]", "[1, 3, 9, 9]");
    // Stride 2: 7x7 and 8x8 both give 4x4; 9x9 gives 5x5.
    let s2 = conv(2, 1);
    let dy = z(&[1, 4, 4, 4]);
    let w = z(&[4, 3, 3, 3]);
    assert_eq!(
        be.conv2d_input_grad(&dy, &w, (7, 8), s2).unwrap().dims(),
        [1, 3, 7, 8]
    );
    assert_eq!(
        be.conv2d_input_grad(&dy, &w, (8, 7), s2).unwrap().dims(),
        [1, 3, 8, 7]
    );
    let e = be.conv2d_input_grad(&dy, &w, (9, 8), s2);
    shape_error(e.err().unwrap(), "[1, 4, 4, 4]", "[1, 3, 9, 8]");
    // input_hw too small for the kernel.
    let e = be.conv2d_input_grad(&z(&[1, 1, 1, 1]), &z(&[1, 1, 5, 5]), (1, 1), conv(1, 0));
    shape_error(e.err().unwrap(), "[1, 1, 1, 1]", "[1, 1, 1, 1]");
}

#[test]
fn bad_values_and_dtypes_are_errors() {
    let be = CpuBackend::new();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32);
    for e in [
        be.conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 3]), None, conv(0, 1), None)
            .err(),
        be.conv2d_input_grad(&z(&[1, 4, 8, 8]), &z(&[4, 3, 3, 3]), (8, 8), conv(0, 1))
            .err(),
    ] {
        let e = e.expect("stride 0 must fail");
        let msg = e.to_string();
        assert!(matches!(e, Error::BadValue { .. }), "{msg}");
        assert!(msg.contains("stride"), "{msg}");
    }
    // A padding so large that sizes overflow is refused, not a panic.
    let e = be
        .conv2d(
            &z(&[1, 3, 8, 8]),
            &z(&[4, 3, 3, 3]),
            None,
            conv(1, usize::MAX / 2),
            None,
        )
        .err()
        .unwrap();
    assert!(matches!(e, Error::BadValue { .. }), "{e}");
    // Mixed dtypes and f16.
    let w64 = Tensor::zeros([4, 3, 3, 3], DType::F64);
    let msg = be
        .conv2d(&z(&[1, 3, 8, 8]), &w64, None, conv(1, 1), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("w") && msg.contains("f64") && msg.contains("f32"),
        "{msg}"
    );
    let x16 = Tensor::zeros([1, 3, 8, 8], DType::F16);
    let msg = be
        .conv2d(&x16, &z(&[4, 3, 3, 3]), None, conv(1, 1), None)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("f16") && msg.contains("cast"), "{msg}");
    let bias64 = Tensor::zeros([4], DType::F64);
    let msg = be
        .conv2d(
            &z(&[1, 3, 8, 8]),
            &z(&[4, 3, 3, 3]),
            Some(&bias64),
            conv(1, 1),
            None,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("bias"), "{msg}");
}

/// Empty batch, channels or outputs give empty or zero results, no panic.
#[test]
fn empty_sizes() {
    let be = CpuBackend::new();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64);
    let y = be
        .conv2d(&z(&[0, 3, 5, 5]), &z(&[4, 3, 3, 3]), None, conv(1, 1), None)
        .unwrap();
    assert_eq!(y.dims(), [0, 4, 5, 5]);
    let y = be
        .conv2d(&z(&[2, 3, 5, 5]), &z(&[0, 3, 3, 3]), None, conv(2, 1), None)
        .unwrap();
    assert_eq!(y.dims(), [2, 0, 3, 3]);
    // No input channels: the output is the bias alone.
    let b = t(&[2], &[1.5, -2.]);
    let y = be
        .conv2d(
            &z(&[1, 0, 2, 2]),
            &z(&[2, 0, 3, 3]),
            Some(&b),
            conv(1, 1),
            None,
        )
        .unwrap();
    assert_tensor(
        "bias only",
        &y,
        &[1, 2, 2, 2],
        &[1.5, 1.5, 1.5, 1.5, -2., -2., -2., -2.],
        0.0,
    );
    let dx = be
        .conv2d_input_grad(&z(&[1, 0, 3, 3]), &z(&[0, 2, 3, 3]), (5, 5), conv(2, 1))
        .unwrap();
    assert_tensor("dx no outputs", &dx, &[1, 2, 5, 5], &[0.0; 50], 0.0);
}
