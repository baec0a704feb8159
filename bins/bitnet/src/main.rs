//! The shipped `bitnet` binary: the CLI library with the built-in plugins.

fn main() -> std::process::ExitCode {
    bitnet_cli::main()
}
