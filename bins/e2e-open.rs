//! e2e-open: see `e2e-open --help` and e2e_backup::cli::OpenCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::OpenCli>("e2e-open", e2e_backup::cmd::open)
}
