//! Cross-host exclusion for a container whose filesystem has none of its own (btrfs; ext4 has
//! multi-mount protection): bring-up takes the lease before the read-write mount and starts a keeper
//! process, `e2e-open --keep-lease` ([`take_and_keep`]), that beats until teardown releases it
//! (`e2e-close --release-lease`, after the unmount, before `cryptsetup close`).
//!
//! The lease is one 4 KiB block: the first of the opened LUKS mapping, which btrfs never uses (it
//! keeps the first MiB of its device free; its superblock is at 64 KiB). It is encrypted like
//! everything else in the container: the server sees a 4 KiB write every few seconds while the
//! container is open, which it can tell from the open sshfs connection anyway.
//!
//! The protocol is ext4 MMP's, so it needs no clock shared between hosts and no step by hand after
//! a crash:
//! - acquire: read the block. Free (or never written): claim. Held: wait [`Lease::wait`] and read
//!   again. Changed: a live holder, refused (named). Unchanged: the holder stopped without releasing
//!   (a crash): claim.
//! - claim: write a random sequence number, wait [`Lease::wait`], read again: still ours, held;
//!   otherwise another host claimed at the same moment: refused.
//! - hold: every interval, read (still ours, else the container is lost: fence) and write seq + 1.
//! - release: write the block free.

use crate::error::{fail, Code};
use crate::exec::{Cmd, Runner, Undo};
use crate::paths::JobPaths;
use anyhow::{Context, Result};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

/// The block's size and alignment (direct I/O on the mapping).
pub const BLOCK: usize = 4096;
/// The holder's heartbeat: MMP's default. A taker waits 2 × this + 1 s.
pub const INTERVAL_MS: u32 = 5000;
const MAGIC: &[u8; 16] = b"e2e-backup lease";
const VERSION: u32 = 1;

/// What the lease block says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub held: bool,
    /// Changes at every heartbeat of the holder.
    pub seq: u64,
    /// The holder's heartbeat interval.
    pub interval_ms: u32,
    pub pid: u32,
    /// The holder's node name (inside the encryption: the server does not see it).
    pub holder: String,
}

/// MMP's wait for a holder beating every `interval_ms`: two intervals and a second.
fn mmp_wait(interval_ms: u32) -> Duration {
    Duration::from_millis(2 * u64::from(interval_ms) + 1000)
}

impl Lease {
    /// How long a reader waits for a live holder's next heartbeat: MMP's 2 × interval + 1 s.
    pub fn wait(&self, own_interval_ms: u32) -> Duration {
        mmp_wait(self.interval_ms.max(own_interval_ms))
    }

    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..16].copy_from_slice(MAGIC);
        b[16..20].copy_from_slice(&VERSION.to_le_bytes());
        b[20..24].copy_from_slice(&u32::from(self.held).to_le_bytes());
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        b[32..36].copy_from_slice(&self.interval_ms.to_le_bytes());
        b[36..40].copy_from_slice(&self.pid.to_le_bytes());
        let name = self.holder.as_bytes();
        let n = name.len().min(64);
        b[40..40 + n].copy_from_slice(&name[..n]);
        let sum = crc(&b[..104]);
        b[104..108].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// The lease in `b`; `None`: never written (a new container's zeros), or torn or not ours — to
    /// be treated as held by someone unknown until it stops changing.
    pub fn decode(b: &[u8]) -> Option<Lease> {
        if b.len() < 108 || &b[..16] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        if u32_at(16) != VERSION || u32_at(104) != crc(&b[..104]) {
            return None;
        }
        let name = &b[40..104];
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Some(Lease {
            held: u32_at(20) == 1,
            seq: u64::from_le_bytes(b[24..32].try_into().unwrap()),
            interval_ms: u32_at(32),
            pid: u32_at(36),
            holder: String::from_utf8_lossy(&name[..end]).into_owned(),
        })
    }
}

/// What a reader makes of two reads of the block taken [`Lease::wait`] apart.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Free, or a holder that stopped beating: claim it.
    Claim,
    /// A live holder (its node name if the block names one).
    Refuse(Option<String>),
}

/// The first read alone: a free block (or one never written: all zeros) can be claimed at once;
/// anything else needs a second read after the wait.
pub fn free(first: &[u8]) -> bool {
    match Lease::decode(first) {
        Some(l) => !l.held,
        None => first.iter().all(|&c| c == 0),
    }
}

