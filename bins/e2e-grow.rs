//! e2e-grow: see `e2e-grow --help` and e2e_backup::cli::GrowCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::GrowCli>("e2e-grow", e2e_backup::cmd::grow)
}
