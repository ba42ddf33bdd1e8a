//! e2e-backup: end-to-end encrypted backups into a LUKS2 container that lives as a sparse file on an
//! untrusted SSH server. One module per layer of the stack (see docs/contract.md); the binaries in
//! `bins/` are thin wrappers around [`cmd`].

pub mod cli;
pub mod cmd;
pub mod config;
pub mod container;
pub mod error;
pub mod exec;
pub mod filesystem;
pub mod kernel;
pub mod lease;
pub mod manifest;
pub mod outcome;
pub mod partial;
pub mod paths;
pub mod progress;
pub mod remote;
pub mod retention;
pub mod rollback;
pub mod size;
pub mod snapshots;
pub mod stack;
pub mod summary;
pub mod timefmt;
pub mod unchanged;

pub use error::{Code, Fail};
