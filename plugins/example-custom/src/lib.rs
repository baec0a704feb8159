//! A third-party plugin crate, as a user writes one outside this repository: a staleness policy
//! that halves the learning rate per version behind. It depends on `bitnet-framework` only;
//! `src/main.rs` links it into a `bitnet` binary of its own. The book's recipes include both files.

// ANCHOR: plugin
use bitnet_framework::registry::{BuildError, PluginConfig};
use bitnet_framework::staleness::{StalenessDecision, StalenessPolicy};
use bitnet_framework::{BuildContext, register_plugin};
use serde::{Deserialize, Serialize};

/// Options, read from the `[staleness]` table of a run config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HalvingConfig {
    /// Updates further behind than this are dropped.
    pub max_staleness: u64,
}

impl Default for HalvingConfig {
    fn default() -> Self {
        Self { max_staleness: 4 }
    }
}

/// The component the config builds.
#[derive(Debug)]
pub struct Halving {
    max_staleness: u64,
}

impl StalenessPolicy for Halving {
    fn decide(&self, staleness: u64) -> StalenessDecision {
        if staleness > self.max_staleness {
            StalenessDecision::Reject { reason: format!("{staleness} versions behind") }
        } else {
            StalenessDecision::Accept { scale: 0.5f32.powi(staleness as i32) }
        }
    }
}

impl PluginConfig for HalvingConfig {
    type Component = dyn StalenessPolicy;
    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn StalenessPolicy>, BuildError> {
        Ok(Box::new(Halving { max_staleness: self.max_staleness }))
    }
}

register_plugin!(HalvingConfig, "halving", "Halves the learning rate per version behind.");
// ANCHOR_END: plugin

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::registry::{Registry, Slot};

    #[test]
    fn halving_is_registered_and_builds_from_toml() -> Result<(), Box<dyn std::error::Error>> {
        // ANCHOR: use
        let registry = Registry::builtin()?;
        let options: toml::Table = toml::from_str("max_staleness = 2")?;
        let ctx = BuildContext::new(Default::default());
        let policy = registry.build::<dyn StalenessPolicy>("halving", &options, &ctx)?;
        assert_eq!(policy.decide(1), StalenessDecision::Accept { scale: 0.5 });
        assert!(matches!(policy.decide(3), StalenessDecision::Reject { .. }));
        // ANCHOR_END: use
        assert_eq!(registry.names(Slot::StalenessPolicy), vec!["halving".to_string()]);
        Ok(())
    }
}
