//! One file per command: each holds its binary's flow (parse → stack → steps) and nothing else.
//! Every command returns the path to print on success.

mod close;
mod diff;
pub mod generator;
#[cfg(test)]
mod golden;
mod grow;
mod history;
mod keep;
mod list;
mod mount;
mod open;
mod prune;
mod restore;
mod setup;
mod sync;
mod trim;
mod verify;

pub use close::close;
pub use grow::grow;
pub use keep::keep;
pub use mount::mount;
pub use open::open;
pub use setup::setup;
pub use sync::sync;
pub use trim::trim;

use crate::error::{code_of, is_repeated};
use crate::outcome;
use crate::progress::print_result;
use crate::progress::{stderr_line, Level};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run one binary: parse, call `f`, print the produced path, map errors to one line and an exit code.
pub fn main<C: clap::Parser>(name: &str, f: fn(C) -> Result<Option<PathBuf>>) -> ExitCode {
    let cli = C::parse();
    crate::exec::catch_signals();
    outcome::begin(name);
    // A signal that came while the run was closing, after its result was complete, still ends it
    // with the signal's code; the result is printed first.
    let r = f(cli).and_then(|p| {
        if let Err(e) = crate::exec::check_interrupted_after(p.as_deref()) {
            p.as_deref().map(print_result);
            return Err(e);
        }
        Ok(p)
    });
    let (code, text) = match &r {
        Ok(p) => (
            0,
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        Err(e) => (
            code_of(e) as u8,
            format!("{name}: error: {e:#}").replace('\n', " "),
        ),
    };
    outcome::end(name, code, &text);
    match r {
        Ok(Some(p)) => {
            print_result(&p);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) if is_repeated(&e) => {
            stderr_line(Level::Notice, &format!("{name}: backup failed: {e:#}"));
            ExitCode::from(code)
        }
        Err(_) => {
            stderr_line(Level::Err, &text);
            ExitCode::from(code)
        }
    }
}

/// The JSON a `--json` mode prints for `value`, compared byte for byte with
/// tests/golden/NAME.json (`E2E_UPDATE_GOLDEN=1` rewrites it): the schemas of docs/contract.md,
/// pinned.
#[cfg(test)]
pub(crate) fn check_json(name: &str, value: &impl serde::Serialize) {
    let got = serde_json::to_string_pretty(value).unwrap() + "\n";
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    if std::env::var_os("E2E_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (E2E_UPDATE_GOLDEN=1 writes it)", golden.display()));
    assert_eq!(got, want, "{} differs", golden.display());
}
