//! Optimizers and learning-rate schedules.

pub mod schedule;
pub mod sgd;

pub use schedule::StepLr;
pub use sgd::Sgd;
