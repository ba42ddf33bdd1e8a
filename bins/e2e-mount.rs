//! e2e-mount: see `e2e-mount --help` and e2e_backup::cli::MountCli.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::main::<e2e_backup::cli::MountCli>("e2e-mount", e2e_backup::cmd::mount)
}
