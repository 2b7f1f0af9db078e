//! Watching a training run from outside: TensorBoard event files and a loss-curve PNG.

pub mod plot;
pub mod tensorboard;
