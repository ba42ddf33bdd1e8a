//! e2e-keep (on the server): see `e2e-keep --help` and e2e_backup::cli::KeepCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::KeepCli>("e2e-keep", e2e_backup::cmd::keep)
}
