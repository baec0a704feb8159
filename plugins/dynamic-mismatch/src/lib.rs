//! A dynamic plugin that claims to be built against another framework version, as a plugin built
//! against an older bitnet would. Loading it must fail with a version-mismatch error before any of
//! its code beyond the declaration is trusted.

use bitnet_framework::dynamic::{
    ABI_VERSION, DynamicPluginDeclaration, FRAMEWORK_BUILD, RUSTC_VERSION,
};
use bitnet_framework::registry::PluginDecl;

fn plugins() -> Vec<PluginDecl> {
    Vec::new()
}

static DECLARATION: DynamicPluginDeclaration = DynamicPluginDeclaration {
    abi_version: ABI_VERSION,
    framework_version: c"0.0.0-mismatch".as_ptr(),
    rustc_version: RUSTC_VERSION.as_ptr().cast(),
    framework_build: FRAMEWORK_BUILD.as_ptr().cast(),
    plugins,
};

/// Entry point read by the framework's loader.
#[unsafe(no_mangle)]
pub extern "C" fn bitnet_plugin_declaration() -> *const DynamicPluginDeclaration {
    &DECLARATION
}