/// Two reads of a block that was not free: a holder is alive if the block changed in between.
pub fn verdict(first: &[u8], second: &[u8]) -> Verdict {
    if first == second {
        return Verdict::Claim;
    }
    match Lease::decode(second) {
        Some(l) if !l.held => Verdict::Claim, // released in the meantime
        Some(l) => Verdict::Refuse(Some(l.holder)),
        None => Verdict::Refuse(None),
    }
}

/// A claim checked after the wait: the block must still hold our sequence number.
pub fn still_ours(block: &[u8], seq: u64) -> bool {
    Lease::decode(block).is_some_and(|l| l.held && l.seq == seq)
}

#[repr(C, align(4096))]
struct Aligned([u8; BLOCK]);

/// The block as the server holds it now: direct I/O, past every cache of this host (the mapping's,
/// the loop's, sshfs's), as ext4's MMP reads its block.
pub fn read(dev: &Path) -> Result<[u8; BLOCK]> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)
        .with_context(|| format!("lease: cannot open {}", dev.display()))?;
    let mut b = Box::new(Aligned([0; BLOCK]));
    f.read_exact_at(&mut b.0, 0)
        .with_context(|| format!("lease: cannot read {}", dev.display()))?;
    Ok(b.0)
}

/// Write the block through to the server (direct and synchronous I/O).
pub fn write(dev: &Path, l: &Lease) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT | nix::libc::O_DSYNC)
        .open(dev)
        .with_context(|| format!("lease: cannot open {}", dev.display()))?;
    let b = Box::new(Aligned(l.encode()));
    f.write_all_at(&b.0, 0)
        .with_context(|| format!("lease: cannot write {}", dev.display()))
}

fn refused(holder: Option<&str>) -> anyhow::Error {
    let who = holder
        .filter(|h| !h.is_empty())
        .map(|h| format!(" (held by host {h})"))
        .unwrap_or_default();
    fail(
        Code::Refused,
        format!("container is in use by another host{who}: close it there first (the btrfs container's lease)"),
    )
}

/// Take the lease of the opened container `dev` for host `me` (the keeper's pid to be: `pid`), or
/// refuse with exit 4 naming the holder. Returns the sequence number the keeper goes on from. Costs
/// one wait of 2 × interval + 1 s (two when a crashed holder's lease is taken over).
pub fn take(dev: &Path, me: &str, pid: u32) -> Result<u64> {
    let first = read(dev)?;
    if !free(&first) {
        let l = Lease::decode(&first);
        let wait = l
            .as_ref()
            .map_or(mmp_wait(INTERVAL_MS), |l| l.wait(INTERVAL_MS));
        crate::progress::info(&format!(
            "lease: held by {}; waiting {} s for its next beat",
            l.as_ref()
                .map_or("an unknown holder", |l| l.holder.as_str()),
            wait.as_secs()
        ));
        std::thread::sleep(wait);
        let second = read(dev)?;
        if let Verdict::Refuse(who) = verdict(&first, &second) {
            return Err(refused(who.as_deref()));
        }
        if let Some(l) = l.filter(|l| l.held) {
            crate::notice!(
                "the lease of host {} was not renewed for {} s: its holder stopped without closing (a crash); taking it over",
                l.holder,
                wait.as_secs()
            );
        }
    }
    let mut r = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut r)?;
    let seq = u64::from_le_bytes(r);
    let mine = Lease {
        held: true,
        seq,
        interval_ms: INTERVAL_MS,
        pid,
        holder: me.trim().to_string(),
    };
    write(dev, &mine)?;
    let wait = mine.wait(INTERVAL_MS);
    crate::progress::info(&format!(
        "lease: claimed; checking for {} s that no other host claims it too",
        wait.as_secs()
    ));
    std::thread::sleep(wait);
    let back = read(dev)?;
    if !still_ours(&back, seq) {
        return Err(refused(Lease::decode(&back).map(|l| l.holder).as_deref()));
    }
    Ok(seq)
}

