//! e2e-sync: see `e2e-sync --help` and e2e_backup::cli::SyncCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::SyncCli>("e2e-sync", e2e_backup::cmd::sync)
}
