//! What [`super::OptimOps::adafactor_step`] takes: the flat buffer cut into its tensors
//! (Adafactor's moments and its per-tensor RMS need each tensor's shape), the state buffers
//! and the step's settings.
//!
//! transformers' Adafactor factors the second moment of a tensor with two or more dims over
//! its last two: a tensor [d0, .., dk-2, R, C] is `batch` = d0·..·dk-2 matrices of R x C, each
//! with a row moment (R values: the mean over its C columns of g² + eps1) and a column moment
//! (C values: the mean over its R rows); a 1-D tensor keeps a full moment.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// One tensor of the flat buffer: `len` values from `offset`. Factored (`rows > 0`): `batch`
/// matrices of `rows` x `cols`, whose row moments start at `row_at` of the row buffer
/// (batch·rows values), column moments at `col_at` of the column buffer (batch·cols) and
/// the means of their row moments at `mean_at` of the scratch (batch). Unfactored (a 1-D
/// tensor, `rows` = 0): its full moment at `v_at` of the unfactored buffer (len values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdafactorSegment {
    pub offset: usize,
    pub len: usize,
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_at: usize,
    pub col_at: usize,
    pub mean_at: usize,
    pub v_at: usize,
}

/// i32 words per segment in the device table, in the field order of [`AdafactorSegment`].
pub const SEGMENT_WORDS: usize = 9;

/// The segments of one flat buffer, on the host and (for the CUDA kernel) as a device table
/// of [`SEGMENT_WORDS`] little-endian i32 per segment, stored as bytes (u8).
#[derive(Clone, Debug)]
pub struct AdafactorTable {
    pub segments: Vec<AdafactorSegment>,
    pub device: Tensor,
    /// The lengths of the row, column, scratch and unfactored buffers.
    pub rows_len: usize,
    pub cols_len: usize,
    pub means_len: usize,
    pub v_len: usize,
}

impl AdafactorTable {
    /// The table of tensors of `shapes`, laid end to end.
    pub fn new(be: &dyn Backend, shapes: &[Vec<usize>]) -> Result<AdafactorTable> {
        let (mut offset, mut rows_len, mut cols_len, mut means_len, mut v_len) = (0, 0, 0, 0, 0);
        let mut segments = Vec::with_capacity(shapes.len());
        for dims in shapes {
            let len: usize = dims.iter().product();
            let mut s = AdafactorSegment {
                offset,
                len,
                batch: 0,
                rows: 0,
                cols: 0,
                row_at: rows_len,
                col_at: cols_len,
                mean_at: means_len,
                v_at: v_len,
            };
            if let [lead @ .., r, c] = dims.as_slice() {
                s.batch = lead.iter().product();
                (s.rows, s.cols) = (*r, *c);
                rows_len += s.batch * r;
                cols_len += s.batch * c;
                means_len += s.batch;
            } else {
                v_len += len;
            }
            offset += len;
            segments.push(s);
        }
        if offset > i32::MAX as usize {
            return Err(Error::BadValue {
                op: "adafactor",
                name: "params",
                value: format!("{offset} parameters"),
                expected: format!("at most {} parameters per group", i32::MAX),
            });
        }
        let words: Vec<f32> = segments
            .iter()
            .flat_map(|s| {
                [
                    s.offset, s.len, s.batch, s.rows, s.cols, s.row_at, s.col_at, s.mean_at, s.v_at,
                ]
            })
            .flat_map(|w| (w as i32).to_le_bytes())
            .map(f32::from)
            .collect();
        let device = be.tensor_from_f32(&[words.len()], &words, DType::U8)?;
        Ok(AdafactorTable {
            segments,
            device,
            rows_len,
            cols_len,
            means_len,
            v_len,
        })
    }

    /// The parameters the table covers.
    pub fn numel(&self) -> usize {
        self.segments.last().map_or(0, |s| s.offset + s.len)
    }
}

/// Adafactor's state buffers (f32): the row and column moments of the factored tensors, the
/// full moment of the others, the first moment (with beta1) and the scratch of the row
/// moments' means. A buffer of no values is `None`.
pub struct AdafactorBuffers<'a> {
    pub row: Option<&'a mut Tensor>,
    pub col: Option<&'a mut Tensor>,
    pub v: Option<&'a mut Tensor>,
    pub m: Option<&'a mut Tensor>,
    pub row_mean: Option<&'a mut Tensor>,
}

/// One Adafactor step (transformers' `Adafactor.step`), per tensor of the table: with
/// g = grad_scale·grad and rms(x) = sqrt(mean(x²)) over the tensor,
///
///   lr = rel_step · max(eps2, rms(p))   (rel_step alone without scale_parameter)
///   factored: row ← β·row + (1−β)·mean_cols(g² + eps1); col ← β·col + (1−β)·mean_rows(g² + eps1)
///             u = g · rsqrt(row / mean(row)) · rsqrt(col)   (per matrix)
///   else:     v ← β·v + (1−β)·(g² + eps1);  u = g · rsqrt(v)
///   u ← u · lr / max(1, rms(u)/clip_threshold)
///   with beta1: m ← β1·m + (1−β1)·u;  u = m
///   p ← (p + (−weight_decay·lr)·p) − u   (transformers' order)
///
/// with β = beta2t = 1 − k^decay_rate at step k (1-based).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorStep {
    /// The relative step size (relative_step) or the scheduled rate.
    pub rel_step: f64,
    pub scale_parameter: bool,
    pub eps1: f64,
    pub eps2: f64,
    pub clip_threshold: f64,
    pub beta2t: f64,
    pub beta1: Option<f64>,
    pub weight_decay: f64,
    /// Multiplies every gradient before use: 1/loss scale times the clipping coefficient.
    pub grad_scale: f64,
}

impl AdafactorStep {
    /// The rate of a tensor whose parameters have RMS `rms_p`.
    pub fn lr(&self, rms_p: f64) -> f64 {
        if self.scale_parameter {
            self.rel_step * self.eps2.max(rms_p)
        } else {
            self.rel_step
        }
    }
}
