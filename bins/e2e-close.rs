//! e2e-close: see `e2e-close --help` and e2e_backup::cli::CloseCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::CloseCli>("e2e-close", e2e_backup::cmd::close)
}
