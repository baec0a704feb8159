//! A dynamic plugin built, in the tests, with `toml/preserve_order` while the binary that loads
//! it is not: the "scaled" staleness policy. Its options cross the library boundary as TOML text
//! and are parsed by this library's own `toml`, so the different layout of `toml::Table` on the
//! two sides does not matter.

use bitnet_framework::registry::{BuildError, PluginConfig, PluginDecl};
use bitnet_framework::staleness::{StalenessDecision, StalenessPolicy};
use bitnet_framework::{BuildContext, export_dynamic_plugin};
use serde::{Deserialize, Serialize};

/// Options of the "scaled" policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaledConfig {
    /// Learning-rate factor per version behind.
    pub factor: f64,
    /// Updates further behind are dropped.
    pub max_staleness: u64,
}

impl Default for ScaledConfig {
    fn default() -> Self {
        Self { factor: 0.5, max_staleness: 3 }
    }
}

/// Scales an update by `factor` per version behind.
#[derive(Debug)]
struct Scaled {
    factor: f32,
    max_staleness: u64,
}

impl StalenessPolicy for Scaled {
    fn decide(&self, staleness: u64) -> StalenessDecision {
        if staleness > self.max_staleness {
            return StalenessDecision::Reject { reason: format!("{staleness} versions behind") };
        }
        let exponent = i32::try_from(staleness).unwrap_or(i32::MAX);
        StalenessDecision::Accept { scale: self.factor.powi(exponent) }
    }
}

impl PluginConfig for ScaledConfig {
    type Component = dyn StalenessPolicy;
    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn StalenessPolicy>, BuildError> {
        if !(self.factor > 0.0 && self.factor <= 1.0) {
            return Err(BuildError::failed(
                bitnet_framework::Slot::StalenessPolicy,
                "scaled",
                format!("factor must be in (0, 1], got {}", self.factor),
            ));
        }
        Ok(Box::new(Scaled { factor: self.factor as f32, max_staleness: self.max_staleness }))
    }
}

fn plugins() -> Vec<PluginDecl> {
    vec![PluginDecl::of::<ScaledConfig>(
        "scaled",
        "Scales an update by `factor` per version behind.",
    )]
}

export_dynamic_plugin!(plugins);
