//! Sparse learning: pruning, redistributing and regrowing weights during training.
//!
//! At each mask update (by default at the end of every epoch):
//!
//! 1. **Statistics**: every sparse layer gets a score from the
//!    [`Redistribution`] rule (sparse momentum: mean `|momentum|` of its
//!    weights), normalised to shares that sum to 1.
//! 2. **Prune**: each layer loses `ceil(p · nnz)` weights chosen by the
//!    [`PruneRule`] (smallest `|w|`); `p` follows a [`PruneRateSchedule`].
//! 3. **Redistribute**: the `R` removed weights are shared out by score, each
//!    layer capped at its free positions, what the caps cut off handed on to
//!    layers with room ([`fn@apportion`]). The total is conserved *exactly*.
//! 4. **Grow**: each layer fills its share with positions chosen by the
//!    [`GrowthRule`] (largest momentum of missing weights); new weights start at
//!    0, and a weight pruned in step 2 and chosen again keeps its value and
//!    momentum (it never left, as in the reference library).
//! 5. **Rebuild** each CSR matrix and remap its momentum buffer.
//!
//! The controller is [`SparseLearning`]; a method is a [`Rules`] value, and
//! the published methods (sparse momentum, SET, RigL, static) are [`Method`]
//! presets. [`layer_counts`] decides the initial size of every layer.

pub mod apportion;
pub mod controller;
pub mod distribution;
pub mod grow;
pub mod methods;
pub mod prune;
pub mod redistribute;
pub mod rules;
pub mod schedule;
mod window;

pub use apportion::apportion;
pub use controller::{
    LayerUpdate, MaskUpdate, RegrownMomentum, RegrownWeight, Regrowth, Rules, RunLength,
    SparseLearning, SparseLearningConfig,
};
pub use distribution::{Distribution, LayerShape, check_density, layer_counts};
pub use grow::{GradientGrowth, MomentumGrowth, RandomGrowth};
pub use methods::{GrowthChoice, MaskUpdates, Method, PruneChoice, RedistributionChoice};
pub use prune::{GlobalMagnitudePrune, MagnitudePrune, SignedMagnitudePrune};
pub use redistribute::{
    MagnitudeRedistribution, MomentumRedistribution, NoRedistribution, NonzeroRedistribution,
};
pub use rules::{
    GrowthRule, GrowthSignal, LayerView, MomentumWindow, PruneRule, Redistribution, Vacancies,
};
pub use schedule::{PruneRateSchedule, UpdateSchedule};
