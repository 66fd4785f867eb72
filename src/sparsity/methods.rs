//! Sparse-learning methods as presets of rules and knobs.
//!
//! | method | distribution | prune | redistribute | grow | prune rate | updates |
//! |---|---|---|---|---|---|---|
//! | sparse momentum (Dettmers & Zettlemoyer, 2019) | uniform | magnitude | momentum | momentum | 0.5, cosine to 0.005 | every epoch |
//! | SET (Mocanu et al., 2018) | Erdős–Rényi | signed magnitude | none | random | 0.3, constant | every epoch |
//! | RigL (Evci et al., 2020) | ERK | magnitude | none | gradient | 0.3, cosine to 0 | every 100 steps, until 75 % of training |
//! | static | uniform | — | — | — | — | never |
//!
//! Every knob can be overridden after choosing a preset.

use super::controller::{RegrownMomentum, Regrowth, Rules};
use super::distribution::Distribution;
use super::grow::{GradientGrowth, MomentumGrowth, RandomGrowth};
use super::prune::{GlobalMagnitudePrune, MagnitudePrune, SignedMagnitudePrune};
use super::redistribute::{
    MagnitudeRedistribution, MomentumRedistribution, NoRedistribution, NonzeroRedistribution,
};
use super::rules::MomentumWindow;
use super::schedule::PruneRateSchedule;
use crate::error::{Error, Result};

/// A published sparse-learning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Sparse momentum, the default.
    #[default]
    SparseMomentum,
    /// Sparse Evolutionary Training.
    Set,
    /// Rigging the Lottery.
    Rigl,
    /// Random masks, never changed.
    Static,
}

/// The pruning rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneChoice {
    /// Smallest `|w|` in each layer.
    Magnitude,
    /// Smallest `|w|` over all layers (one threshold).
    GlobalMagnitude,
    /// SET: smallest positive and largest negative weights, half each.
    Signed,
}

/// The growth rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrowthChoice {
    /// Largest momentum of missing weights.
    Momentum,
    /// Largest gradient of the last step (RigL).
    Gradient,
    /// Uniformly at random (SET).
    Random,
}

/// The redistribution rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedistributionChoice {
    /// Mean `|momentum|` of each layer.
    Momentum,
    /// Mean `|w|` of each layer.
    Magnitude,
    /// Number of non-zero weights of each layer.
    Nonzero,
    /// Each layer regrows what it lost.
    None,
}

/// How masks change during training (everything but the initial densities).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaskUpdates {
    /// Which weights die.
    pub prune: PruneChoice,
    /// How the regrowth is shared among layers.
    pub redistribution: RedistributionChoice,
    /// Where weights regrow.
    pub growth: GrowthChoice,
    /// The prune rate at the start.
    pub prune_rate: f64,
    /// How the prune rate changes.
    pub schedule: PruneRateSchedule,
    /// Steps between updates; `None` at the end of every epoch.
    pub update_every: Option<usize>,
    /// Freeze the masks after this fraction of training, in (0, 1].
    pub stop_after: Option<f64>,
    /// How grown weights start.
    pub regrowth: Regrowth,
    /// Dense momentum history for momentum growth; `None`: as long as the
    /// optimizer's momentum takes to forget all but 1 %.
    pub momentum_window: Option<MomentumWindow>,
}

impl Method {
    /// The layer-density distribution the method was published with.
    pub fn distribution(self) -> Distribution {
        match self {
            Method::SparseMomentum | Method::Static => Distribution::Uniform,
            Method::Set => Distribution::ErdosRenyi,
            Method::Rigl => Distribution::ErdosRenyiKernel,
        }
    }

    /// The method's mask updates, `None` for static sparse training.
    pub fn mask_updates(self) -> Option<MaskUpdates> {
        let estimate = Regrowth {
            momentum: RegrownMomentum::Estimate,
            ..Regrowth::default()
        };
        let fresh = Regrowth {
            momentum: RegrownMomentum::Zero,
            ..Regrowth::default()
        };
        match self {
            Method::SparseMomentum => Some(MaskUpdates {
                prune: PruneChoice::Magnitude,
                redistribution: RedistributionChoice::Momentum,
                growth: GrowthChoice::Momentum,
                prune_rate: 0.5,
                schedule: PruneRateSchedule::REFERENCE,
                update_every: None,
                stop_after: None,
                regrowth: estimate,
                momentum_window: None,
            }),
            Method::Set => Some(MaskUpdates {
                prune: PruneChoice::Signed,
                redistribution: RedistributionChoice::None,
                growth: GrowthChoice::Random,
                prune_rate: 0.3,
                schedule: PruneRateSchedule::Constant,
                update_every: None,
                stop_after: None,
                regrowth: fresh,
                momentum_window: None,
            }),
            Method::Rigl => Some(MaskUpdates {
                prune: PruneChoice::Magnitude,
                redistribution: RedistributionChoice::None,
                growth: GrowthChoice::Gradient,
                prune_rate: 0.3,
                schedule: PruneRateSchedule::Cosine { floor: 0.0 },
                update_every: Some(100),
                stop_after: Some(0.75),
                regrowth: fresh,
                momentum_window: None,
            }),
            Method::Static => None,
        }
    }
}

