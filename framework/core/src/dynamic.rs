//! Plugins loaded from shared libraries.
//!
//! Dynamic loading is the exception (bevy removed theirs as unsound, bevy#11969): Rust has no
//! stable ABI. So a library is accepted only when it declares the same declaration ABI, the same
//! rustc, the same framework version and the same framework *source build* (a hash of this
//! crate's sources, [`FRAMEWORK_BUILD`]), and nothing whose layout depends on a dependency's
//! version or features crosses the boundary: plugin options and defaults cross as TOML text
//! (see [`crate::registry::PluginDecl`]), and everything else that crosses is a type of this
//! crate. The library exports one `extern "C"` entry point, [`ENTRY_POINT`], returning a pointer
//! to a `#[repr(C)]` [`DynamicPluginDeclaration`]. The runtime's loader never unloads a library:
//! the plugins it registers hold pointers into it.
//!
//! A plugin crate (`crate-type = ["cdylib"]`) declares itself with [`crate::export_dynamic_plugin!`].

use crate::registry::PluginDecl;
use std::ffi::c_char;

/// Version of [`DynamicPluginDeclaration`]'s layout. Version 1 passed `toml::Table`s across the
/// boundary; version 2 passes TOML text and adds [`DynamicPluginDeclaration::framework_build`].
pub const ABI_VERSION: u32 = 2;
/// This framework's version.
pub const FRAMEWORK_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
/// The rustc that built this framework.
pub const RUSTC_VERSION: &str = concat!(env!("BITNET_RUSTC_VERSION"), "\0");
/// Hash of this framework's sources, version and target (computed by its build script): two
/// builds agree on it only when every type this crate defines has the same definition.
pub const FRAMEWORK_BUILD: &str = concat!(env!("BITNET_FRAMEWORK_BUILD"), "\0");
/// Symbol every dynamic plugin exports.
pub const ENTRY_POINT: &[u8] = b"bitnet_plugin_declaration\0";

/// What a dynamic plugin library declares. Read field by field, checking `abi_version` first,
/// before anything else is trusted.
#[repr(C)]
#[derive(Debug)]
pub struct DynamicPluginDeclaration {
    /// Must equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// NUL-terminated framework version the plugin was built against.
    pub framework_version: *const c_char,
    /// NUL-terminated rustc version the plugin was built with.
    pub rustc_version: *const c_char,
    /// NUL-terminated [`FRAMEWORK_BUILD`] of the framework the plugin was built against.
    pub framework_build: *const c_char,
    /// Returns the plugins the library provides. Only called after every version and the
    /// framework build matched, so the `Vec` and the declarations it holds (types of this crate
    /// and of std, built by the same compiler from the same sources) have one layout.
    pub plugins: extern "Rust" fn() -> Vec<PluginDecl>,
}

// SAFETY: the declaration is an immutable static inside a library that is never unloaded; its
// pointers refer to static NUL-terminated strings.
unsafe impl Sync for DynamicPluginDeclaration {}

/// Declares the dynamic plugin entry point of a `cdylib` crate.
///
/// ```ignore
/// bitnet_framework::export_dynamic_plugin!(|| vec![PluginDecl::of::<MyCodecConfig>("my-codec", "...")]);
/// ```
#[macro_export]
macro_rules! export_dynamic_plugin {
    ($plugins:expr) => {
        fn __bitnet_dynamic_plugins() -> Vec<$crate::registry::PluginDecl> {
            ($plugins)()
        }
        static __BITNET_DECLARATION: $crate::dynamic::DynamicPluginDeclaration =
            $crate::dynamic::DynamicPluginDeclaration {
                abi_version: $crate::dynamic::ABI_VERSION,
                framework_version: $crate::dynamic::FRAMEWORK_VERSION.as_ptr().cast(),
                rustc_version: $crate::dynamic::RUSTC_VERSION.as_ptr().cast(),
                framework_build: $crate::dynamic::FRAMEWORK_BUILD.as_ptr().cast(),
                plugins: __bitnet_dynamic_plugins,
            };
        /// Entry point read by the runtime's dynamic plugin loader.
        #[unsafe(no_mangle)]
        pub extern "C" fn bitnet_plugin_declaration()
        -> *const $crate::dynamic::DynamicPluginDeclaration {
            &__BITNET_DECLARATION
        }
    };
}
