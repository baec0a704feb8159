//! Facade over every built-in plugin crate.
//!
//! `inventory` registrations live in statics of each plugin crate; a crate the binary never
//! references can be dropped by the linker with its registrations (inventory#50). Depending on
//! this crate and calling [`link`] references every built-in, so all of them are registered.

use bitnet_framework::registry::{Registry, RegistryError};

/// References every built-in plugin crate so the linker keeps their registrations.
#[inline(never)]
pub fn link() {
    // One use of a public item per crate is enough to keep its object files.
    std::hint::black_box(bitnet_b158::layout::model_layout as *const ());
}

/// The registry of every built-in plugin.
pub fn registry() -> Result<Registry, RegistryError> {
    link();
    Registry::builtin()
}
