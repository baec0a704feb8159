//! Model presets: the TOML files of `presets/`, embedded at build time so the binary works from
//! any directory. A preset may also be given as a path to a TOML file.

/// Name and TOML text of every built-in preset.
pub const BUILTIN_PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../../presets/tiny.toml")),
    ("small", include_str!("../../../presets/small.toml")),
    ("medium", include_str!("../../../presets/medium.toml")),
    ("large", include_str!("../../../presets/large.toml")),
];

/// TOML text of built-in preset `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN_PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Names of the built-in presets.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect()
}
