//! Staleness policies: how much an update computed on old weights still counts.
//!
//! - "inverse-linear": learning rate times `1 / (1 + alpha * staleness)`, rejected beyond
//!   `max_staleness` (defaults 0.5 and 10).
//! - "reject-only": full learning rate up to `max_staleness`, rejected beyond (default 10).
//! - "none": every update at full learning rate, however stale.

use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use bitnet_framework::staleness::{StalenessDecision, StalenessPolicy};
use bitnet_framework::{BuildContext, register_plugin};
use serde::{Deserialize, Serialize};

fn too_stale(staleness: u64, max: u64) -> StalenessDecision {
    StalenessDecision::Reject {
        reason: format!("update is {staleness} versions behind, more than the maximum of {max}"),
    }
}

/// `1 / (1 + alpha * staleness)` up to `max_staleness`, rejected beyond.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InverseLinear {
    alpha: f32,
    max_staleness: u64,
}

impl InverseLinear {
    /// A policy with `alpha >= 0` (finite); `None` otherwise.
    pub fn new(alpha: f32, max_staleness: u64) -> Option<Self> {
        (alpha.is_finite() && alpha >= 0.0).then_some(Self { alpha, max_staleness })
    }
}

impl StalenessPolicy for InverseLinear {
    fn decide(&self, staleness: u64) -> StalenessDecision {
        if staleness > self.max_staleness {
            return too_stale(staleness, self.max_staleness);
        }
        // In f64 so huge maxima cannot overflow; the result is in (0, 1].
        let scale = 1.0 / (1.0 + f64::from(self.alpha) * staleness as f64);
        StalenessDecision::Accept { scale: scale as f32 }
    }
}

/// Full learning rate up to `max_staleness`, rejected beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectOnly {
    /// Largest staleness still accepted.
    pub max_staleness: u64,
}

impl StalenessPolicy for RejectOnly {
    fn decide(&self, staleness: u64) -> StalenessDecision {
        if staleness > self.max_staleness {
            too_stale(staleness, self.max_staleness)
        } else {
            StalenessDecision::Accept { scale: 1.0 }
        }
    }
}

/// Every update at full learning rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoStaleness;

impl StalenessPolicy for NoStaleness {
    fn decide(&self, _staleness: u64) -> StalenessDecision {
        StalenessDecision::Accept { scale: 1.0 }
    }
}

/// Options of "inverse-linear".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InverseLinearConfig {
    /// Slope: the scale is `1 / (1 + alpha * staleness)`; `alpha >= 0`.
    pub alpha: f32,
    /// Largest staleness still accepted.
    pub max_staleness: u64,
}

impl Default for InverseLinearConfig {
    fn default() -> Self {
        Self { alpha: 0.5, max_staleness: 10 }
    }
}

impl PluginConfig for InverseLinearConfig {
    type Component = dyn StalenessPolicy;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn StalenessPolicy>, BuildError> {
        InverseLinear::new(self.alpha, self.max_staleness)
            .map(|p| Box::new(p) as Box<dyn StalenessPolicy>)
            .ok_or_else(|| {
                BuildError::failed(
                    Slot::StalenessPolicy,
                    "inverse-linear",
                    format!("alpha must be finite and >= 0, got {}", self.alpha),
                )
            })
    }
}

/// Options of "reject-only".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RejectOnlyConfig {
    /// Largest staleness still accepted.
    pub max_staleness: u64,
}

impl Default for RejectOnlyConfig {
    fn default() -> Self {
        Self { max_staleness: 10 }
    }
}

impl PluginConfig for RejectOnlyConfig {
    type Component = dyn StalenessPolicy;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn StalenessPolicy>, BuildError> {
        Ok(Box::new(RejectOnly { max_staleness: self.max_staleness }))
    }
}

/// Options of "none" (none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoStalenessConfig {}

impl PluginConfig for NoStalenessConfig {
    type Component = dyn StalenessPolicy;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn StalenessPolicy>, BuildError> {
        Ok(Box::new(NoStaleness))
    }
}

register_plugin!(
    InverseLinearConfig,
    "inverse-linear",
    "Learning rate / (1 + alpha * staleness); rejects beyond max_staleness."
);
register_plugin!(
    RejectOnlyConfig,
    "reject-only",
    "Full learning rate up to max_staleness; rejects beyond."
);
register_plugin!(NoStalenessConfig, "none", "Full learning rate, however stale.");

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::model::ModelConfig;
    use proptest::prelude::*;

    fn build<C: PluginConfig<Component = dyn StalenessPolicy>>(
        options: &str,
    ) -> Result<Box<dyn StalenessPolicy>, String> {
        let config: C = toml::from_str(options).map_err(|e| e.to_string())?;
        config.build(&BuildContext::new(ModelConfig::default())).map_err(|e| e.to_string())
    }

    #[test]
    fn inverse_linear_defaults_match_the_issue() {
        let p = build::<InverseLinearConfig>("").expect("build");
        assert_eq!(p.decide(0), StalenessDecision::Accept { scale: 1.0 });
        assert_eq!(p.decide(2), StalenessDecision::Accept { scale: 0.5 });
        assert_eq!(p.decide(10), StalenessDecision::Accept { scale: 1.0 / 6.0 });
        assert!(p.decide(11).scale().is_none());
    }

    #[test]
    fn options_are_read_and_checked() {
        let p = build::<InverseLinearConfig>("alpha = 1.0\nmax_staleness = 3").expect("build");
        assert_eq!(p.decide(3), StalenessDecision::Accept { scale: 0.25 });
        assert!(p.decide(4).scale().is_none());
        let err = build::<InverseLinearConfig>("alpha = -1.0").err().expect("negative alpha");
        assert!(err.contains("alpha"), "{err}");
        let err = build::<InverseLinearConfig>("alfa = 1.0").err().expect("unknown key");
        assert!(err.contains("alfa"), "{err}");
        let p = build::<RejectOnlyConfig>("max_staleness = 2").expect("build");
        assert_eq!(p.decide(2), StalenessDecision::Accept { scale: 1.0 });
        assert!(p.decide(3).scale().is_none());
        assert!(build::<NoStalenessConfig>("max_staleness = 2").is_err());
    }

    proptest! {
        #[test]
        fn scales_are_in_unit_interval_and_non_increasing(
            alpha in 0.0f32..100.0, max in 0u64..1000, s in 0u64..2000,
        ) {
            let policy = InverseLinear::new(alpha, max).expect("valid alpha");
            match (policy.decide(s), policy.decide(s + 1)) {
                (StalenessDecision::Accept { scale: a }, next) => {
                    prop_assert!(s <= max);
                    prop_assert!(a > 0.0 && a <= 1.0);
                    if let Some(b) = next.scale() {
                        prop_assert!(b <= a);
                    }
                }
                (StalenessDecision::Reject { .. }, next) => {
                    prop_assert!(s > max);
                    prop_assert!(next.scale().is_none());
                }
            }
            prop_assert_eq!(NoStaleness.decide(s), StalenessDecision::Accept { scale: 1.0 });
        }
    }
}
