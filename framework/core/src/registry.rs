//! Plugin registry: every component is found by slot and name.
//!
//! Built-in plugins register at link time with [`crate::register_plugin!`] (through `inventory`);
//! dynamic plugins register through [`crate::dynamic`]. Look-ups are sorted by name, duplicate
//! names in a slot are refused when the registry is built, and an unknown name lists the names
//! that exist.

use crate::context::BuildContext;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of component a run is assembled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// [`crate::model::ModelKernel`]
    ModelKernel,
    /// [`crate::optim::Optimizer`]
    Optimizer,
    /// [`crate::codec::GradientCodec`]
    GradientCodec,
    /// [`crate::staleness::StalenessPolicy`]
    StalenessPolicy,
    /// [`crate::store::WeightStore`]
    WeightStore,
    /// [`crate::weights::WeightCodec`]
    WeightCodec,
    /// [`crate::tokenizer::Tokenizer`]
    Tokenizer,
    /// How the coordinator and workers talk.
    Transport,
    /// Coordinator state: queue, workers, keys, telemetry, logs.
    CoordinatorStore,
}

impl Slot {
    /// Every slot, in display order.
    pub const ALL: [Slot; 9] = [
        Slot::ModelKernel,
        Slot::Optimizer,
        Slot::GradientCodec,
        Slot::StalenessPolicy,
        Slot::WeightStore,
        Slot::WeightCodec,
        Slot::Tokenizer,
        Slot::Transport,
        Slot::CoordinatorStore,
    ];

    /// The slot's name in configs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Slot::ModelKernel => "kernel",
            Slot::Optimizer => "optimizer",
            Slot::GradientCodec => "codec",
            Slot::StalenessPolicy => "staleness",
            Slot::WeightStore => "weight_store",
            Slot::WeightCodec => "weight_codec",
            Slot::Tokenizer => "tokenizer",
            Slot::Transport => "transport",
            Slot::CoordinatorStore => "coordinator_store",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A built component of any slot. Plugins hand components back through this enum rather than
/// `dyn Any`, so no `TypeId` has to agree across a dynamic-library boundary.
pub enum Component {
    /// A model kernel.
    ModelKernel(Box<dyn crate::model::ModelKernel>),
    /// An optimizer.
    Optimizer(Box<dyn crate::optim::Optimizer>),
    /// A gradient codec.
    GradientCodec(Box<dyn crate::codec::GradientCodec>),
    /// A staleness policy.
    StalenessPolicy(Box<dyn crate::staleness::StalenessPolicy>),
    /// A weight store.
    WeightStore(Box<dyn crate::store::WeightStore>),
    /// A weight download codec.
    WeightCodec(Box<dyn crate::weights::WeightCodec>),
    /// A tokenizer.
    Tokenizer(Box<dyn crate::tokenizer::Tokenizer>),
    /// A transport.
    Transport(Box<dyn crate::transport::Transport>),
    /// A coordinator store.
    CoordinatorStore(Box<dyn crate::coordinator_store::CoordinatorStore>),
}

impl Component {
    /// The slot this component fills.
    pub fn slot(&self) -> Slot {
        match self {
            Component::ModelKernel(_) => Slot::ModelKernel,
            Component::Optimizer(_) => Slot::Optimizer,
            Component::GradientCodec(_) => Slot::GradientCodec,
            Component::StalenessPolicy(_) => Slot::StalenessPolicy,
            Component::WeightStore(_) => Slot::WeightStore,
            Component::WeightCodec(_) => Slot::WeightCodec,
            Component::Tokenizer(_) => Slot::Tokenizer,
            Component::Transport(_) => Slot::Transport,
            Component::CoordinatorStore(_) => Slot::CoordinatorStore,
        }
    }
}

/// Links a trait-object type to its slot and its [`Component`] variant.
pub trait SlotObject: 'static {
    /// The slot.
    const SLOT: Slot;
    /// Wraps a built component.
    fn wrap(component: Box<Self>) -> Component;
    /// Unwraps a component of this slot.
    fn unwrap(component: Component) -> Option<Box<Self>>;
}

