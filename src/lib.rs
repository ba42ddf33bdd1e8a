//! e2e-backup: end-to-end encrypted backups into a LUKS2 container that lives as a sparse file on an
//! untrusted SSH server. One module per layer of the stack (see docs/contract.md); the binaries in
//! `bins/` are thin wrappers around [`ops`].

pub mod cli;
pub mod config;
pub mod container;
pub mod error;
pub mod exec;
pub mod filesystem;
pub mod ops;
pub mod paths;
pub mod remote;
pub mod rollback;
pub mod snapshots;
pub mod timefmt;

pub use error::{Code, Fail};
