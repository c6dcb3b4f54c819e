//! The `entra-rotator` command; everything lives in the library's [`entra_rotator::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    entra_rotator::cli::main()
}
