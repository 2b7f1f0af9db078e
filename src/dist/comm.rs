//! The communicator seam: what a data-parallel step needs from the other ranks.

use crate::dist::error::DistError;

/// The collectives a data-parallel run uses. Every rank calls the same collectives in the same
/// order with buffers of the same length; a call returns once every rank has made it.
pub trait Communicator: Send + Sync {
    /// This rank, 0..world.
    fn rank(&self) -> usize;
    /// How many ranks take part.
    fn world(&self) -> usize;
    /// `buf` on every rank becomes the elementwise sum of the ranks' buffers. A rank with
    /// `contributes == false` adds nothing (its buffer is only the place for the result). The
    /// in-process communicator sums in rank order, (((b₀ + b₁) + b₂) + …), in f32.
    fn all_reduce_sum(&self, buf: &mut [f32], contributes: bool) -> Result<(), DistError>;
    /// The same for f64 values (losses, flags), every rank contributing.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), DistError>;
    /// Tells the other ranks that this one failed (`why`): their next collective returns
    /// [`DistError::RankFailed`] instead of waiting for the timeout.
    fn abort(&self, why: &str);

    /// Whether any rank says yes (a stop request seen on one rank stops all at the same step).
    fn any(&self, yes: bool) -> Result<bool, DistError> {
        let mut v = [if yes { 1.0 } else { 0.0 }];
        self.all_reduce_sum_f64(&mut v)?;
        Ok(v[0] > 0.0)
    }
}

/// The one rank of a single-device run: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32], _contributes: bool) -> Result<(), DistError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }
    fn abort(&self, _why: &str) {}
}