/// Release this host's lease on `dev`: stop its keeper (pid in `pid_file`), which writes the block
/// free on SIGTERM; if the keeper is gone without doing so, write it free here, but only if the
/// block names host `me` (never another host's lease).
pub fn release(dev: &Path, pid_file: &Path, me: &str) -> Result<()> {
    let keeper = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map(nix::unistd::Pid::from_raw);
    if let Some(pid) = keeper {
        use nix::sys::signal::{kill, Signal};
        let alive = || kill(pid, None).is_ok();
        let _ = kill(pid, Signal::SIGTERM);
        let until = std::time::Instant::now() + Duration::from_millis(3 * u64::from(INTERVAL_MS));
        while alive() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive() {
            crate::warning!("the lease keeper (pid {pid}) did not stop: killing it");
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(pid_file);
    if dev.exists() {
        let b = read(dev)?;
        if let Some(l) = Lease::decode(&b).filter(|l| l.held && l.holder == me.trim()) {
            write(
                dev,
                &Lease {
                    held: false,
                    seq: l.seq.wrapping_add(1),
                    ..l
                },
            )?;
        }
    }
    Ok(())
}

/// A sibling binary of this one (the six are installed side by side).
fn sibling(name: &str) -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

/// Take the lease of the job's opened container and start its keeper; undo gets the release
/// (also when the keeper does not start: the release frees a block that names this host).
pub fn take_and_keep(run: &Runner, undo: &mut Undo, p: &JobPaths) -> Result<()> {
    let seq = if run.is_dry() {
        run.note("a real run takes the container's lease here (2 x 5 s + 1 s of waiting), then:");
        0
    } else {
        take(&p.dm_dev, &p.kernel.hostname(), std::process::id())?
    };
    undo.push(release_cmd(&p.job));
    if let Some(mut c) = run.spawn(&keeper_cmd(&p.job, seq))? {
        c.wait()?;
        // Teardown finds the keeper by its pid file: it must be there before anything can fail.
        for _ in 0..100 {
            if p.lease_keeper.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !p.lease_keeper.exists() {
            return Err(fail(
                Code::Runtime,
                format!(
                    "the lease keeper did not start (no {}): see its line above",
                    p.lease_keeper.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The keeper, started once the lease is taken: in its own session, so that it outlives a by-hand
/// `e2e-open` (under systemd it stays in e2e-open@'s cgroup).
fn keeper_cmd(job: &str, seq: u64) -> Cmd {
    Cmd::new("setsid")
        // Not a run of the chain whose outcome e2e-backup@ reports (`outcome`).
        .env(crate::outcome::ENV, "")
        .arg("-f")
        .arg(sibling("e2e-open"))
        .arg("--keep-lease")
        .arg(seq.to_string())
        .arg(job)
}

/// The teardown step that stops the keeper and leaves the lease free ([`release`]).
pub fn release_cmd(job: &str) -> Cmd {
    Cmd::new(&sibling("e2e-close").display().to_string())
        .arg("--release-lease")
        .arg(job)
}

/// CRC-32 (IEEE) of `data`: a torn write of the block must not read as a lease.
fn crc(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(seq: u64, holder: &str) -> Lease {
        Lease {
            held: true,
            seq,
            interval_ms: 5000,
            pid: 42,
            holder: holder.into(),
        }
    }

    #[test]
    fn a_block_reads_back_as_written_and_a_torn_one_does_not() {
        let l = held(7, "client-a");
        let b = l.encode();
        assert_eq!(Lease::decode(&b), Some(l));
        let mut torn = b;
        torn[30] ^= 1;
        assert_eq!(Lease::decode(&torn), None);
        assert_eq!(Lease::decode(&[0u8; BLOCK]), None);
        assert_eq!(crc(b"123456789"), 0xCBF4_3926); // the standard check value
    }

    #[test]
    fn verdicts() {
        let zeros = [0u8; BLOCK];
        assert!(free(&zeros));
        let released = Lease {
            held: false,
            ..held(9, "client-a")
        }
        .encode();
        assert!(free(&released));
        let a1 = held(1, "client-a").encode();
        let a2 = held(2, "client-a").encode();
        assert!(!free(&a1));
        // A holder that beat between the reads is alive; one that did not is gone.
        assert_eq!(verdict(&a1, &a2), Verdict::Refuse(Some("client-a".into())));
        assert_eq!(verdict(&a1, &a1), Verdict::Claim);
        assert_eq!(verdict(&a1, &released), Verdict::Claim);
        // Garbage that keeps changing is someone's: refused, unnamed.
        let mut g = [1u8; BLOCK];
        let g1 = g;
        g[0] = 2;
        assert!(!free(&g1));
        assert_eq!(verdict(&g1, &g), Verdict::Refuse(None));
        assert!(still_ours(&a2, 2));
        assert!(!still_ours(&a2, 1));
        assert!(!still_ours(&released, 9));
        assert_eq!(
            held(1, "x").wait(2000),
            std::time::Duration::from_millis(11_000)
        );
    }
}