/// Implements [`SlotObject`] for a slot trait object and its [`Component`] variant.
macro_rules! slot_object {
    ($($trait:path => $variant:ident),* $(,)?) => {$(
        impl SlotObject for dyn $trait {
            const SLOT: Slot = Slot::$variant;
            fn wrap(component: Box<Self>) -> Component {
                Component::$variant(component)
            }
            fn unwrap(component: Component) -> Option<Box<Self>> {
                match component {
                    Component::$variant(c) => Some(c),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    )*};
}

slot_object! {
    crate::model::ModelKernel => ModelKernel,
    crate::optim::Optimizer => Optimizer,
    crate::codec::GradientCodec => GradientCodec,
    crate::staleness::StalenessPolicy => StalenessPolicy,
    crate::store::WeightStore => WeightStore,
    crate::weights::WeightCodec => WeightCodec,
    crate::tokenizer::Tokenizer => Tokenizer,
    crate::transport::Transport => Transport,
    crate::coordinator_store::CoordinatorStore => CoordinatorStore,
}

/// A plugin's configuration type: deserialised from the slot's TOML table (unknown keys are
/// refused with `#[serde(deny_unknown_fields)]`), then asked to build the component.
pub trait PluginConfig: Serialize + DeserializeOwned + Default + 'static {
    /// The slot's trait object, e.g. `dyn GradientCodec`.
    type Component: ?Sized + SlotObject;
    /// Builds the component.
    fn build(self, ctx: &BuildContext) -> Result<Box<Self::Component>, BuildError>;

    /// Every value of the options the plugin would refuse (a negative learning rate, an
    /// address that does not parse, a file that does not exist), each naming its key, checked
    /// without building or touching anything; `bitnet run --dry-run` reports them all. The
    /// default accepts whatever deserialises.
    fn validate(&self, _ctx: &BuildContext) -> Vec<String> {
        Vec::new()
    }
}

/// A component could not be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BuildError {
    /// No plugin of that name in the slot.
    #[error("slot `{slot}`: no plugin named `{name}`; registered: {}", list_or_none(.available))]
    UnknownPlugin {
        /// Slot looked in.
        slot: Slot,
        /// Name asked for.
        name: String,
        /// Names that exist, sorted.
        available: Vec<String>,
    },
    /// Options did not deserialise into the plugin's config.
    #[error("slot `{slot}`, plugin `{name}`: invalid options: {message}")]
    InvalidOptions {
        /// Slot.
        slot: Slot,
        /// Plugin.
        name: String,
        /// Deserialiser's message (names the key).
        message: String,
    },
    /// The plugin refused its configuration or failed to start.
    #[error("slot `{slot}`, plugin `{name}`: {message}")]
    Failed {
        /// Slot.
        slot: Slot,
        /// Plugin.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Asked for a component of one slot from a plugin of another (a bug in the caller).
    #[error("plugin `{name}` is registered in slot `{found}`, not `{expected}`")]
    WrongSlot {
        /// Plugin.
        name: String,
        /// Slot asked for.
        expected: Slot,
        /// Slot registered in.
        found: Slot,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
}

impl BuildError {
    /// Shorthand for a plugin's own refusal.
    pub fn failed(slot: Slot, name: &str, message: impl fmt::Display) -> Self {
        BuildError::Failed { slot, name: name.to_string(), message: message.to_string() }
    }
}

/// Why an erased build failed: the options did not deserialise, or the plugin refused.
enum ErasedFailure {
    Options(String),
    Build(BuildError),
}

// Options and defaults cross these functions as TOML text, never as `toml::Table`: the table's
// layout depends on the `toml` crate's version and features, which a dynamic plugin library may
// not share with the binary that loads it (a plugin built with `toml/preserve_order` read a
// host's `BTreeMap` as an `IndexMap` and crashed). Each side parses text with its own `toml`.
type ErasedBuild = fn(&str, &BuildContext) -> Result<Component, ErasedFailure>;
type ErasedDefault = fn() -> String;
type ErasedCheck = fn(&str, &BuildContext) -> Result<(), String>;

/// One registered plugin. Built with [`PluginDecl::of`], usually through
/// [`crate::register_plugin!`].
#[derive(Clone, Copy)]
pub struct PluginDecl {
    /// Slot it fills.
    pub slot: Slot,
    /// Name used in configs (`type = "..."`).
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    default_config: ErasedDefault,
    build: ErasedBuild,
    check: ErasedCheck,
    /// Where it came from (`built-in` or a library path).
    pub origin: &'static str,
}

impl fmt::Debug for PluginDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginDecl")
            .field("slot", &self.slot)
            .field("name", &self.name)
            .field("origin", &self.origin)
            .finish()
    }
}

fn erased_default<C: PluginConfig>() -> String {
    toml::to_string(&C::default()).unwrap_or_default()
}

fn parse_options<C: PluginConfig>(options: &str) -> Result<C, String> {
    toml::from_str::<C>(options).map_err(|e| e.message().to_string())
}

fn erased_build<C: PluginConfig>(
    options: &str,
    ctx: &BuildContext,
) -> Result<Component, ErasedFailure> {
    let config: C = parse_options(options).map_err(ErasedFailure::Options)?;
    let component: Box<C::Component> = config.build(ctx).map_err(ErasedFailure::Build)?;
    Ok(<C::Component as SlotObject>::wrap(component))
}

fn erased_check<C: PluginConfig>(options: &str, ctx: &BuildContext) -> Result<(), String> {
    let problems = parse_options::<C>(options)?.validate(ctx);
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// `options` as TOML text for the erased functions.
fn options_text(options: &toml::Table) -> Result<String, String> {
    toml::to_string(options).map_err(|e| format!("cannot write the options as TOML: {e}"))
}

impl PluginDecl {
    /// Declares plugin `name` whose options are `C`.
    pub const fn of<C: PluginConfig>(name: &'static str, description: &'static str) -> Self {
        Self {
            slot: <C::Component as SlotObject>::SLOT,
            name,
            description,
            default_config: erased_default::<C>,
            build: erased_build::<C>,
            check: erased_check::<C>,
            origin: "built-in",
        }
    }

    /// The same declaration, marked as coming from `origin`.
    pub const fn with_origin(mut self, origin: &'static str) -> Self {
        self.origin = origin;
        self
    }

    /// Checks `options` deserialise into the plugin's config and hold values it accepts
    /// ([`PluginConfig::validate`]), without building anything.
    pub fn check_options(
        &self,
        options: &toml::Table,
        ctx: &BuildContext,
    ) -> Result<(), BuildError> {
        options_text(options).and_then(|text| (self.check)(&text, ctx)).map_err(|message| {
            BuildError::InvalidOptions { slot: self.slot, name: self.name.to_string(), message }
        })
    }

    /// The plugin's default options.
    pub fn default_config(&self) -> toml::Table {
        toml::from_str(&(self.default_config)()).unwrap_or_default()
    }
}

inventory::collect!(PluginDecl);

/// Registers a built-in plugin. `$config` implements [`PluginConfig`].
///
/// ```ignore
/// bitnet_framework::register_plugin!(Fp32Config, "fp32", "Uncompressed little-endian f32.");
/// ```
#[macro_export]
macro_rules! register_plugin {
    ($config:ty, $name:literal, $description:literal) => {
        $crate::inventory::submit! {
            $crate::registry::PluginDecl::of::<$config>($name, $description)
        }
    };
}

/// Registry errors found when the registry is assembled.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RegistryError {
    /// Two plugins claim the same name in a slot.
    #[error("duplicate plugin `{name}` in slot `{slot}` (from {first} and {second})")]
    Duplicate {
        /// Slot.
        slot: Slot,
        /// Name.
        name: String,
        /// Origin of the first.
        first: String,
        /// Origin of the second.
        second: String,
    },
}

/// All plugins known to this process, by slot and name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    plugins: BTreeMap<(Slot, &'static str), PluginDecl>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every plugin linked into this binary.
    pub fn builtin() -> Result<Self, RegistryError> {
        let mut r = Self::empty();
        for decl in inventory::iter::<PluginDecl> {
            r.add(*decl)?;
        }
        Ok(r)
    }

    /// Adds one plugin; a second plugin with the same slot and name is an error.
    pub fn add(&mut self, decl: PluginDecl) -> Result<(), RegistryError> {
        if let Some(prev) = self.plugins.get(&(decl.slot, decl.name)) {
            return Err(RegistryError::Duplicate {
                slot: decl.slot,
                name: decl.name.to_string(),
                first: prev.origin.to_string(),
                second: decl.origin.to_string(),
            });
        }
        self.plugins.insert((decl.slot, decl.name), decl);
        Ok(())
    }

    /// Plugins of `slot`, sorted by name.
    pub fn plugins(&self, slot: Slot) -> impl Iterator<Item = &PluginDecl> {
        self.plugins.range((slot, "")..).take_while(move |((s, _), _)| *s == slot).map(|(_, d)| d)
    }

    /// Names registered in `slot`, sorted.
    pub fn names(&self, slot: Slot) -> Vec<String> {
        self.plugins(slot).map(|d| d.name.to_string()).collect()
    }

    /// The plugin `name` of `slot`, or an error listing what exists.
    pub fn get(&self, slot: Slot, name: &str) -> Result<&PluginDecl, BuildError> {
        self.plugins(slot).find(|d| d.name == name).ok_or_else(|| BuildError::UnknownPlugin {
            slot,
            name: name.to_string(),
            available: self.names(slot),
        })
    }

    /// Builds component `name` of the slot of `T` from its TOML options.
    pub fn build<T: ?Sized + SlotObject>(
        &self,
        name: &str,
        options: &toml::Table,
        ctx: &BuildContext,
    ) -> Result<Box<T>, BuildError> {
        let decl = self.get(T::SLOT, name)?;
        let text = options_text(options).map_err(|message| BuildError::InvalidOptions {
            slot: T::SLOT,
            name: name.to_string(),
            message,
        })?;
        let component = (decl.build)(&text, ctx).map_err(|failure| match failure {
            ErasedFailure::Options(message) => {
                BuildError::InvalidOptions { slot: T::SLOT, name: name.to_string(), message }
            }
            ErasedFailure::Build(e) => e,
        })?;
        let found = component.slot();
        T::unwrap(component).ok_or(BuildError::WrongSlot {
            name: name.to_string(),
            expected: T::SLOT,
            found,
        })
    }
}
