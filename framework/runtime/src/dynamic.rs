//! Loading plugins from shared libraries: the handshake of
//! [`bitnet_framework::dynamic::DynamicPluginDeclaration`], then registration.

use bitnet_framework::dynamic::{
    ABI_VERSION, DynamicPluginDeclaration, ENTRY_POINT, FRAMEWORK_BUILD, FRAMEWORK_VERSION,
    RUSTC_VERSION,
};
use bitnet_framework::registry::{Registry, RegistryError};
use std::ffi::{CStr, c_char};
use std::path::Path;

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
        ("framework build", c_str(decl.framework_build), ours(FRAMEWORK_BUILD)),
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
