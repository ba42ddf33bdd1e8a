//! Naming the real cause of a failed step: a lost link or a full server, not the failed read.

use crate::error::{code_of, fail, Code};
use crate::exec::Runner;
use crate::paths::JobPaths;
use crate::remote::{self, Remote};
use crate::size::human;
use std::time::Duration;

/// Below this much free space on the server after a failed write, the failure is "server full".
pub(crate) const SERVER_FULL_BELOW: u64 = 16 << 20;

/// A step that failed because the link or sshfs died must say so, not what its failed read or write
/// would have meant ("not a LUKS container", "short read", "No such file" send a user hunting for
/// damage). Candidates: runtime failures, and `isLuks`'s refusal (`refused`); sshfs decides by
/// whether it is still mounted and answers a statfs. With the link fine, a server with almost no free
/// space left is named as the cause (exit 6). `seen`: this run had seen the job's sshfs mounted.
pub(crate) fn explain_lost_link(
    run: &Runner,
    p: &JobPaths,
    r: &Remote,
    seen: bool,
    e: anyhow::Error,
    refused: bool,
) -> anyhow::Error {
    let candidate = match code_of(&e) {
        Code::Runtime => true,
        Code::Refused => refused,
        _ => false,
    };
    if !candidate || run.is_dry() {
        return e;
    }
    let host = &r.host;
    // libfuse detaches the mount (lazily) when sshfs exits on a dead link, so "no longer mounted"
    // counts as lost too, once this run had seen it mounted. The step's I/O error can come a moment
    // before sshfs has gone (it fails the requests it has, then exits): a few seconds to see it go,
    // before a statfs that still answers is taken for a link that works.
    let lost = seen && {
        let gone = || !remote::is_mounted(p) || remote::sshfs_pids(&p.kernel, &p.remote).is_empty();
        let mut went = gone();
        for _ in 0..6 {
            if went {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            went = gone();
        }
        went || !remote::responsive(p, Duration::from_secs(15))
    };
    if std::fs::remove_file(&p.forced).is_ok() {
        // Not the link: e2e-close --force took the stack down under this run.
        return fail(
            Code::Locked,
            format!("the stack was closed under this run by e2e-close --force ({e:#}): this run made no snapshot; run again"),
        );
    }
    if !lost {
        // Writes into the sparse container fail (EIO under ext4) when the server's disk fills up.
        let free = seen.then(|| remote::server_free(p).ok()).flatten();
        return match free {
            Some(f) if f < SERVER_FULL_BELOW => fail(
                Code::NoSpace,
                format!("the server's filesystem is full ({} free) ({e:#}): free space on {host}, then run again; earlier snapshots are not affected", human(f)),
            ),
            _ => e,
        };
    }
    // This run gives up on the link: its connection must never write again (see remote::fence).
    {
        let _cleanup = run.unwinding();
        if let Err(f) = remote::fence(run, p, r.port) {
            crate::warning!("fencing the dead connection failed: {f:#}");
        }
    }
    fail(
        Code::Remote,
        format!("lost the connection to {host} ({e:#}): check the network, then run again; earlier snapshots are not affected"),
    )
}