impl MaskUpdates {
    /// The rule objects; `momentum_decay` sizes the default momentum window.
    pub fn rules(&self, momentum_decay: f32) -> Rules {
        let window = self.momentum_window.unwrap_or(MomentumWindow::LastSteps(
            MomentumGrowth::default_window_steps(momentum_decay),
        ));
        Rules {
            prune: match self.prune {
                PruneChoice::Magnitude => Box::new(MagnitudePrune),
                PruneChoice::GlobalMagnitude => Box::new(GlobalMagnitudePrune),
                PruneChoice::Signed => Box::new(SignedMagnitudePrune),
            },
            redistribution: match self.redistribution {
                RedistributionChoice::Momentum => Box::new(MomentumRedistribution),
                RedistributionChoice::Magnitude => Box::new(MagnitudeRedistribution),
                RedistributionChoice::Nonzero => Box::new(NonzeroRedistribution),
                RedistributionChoice::None => Box::new(NoRedistribution),
            },
            growth: match self.growth {
                GrowthChoice::Momentum => Box::new(MomentumGrowth { window }),
                GrowthChoice::Gradient => Box::new(GradientGrowth),
                GrowthChoice::Random => Box::new(RandomGrowth),
            },
        }
    }

    /// Checks the knobs that the controller cannot check itself.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.prune_rate) {
            return Err(Error::config(
                "prune-rate",
                format!("{} is not in [0, 1]", self.prune_rate),
            ));
        }
        if let Some(stop) = self.stop_after
            && !(stop > 0.0 && stop <= 1.0)
        {
            return Err(Error::config(
                "stop-updates-after",
                format!("{stop} is not a fraction in (0, 1]"),
            ));
        }
        match self.schedule {
            PruneRateSchedule::Cosine { floor } | PruneRateSchedule::Linear { floor }
                if !(0.0..=1.0).contains(&floor) =>
            {
                Err(Error::config(
                    "prune-rate-floor",
                    format!("{floor} is not in [0, 1]"),
                ))
            }
            _ => Ok(()),
        }
    }
}

named_choices!(
    Method,
    "method",
    [
        ("sparse-momentum", Method::SparseMomentum),
        ("set", Method::Set),
        ("rigl", Method::Rigl),
        ("static", Method::Static),
    ]
);
named_choices!(
    PruneChoice,
    "prune",
    [
        ("magnitude", PruneChoice::Magnitude),
        ("global-magnitude", PruneChoice::GlobalMagnitude),
        ("set", PruneChoice::Signed),
    ]
);
named_choices!(
    GrowthChoice,
    "growth",
    [
        ("momentum", GrowthChoice::Momentum),
        ("gradient", GrowthChoice::Gradient),
        ("random", GrowthChoice::Random),
    ]
);
named_choices!(
    RedistributionChoice,
    "redistribution",
    [
        ("momentum", RedistributionChoice::Momentum),
        ("magnitude", RedistributionChoice::Magnitude),
        ("nonzero", RedistributionChoice::Nonzero),
        ("none", RedistributionChoice::None),
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for method in [
            Method::SparseMomentum,
            Method::Set,
            Method::Rigl,
            Method::Static,
        ] {
            assert_eq!(method.to_string().parse::<Method>().unwrap(), method);
        }
        assert_eq!(
            "global-magnitude".parse::<PruneChoice>().unwrap(),
            PruneChoice::GlobalMagnitude
        );
        let err = "lottery".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("lottery") && err.contains("rigl"), "{err}");
    }

    #[test]
    fn presets_are_their_published_defaults() {
        let rigl = Method::Rigl.mask_updates().unwrap();
        assert_eq!(
            (rigl.prune_rate, rigl.update_every, rigl.stop_after),
            (0.3, Some(100), Some(0.75))
        );
        assert_eq!(rigl.growth, GrowthChoice::Gradient);
        assert_eq!(Method::Rigl.distribution(), Distribution::ErdosRenyiKernel);
        let set = Method::Set.mask_updates().unwrap();
        assert_eq!(
            (set.prune, set.growth, set.redistribution),
            (
                PruneChoice::Signed,
                GrowthChoice::Random,
                RedistributionChoice::None
            )
        );
        assert_eq!(set.schedule, PruneRateSchedule::Constant);
        assert!(Method::Static.mask_updates().is_none());
    }

    #[test]
    fn bad_knobs_are_refused() {
        let mut updates = Method::SparseMomentum.mask_updates().unwrap();
        updates.prune_rate = -0.1;
        assert!(
            updates
                .validate()
                .unwrap_err()
                .to_string()
                .contains("prune-rate")
        );
        updates.prune_rate = 0.5;
        updates.stop_after = Some(1.5);
        assert!(updates.validate().is_err());
    }
}
