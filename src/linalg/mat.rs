//! A row-major f64 matrix and the products the SVDs need (the CPU backend's dgemm, which
//! takes strides, so a transposed operand costs no copy).

use crate::backend::cpu::gemm::{gemm as cpu_gemm, Mat as View};

/// A rows × cols matrix, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// `data` (row-major, rows × cols elements) as a matrix.
    ///
    /// # Panics
    /// When `data` does not hold rows × cols elements (a caller's bug).
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Mat {
        assert_eq!(data.len(), rows * cols, "Mat::from_vec: {rows}x{cols}");
        Mat { rows, cols, data }
    }

    pub fn identity(n: usize) -> Mat {
        let mut m = Mat::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        t
    }

    /// The first `k` columns.
    pub fn first_cols(&self, k: usize) -> Mat {
        let mut m = Mat::zeros(self.rows, k);
        for r in 0..self.rows {
            m.data[r * k..(r + 1) * k]
                .copy_from_slice(&self.data[r * self.cols..r * self.cols + k]);
        }
        m
    }

    /// The first `k` rows.
    pub fn first_rows(&self, k: usize) -> Mat {
        Mat::from_vec(k, self.cols, self.data[..k * self.cols].to_vec())
    }

    /// Frobenius norm.
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// self · other.
    pub fn matmul(&self, other: &Mat) -> Mat {
        gemm(self, false, other, false)
    }

    /// selfᵀ · other.
    pub fn t_matmul(&self, other: &Mat) -> Mat {
        gemm(self, true, other, false)
    }

    /// self · otherᵀ.
    pub fn matmul_t(&self, other: &Mat) -> Mat {
        gemm(self, false, other, true)
    }
}

/// op(a) · op(b), op = transpose when asked, through the CPU backend's parallel dgemm.
fn gemm(a: &Mat, ta: bool, b: &Mat, tb: bool) -> Mat {
    let (va, vb) = (view(a, ta), view(b, tb));
    let mut c = Mat::zeros(va.rows, vb.cols);
    cpu_gemm(1.0, va, vb, 0.0, &mut c.data, vb.cols);
    c
}

fn view(m: &Mat, t: bool) -> View<'_, f64> {
    let v = View::new(&m.data, m.rows, m.cols);
    if t {
        v.t()
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposes_agree_with_a_loop() {
        let a = Mat::from_vec(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = Mat::from_vec(3, 2, vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        assert_eq!(a.matmul(&b).data, vec![58.0, 64.0, 139.0, 154.0]);
        assert_eq!(
            a.transpose().t_matmul(&b).data,
            vec![58.0, 64.0, 139.0, 154.0]
        );
        assert_eq!(
            a.matmul_t(&b.transpose()).data,
            vec![58.0, 64.0, 139.0, 154.0]
        );
    }
}
