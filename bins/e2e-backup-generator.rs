//! e2e-backup-generator: see e2e-backup-generator(8) and e2e_backup::cmd::generator.
fn main() -> std::process::ExitCode {
    e2e_backup::cmd::generator::main()
}
