//! `kubeca-testbed`: brings the local kubeadm-style HA cluster up and down, and runs its components.

fn main() -> std::process::ExitCode {
    kubeca_tests::testbed::cli::main()
}
