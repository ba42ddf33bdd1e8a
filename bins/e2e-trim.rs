//! e2e-trim: see `e2e-trim --help` and e2e_backup::cli::TrimCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::TrimCli>("e2e-trim", e2e_backup::cmd::trim)
}
