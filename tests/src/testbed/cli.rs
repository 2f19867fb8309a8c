//! Command-line entry of `kubeca-testbed`: `up`, `down`, `report`, and dispatch to the component subcommands.
//!
//! (Engineers: read /work/main/tests/DEV-AGREEMENT.md first: ownership, contract, rules, deadline.)

/// Parses the command line and runs it; the process's exit code.
pub fn main() -> std::process::ExitCode {
    eprintln!("kubeca-testbed: not built yet");
    std::process::ExitCode::from(2)
}
