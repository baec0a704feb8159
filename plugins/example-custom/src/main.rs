//! A `bitnet` binary with one more plugin linked in: everything the shipped `bitnet` does, plus
//! the `halving` staleness policy of this crate. No fork of the repository is needed.

// ANCHOR: main
// Linking the plugin crate is what registers its plugins (a `use` keeps the linker from
// dropping it, see inventory#50).
use bitnet_example_custom as _;

fn main() -> std::process::ExitCode {
    bitnet_cli::main()
}
// ANCHOR_END: main
