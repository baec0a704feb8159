//! Plugins loaded from shared libraries.
//!
//! Dynamic loading is the exception (bevy removed theirs as unsound, bevy#11969): Rust has no
//! stable ABI, so a library is accepted only when it was built by the same rustc against the same
//! framework version, with the same declaration ABI. The library exports one `extern "C"` entry
//! point, [`ENTRY_POINT`], returning a pointer to a `#[repr(C)]` [`DynamicPluginDeclaration`].
//! Libraries are never unloaded: the plugins they register hold pointers into them.
//!
//! A plugin crate (`crate-type = ["cdylib"]`) declares itself with [`crate::export_dynamic_plugin!`].

use crate::registry::{PluginDecl, Registry, RegistryError};
use std::ffi::{CStr, c_char};
use std::path::Path;

/// Version of [`DynamicPluginDeclaration`]'s layout.
pub const ABI_VERSION: u32 = 1;
/// This framework's version.
pub const FRAMEWORK_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
/// The rustc that built this framework.
pub const RUSTC_VERSION: &str = concat!(env!("BITNET_RUSTC_VERSION"), "\0");
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
    /// Returns the plugins the library provides. Only called after every version matched, so
    /// passing Rust types across this boundary is sound (same compiler, same framework).
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
                plugins: __bitnet_dynamic_plugins,
            };
        /// Entry point read by `bitnet_framework::dynamic::load`.
        #[unsafe(no_mangle)]
        pub extern "C" fn bitnet_plugin_declaration()
        -> *const $crate::dynamic::DynamicPluginDeclaration {
            &__BITNET_DECLARATION
        }
    };
}

/// Errors loading a dynamic plugin.
#[derive(Debug, thiserror::Error)]
pub enum DynamicError {
    /// The library could not be opened.
    #[error("cannot load plugin library {path}: {message}")]
    Open {
        /// Path.
        path: String,
        /// Loader's message.
        message: String,
    },
    /// The entry point is missing.
    #[error("{path} is not a bitnet plugin: no `bitnet_plugin_declaration` symbol")]
    NoEntryPoint {
        /// Path.
        path: String,
    },
    /// A version does not match; the library is refused.
    #[error(
        "plugin {path} refused: {what} mismatch (plugin has {found}, this bitnet has {expected}); rebuild the plugin against this bitnet"
    )]
    Mismatch {
        /// Path.
        path: String,
        /// Which version.
        what: &'static str,
        /// The library's.
        found: String,
        /// Ours.
        expected: String,
    },
    /// Registering its plugins failed (e.g. a duplicate name).
    #[error("plugin {path}: {source}")]
    Registry {
        /// Path.
        path: String,
        /// Cause.
        source: RegistryError,
    },
}

fn c_str(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return "(null)".into();
    }
    // SAFETY: non-null pointers in a declaration whose ABI version matched point to static
    // NUL-terminated strings (written by `export_dynamic_plugin!`).
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

/// Loads the library at `path`, checks its declaration and adds its plugins to `registry`.
/// Returns the names of the plugins added.
pub fn load(registry: &mut Registry, path: &Path) -> Result<Vec<String>, DynamicError> {
    let shown = path.display().to_string();
    // SAFETY: loading a library runs its initialisers; that is the inherent risk of dynamic
    // plugins, accepted by naming the library in the config. Nothing else is called before the
    // declaration has been checked.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| DynamicError::Open { path: shown.clone(), message: e.to_string() })?;
    // Never unloaded: plugin declarations point into the library for the life of the process.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is fixed by `export_dynamic_plugin!`; a library exporting the
    // name with another type is outside what can be checked before the call.
    let entry: libloading::Symbol<'static, extern "C" fn() -> *const DynamicPluginDeclaration> =
        unsafe { library.get(ENTRY_POINT) }
            .map_err(|_| DynamicError::NoEntryPoint { path: shown.clone() })?;
    let decl_ptr = entry();
    if decl_ptr.is_null() {
        return Err(DynamicError::NoEntryPoint { path: shown });
    }
    // SAFETY: the pointer is non-null and, by the entry point's contract, refers to a static
    // declaration whose first field is the ABI version; we read only that field before checking.
    let abi = unsafe { std::ptr::addr_of!((*decl_ptr).abi_version).read() };
    if abi != ABI_VERSION {
        return Err(DynamicError::Mismatch {
            path: shown,
            what: "ABI version",
            found: abi.to_string(),
            expected: ABI_VERSION.to_string(),
        });
    }
    // SAFETY: the ABI version matched, so the whole declaration has the layout we know.
    let decl: &'static DynamicPluginDeclaration = unsafe { &*decl_ptr };
    let ours = |s: &str| s.trim_end_matches('\0').to_string();
    for (what, found, expected) in [
        ("framework version", c_str(decl.framework_version), ours(FRAMEWORK_VERSION)),
        ("rustc version", c_str(decl.rustc_version), ours(RUSTC_VERSION)),
    ] {
        if found != expected {
            return Err(DynamicError::Mismatch { path: shown, what, found, expected });
        }
    }
    let origin: &'static str = Box::leak(shown.clone().into_boxed_str());
    let mut names = Vec::new();
    for plugin in (decl.plugins)() {
        let plugin = plugin.with_origin(origin);
        names.push(format!("{}/{}", plugin.slot, plugin.name));
        registry
            .add(plugin)
            .map_err(|source| DynamicError::Registry { path: shown.clone(), source })?;
    }
    Ok(names)
}
