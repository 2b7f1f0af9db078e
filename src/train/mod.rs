//! Training: the objective's noise and weights, learning-rate schedules, the flat optimizer,
//! the resumable state, and the loop that ties them to the data and the models.

pub mod cache;
pub mod lr;
pub mod noise;
pub mod optim;
pub mod state;
pub mod step;
pub mod trainer;
