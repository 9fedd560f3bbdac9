//! Lowering of a 2-D convolution to the dense matrix it applies to a row-major (C, H, W) input.

use faer::Mat;

use crate::error::{Error, Result};

/// Geometry of a 2-D convolution (no dilation, no groups), as in the JSON model format.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dShape {
    /// Input (C, H, W).
    pub input: [usize; 3],
    /// Kernel (out_channels, in_channels, kh, kw).
    pub kernel: [usize; 4],
    /// Stride (sh, sw), both >= 1.
    pub stride: [usize; 2],
    /// Zero padding (ph, pw) on each side.
    pub padding: [usize; 2],
}

impl Conv2dShape {
    /// Output (C', H', W') = (out_channels, (H + 2 ph - kh) / sh + 1, (W + 2 pw - kw) / sw + 1).
    pub fn output(&self, layer: usize) -> Result<[usize; 3]> {
        let [c, h, w] = self.input;
        let [oc, ic, kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [ph, pw] = self.padding;
        let err = |detail: String| Error::Shape { layer, detail };
        if ic != c {
            return Err(err(format!("kernel has {ic} input channels, input has {c}")));
        }
        if sh == 0 || sw == 0 {
            return Err(err("stride must be >= 1".into()));
        }
        if oc == 0 || kh == 0 || kw == 0 || h == 0 || w == 0 {
            return Err(Error::Empty(format!("conv2d layer {layer} has a zero dimension")));
        }
        if h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(err(format!("kernel {kh}x{kw} larger than padded input {}x{}", h + 2 * ph, w + 2 * pw)));
        }
        Ok([oc, (h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1])
    }
}

/// The dense matrix M (out x in) with M x = conv(x) for x flattened row-major (C, H, W), and the
/// bias repeated over the output positions. `kernel` is flat in (out_c, in_c, kh, kw) order.
pub fn lower_conv2d(shape: &Conv2dShape, kernel: &[f64], bias: &[f64], layer: usize) -> Result<(Mat<f64>, Vec<f64>)> {
    let [oc, oh, ow] = shape.output(layer)?;
    let [c, h, w] = shape.input;
    let [_, _, kh, kw] = shape.kernel;
    let [sh, sw] = shape.stride;
    let [ph, pw] = shape.padding;
    if kernel.len() != oc * c * kh * kw {
        return Err(Error::Shape {
            layer,
            detail: format!("kernel has {} values, expected {}", kernel.len(), oc * c * kh * kw),
        });
    }
    if bias.len() != oc {
        return Err(Error::Shape { layer, detail: format!("bias has {} values, expected {oc}", bias.len()) });
    }
    let mut m = Mat::<f64>::zeros(oc * oh * ow, c * h * w);
    let mut b = vec![0.0; oc * oh * ow];
    for o in 0..oc {
        for y in 0..oh {
            for x in 0..ow {
                let row = (o * oh + y) * ow + x;
                b[row] = bias[o];
                for i in 0..c {
                    for ky in 0..kh {
                        let iy = (y * sh + ky) as isize - ph as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (x * sw + kx) as isize - pw as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let col = (i * h + iy as usize) * w + ix as usize;
                            m[(row, col)] = kernel[((o * c + i) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
        }
    }
    Ok((m, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, written independently of the lowering (loops over input positions).
    fn direct_conv(shape: &Conv2dShape, k: &[f64], bias: &[f64], input: &[f64]) -> Vec<f64> {
        let [c, h, w] = shape.input;
        let [oc, _, kh, kw] = shape.kernel;
        let [oc2, oh, ow] = shape.output(0).unwrap();
        assert_eq!(oc, oc2);
        let mut padded = vec![0.0; c * (h + 2 * shape.padding[0]) * (w + 2 * shape.padding[1])];
        let (hp, wp) = (h + 2 * shape.padding[0], w + 2 * shape.padding[1]);
        for i in 0..c {
            for y in 0..h {
                for x in 0..w {
                    padded[(i * hp + y + shape.padding[0]) * wp + x + shape.padding[1]] = input[(i * h + y) * w + x];
                }
            }
        }
        let mut out = vec![0.0; oc * oh * ow];
        for o in 0..oc {
            for y in 0..oh {
                for x in 0..ow {
                    let mut s = bias[o];
                    for i in 0..c {
                        for a in 0..kh {
                            for b in 0..kw {
                                s += k[((o * c + i) * kh + a) * kw + b]
                                    * padded[(i * hp + y * shape.stride[0] + a) * wp + x * shape.stride[1] + b];
                            }
                        }
                    }
                    out[(o * oh + y) * ow + x] = s;
                }
            }
        }
        out
    }

    #[test]
    fn lowering_matches_direct_convolution() {
        let cases = [
            ([2, 7, 6], [3, 2, 3, 3], [1, 1], [0, 0]),
            ([1, 8, 8], [4, 1, 4, 4], [2, 2], [1, 1]),
            ([3, 5, 9], [2, 3, 2, 4], [2, 3], [1, 2]),
        ];
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        for (input, kernel, stride, padding) in cases {
            let shape = Conv2dShape { input, kernel, stride, padding };
            let k: Vec<f64> = (0..kernel.iter().product::<usize>()).map(|_| rnd()).collect();
            let bias: Vec<f64> = (0..kernel[0]).map(|_| rnd()).collect();
            let x: Vec<f64> = (0..input.iter().product::<usize>()).map(|_| rnd()).collect();
            let (m, b) = lower_conv2d(&shape, &k, &bias, 0).unwrap();
            let expect = direct_conv(&shape, &k, &bias, &x);
            assert_eq!(m.nrows(), expect.len());
            for r in 0..m.nrows() {
                let got: f64 = (0..m.ncols()).map(|j| m[(r, j)] * x[j]).sum::<f64>() + b[r];
                assert!((got - expect[r]).abs() < 1e-12, "row {r}: {got} vs {}", expect[r]);
            }
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let s = Conv2dShape { input: [1, 2, 2], kernel: [1, 1, 5, 5], stride: [1, 1], padding: [0, 0] };
        assert!(matches!(s.output(3), Err(Error::Shape { layer: 3, .. })));
        let s = Conv2dShape { input: [2, 4, 4], kernel: [1, 1, 2, 2], stride: [1, 1], padding: [0, 0] };
        assert!(s.output(0).is_err());
        let s = Conv2dShape { input: [1, 4, 4], kernel: [1, 1, 2, 2], stride: [0, 1], padding: [0, 0] };
        assert!(s.output(0).is_err());
    }
}
