//! e2e-setup: see `e2e-setup --help` and e2e_backup::cli::SetupCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::SetupCli>("e2e-setup", e2e_backup::cmd::setup)
}
