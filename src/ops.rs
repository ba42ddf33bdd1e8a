//! What each binary does, composed from the layer modules. Each public function is one binary's
//! whole job and returns the path to print on success.

use crate::cli::{CloseCli, Common, GrowCli, MountCli, OpenCli, SyncCli, TrimCli};
use crate::config::{self, parse_size_spec, Job};
use crate::container::{self as ct, OpenOpts};
use crate::error::{code_of, fail, Code, Fail};
use crate::exec::{Arg, Cmd, Runner};
use crate::filesystem as fsys;
use crate::paths::{dm_slaves, loops_backed_by, mount_at, JobPaths};
use crate::remote;
use crate::rollback;
use crate::snapshots::{self, human, INFLIGHT, PRUNING};
use crate::timefmt;
use anyhow::Result;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Run one binary: parse, call `f`, print the produced path, map errors to one line and an exit code.
pub fn main<C: clap::Parser>(name: &str, f: fn(C) -> Result<Option<PathBuf>>) -> ExitCode {
    let cli = C::parse();
    crate::exec::catch_signals();
    match f(cli) {
        Ok(Some(p)) => {
            // In a dry-run stdout is a script: the path becomes a comment.
            let mark = if crate::exec::dry_run_active() {
                "# "
            } else {
                ""
            };
            print_stdout(&format!("{mark}{}\n", p.display()));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("{name}: error: {msg}");
            ExitCode::from(code_of(&e) as u8)
        }
    }
}

/// Write results to stdout in one piece. A reader that has gone away (`e2e-sync --list | grep -q X`,
/// `| head -1`) is not an error of ours: the output is dropped instead of panicking, which is what
/// `println!` does on EPIPE (Rust ignores SIGPIPE).
pub fn print_stdout(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
}

/// Per-run context: the runner and the job's runtime paths.
pub struct Ctx {
    pub run: Runner,
    pub paths: JobPaths,
    pub common: Common,
    /// The job's sshfs was seen mounted during this run: if it is gone at an error, the link died.
    remote_seen: std::cell::Cell<bool>,
    /// --accept-rollback: open a container that fails the check against the client's state.
    pub accept_rollback: std::cell::Cell<bool>,
    /// The container passed that check (false: accepted with --accept-rollback; never prune then).
    consistent: std::cell::Cell<bool>,
    /// The server's ssh port, once the job file was read (for fencing a dead connection).
    port: std::cell::Cell<u16>,
    /// The LUKS UUID read at the history check, recorded again with the new state: the UUID of the
    /// container this run opened (and one `cryptsetup luksUUID` less).
    uuid: std::cell::OnceCell<Option<String>>,
}

impl Ctx {
    pub fn new(common: &Common) -> Result<Self> {
        Self::with_runner(common, Runner::new(common.dry_run, common.verbose))
    }

    pub fn with_runner(common: &Common, run: Runner) -> Result<Self> {
        Ok(Ctx {
            run,
            paths: JobPaths::new(&common.job)?,
            common: common.clone(),
            remote_seen: Default::default(),
            accept_rollback: Default::default(),
            consistent: std::cell::Cell::new(true),
            port: std::cell::Cell::new(22),
            uuid: Default::default(),
        })
    }

    pub fn job(&self) -> Result<Job> {
        let c = &self.common;
        let j = config::load(
            &c.job,
            c.config.as_deref(),
            c.config_dir.as_deref(),
            &c.overrides,
        )?;
        self.port.set(j.remote.port);
        Ok(j)
    }

    pub fn container_file(&self, job: &Job) -> PathBuf {
        self.paths.remote.join(&job.container.file)
    }

    fn fs_mounted(&self) -> bool {
        mount_at(&self.paths.fs).is_some()
    }

    /// `fs/` is the filesystem of `/dev/mapper/e2e-<job>` (same device number), checked before every
    /// step that writes into it: a closed or lost container must not leave the run writing into the
    /// bare directory on the client.
    fn assert_container_mounted(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.run.is_dry() {
            return Ok(());
        }
        let p = &self.paths;
        let fs = std::fs::metadata(&p.fs).map(|m| m.dev());
        let dm = std::fs::metadata(&p.dm_dev).map(|m| m.rdev());
        match (fs, dm) {
            (Ok(a), Ok(b)) if a == b && self.fs_mounted() => Ok(()),
            _ => Err(fail(
                Code::Runtime,
                format!(
                    "{} is no longer the container's filesystem ({} closed under this run?): stopped before writing",
                    p.fs.display(),
                    p.dm_dev.display()
                ),
            )),
        }
    }

    /// The container's LUKS UUID (`cryptsetup luksUUID`, read from the header: no key needed).
    fn luks_uuid(&self, job: &Job) -> Result<Option<String>> {
        if let Some(u) = self.uuid.get() {
            return Ok(u.clone());
        }
        let out = self.run.query(&ct::luks_uuid(&self.container_file(job)))?;
        let u = out.map(|o| o.trim().to_string()).filter(|u| !u.is_empty());
        if !self.run.is_dry() {
            let _ = self.uuid.set(u.clone());
        }
        Ok(u)
    }

    /// sha256 of snapshot STAMP's manifest as it is now (`None`: no manifest).
    fn manifest_digest(&self, stamp: &str) -> Result<Option<String>> {
        let m = snapshots::manifest_path(&self.paths.fs, stamp);
        if std::fs::symlink_metadata(&m).is_err() {
            return Ok(None);
        }
        let out = self.run.query(&Cmd::new("sha256sum").arg("--").arg(&m))?;
        Ok(out.and_then(|o| o.split_whitespace().next().map(str::to_string)))
    }

    /// Is this the container, and the history, this host last wrote? Checked on every open that
    /// reads or writes snapshots (sync, list, restore, verify); refuses with exit 4 otherwise.
    fn check_history(&self, job: &Job) -> Result<()> {
        if self.run.is_dry() || !self.fs_mounted() {
            return Ok(());
        }
        let state = rollback::state_file(&job.name);
        let Some(r) = rollback::remembered(&state) else {
            return Ok(()); // this host never wrote here: nothing to compare against
        };
        let (stamps, _) = snapshots::scan(&self.paths.fs);
        let names: Vec<&str> = stamps.iter().map(|s| s.0.as_str()).collect();
        let uuid = self.luks_uuid(job)?;
        let digest = self.manifest_digest(&r.stamp)?;
        let seen = rollback::Seen {
            stamps: &names,
            luks_uuid: uuid.as_deref(),
            manifest_sha256: digest.as_deref(),
        };
        let ok = rollback::gate(&state, &seen, self.accept_rollback.get())?;
        self.consistent.set(ok);
        Ok(())
    }
}

/// Commands to run, newest first, if a multi-step operation fails half-way.
struct Undo<'a> {
    run: &'a Runner,
    steps: Vec<Cmd>,
}

impl<'a> Undo<'a> {
    fn new(run: &'a Runner) -> Self {
        Undo {
            run,
            steps: Vec::new(),
        }
    }
    fn push(&mut self, c: Cmd) {
        self.steps.push(c);
    }
    fn done(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let _cleanup = self.run.unwinding();
        while let Some(c) = self.steps.pop() {
            if let Err(e) = self.run.run(&c) {
                eprintln!("warning: cleanup step failed: {e:#}");
            }
        }
    }
}

/// What [`ensure_open`] found or did, so the caller can leave the stack as it found it.
pub struct Stack {
    pub mounted_remote: bool,
    pub opened: bool,
    /// The copy-on-write loop device of a read-only overlay this open made (journal replayed locally).
    pub overlay: Option<Arg>,
    /// The loop device under the container (`"$loop"` in a dry-run that attached it).
    pub loop_dev: Option<Arg>,
    /// Container file size if known.
    pub size: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// e2e-mount

pub fn mount(cli: MountCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    if cli.foreground {
        return mount_foreground(&ctx, &job);
    }
    remote::mount(&ctx.run, &job.remote, &ctx.paths)?;
    Ok(Some(ctx.paths.remote.clone()))
}

fn mount_foreground(ctx: &Ctx, job: &Job) -> Result<Option<PathBuf>> {
    use nix::sys::signal::{kill, SigSet, Signal};
    use nix::unistd::Pid;
    let p = &ctx.paths;
    if remote::is_mounted(p) {
        return Err(fail(
            Code::Runtime,
            format!(
                "{} is already mounted by another process: run e2e-close {} first",
                p.remote.display(),
                p.job
            ),
        ));
    }
    remote::make_dirs(&ctx.run, p)?;
    // Block the signals we wait for before starting sshfs (std resets the mask in the child).
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    set.thread_block()?;
    let mut started = None;
    remote::mount_or_diagnose(&ctx.run, &job.remote, || {
        let Some(mut child) = ctx
            .run
            .spawn(&remote::sshfs(&job.remote, &p.remote, true))?
        else {
            return Ok(()); // dry-run
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !remote::is_mounted(p) {
            if let Some(st) = child.try_wait()? {
                return Err(fail(
                    Code::Remote,
                    format!("sshfs exited ({st}) before the mount was up"),
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(fail(Code::Remote, "sshfs did not mount within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        started = Some(child);
        Ok(())
    })?;
    let Some(mut child) = started else {
        return Ok(Some(p.remote.clone())); // dry-run
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    print_stdout(&format!("{}\n", p.remote.display()));
    let pid = Pid::from_raw(child.id() as i32);
    let result = loop {
        let sig = set.wait()?;
        match sig {
            Signal::SIGCHLD => {
                if let Some(st) = child.try_wait()? {
                    break Err(fail(
                        Code::Remote,
                        format!("sshfs exited ({st}): link to {} lost", job.remote.host),
                    ));
                }
            }
            _ => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                break Ok(None);
            }
        }
    };
    // Unmounting ends sshfs's loop cleanly (SIGTERM alone left it running until the next request).
    let unmounted = remote::unmount(&ctx.run, p, false, job.remote.port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait()?.is_none() {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
    unmounted?;
    result
}

// ---------------------------------------------------------------------------------------------
// e2e-open

pub fn open(cli: OpenCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    ensure_open(
        &ctx,
        &job,
        cli.create || job.container.create,
        cli.read_only,
    )?;
    Ok(Some(ctx.paths.fs.clone()))
}

/// Below this much free space on the server after a failed write, the failure is "server full".
const SERVER_FULL_BELOW: u64 = 16 << 20;

/// A step that failed because the link or sshfs died must say so, not what its failed read or write
/// would have meant ("not a LUKS container", "short read", "No such file" send a user hunting for
/// damage). Candidates: runtime failures, and `isLuks`'s refusal (`refused`); sshfs decides by
/// whether it is still mounted and answers a statfs. With the link fine, a server with almost no free
/// space left is named as the cause (exit 6).
fn explain_lost_link(ctx: &Ctx, host: &str, e: anyhow::Error, refused: bool) -> anyhow::Error {
    let candidate = match code_of(&e) {
        Code::Runtime => true,
        Code::Refused => refused,
        _ => false,
    };
    // libfuse detaches the mount (lazily) when sshfs exits on a dead link, so "no longer mounted"
    // counts as lost too, once this run had seen it mounted.
    let lost = ctx.remote_seen.get()
        && (!remote::is_mounted(&ctx.paths)
            || !remote::responsive(&ctx.paths, Duration::from_secs(15)));
    if !candidate || ctx.run.is_dry() {
        return e;
    }
    if !lost {
        // Writes into the sparse container fail (EIO under ext4) when the server's disk fills up.
        let free = ctx
            .remote_seen
            .get()
            .then(|| remote::server_free(&ctx.paths).ok())
            .flatten();
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
        let _cleanup = ctx.run.unwinding();
        if let Err(f) = remote::fence(&ctx.run, &ctx.paths, ctx.port.get()) {
            eprintln!("warning: fencing the dead connection failed: {f:#}");
        }
    }
    fail(
        Code::Remote,
        format!("lost the connection to {host} ({e:#}): check the network, then run again; earlier snapshots are not affected"),
    )
}

/// Bring the stack up to a mounted filesystem (idempotent), creating the container if allowed.
pub fn ensure_open(ctx: &Ctx, job: &Job, create: bool, read_only: bool) -> Result<Stack> {
    open_stack(ctx, job, create, read_only)
        .map_err(|e| explain_lost_link(ctx, &job.remote.host, e, false))
}

fn open_stack(ctx: &Ctx, job: &Job, create: bool, read_only: bool) -> Result<Stack> {
    let p = &ctx.paths;
    let run = &ctx.run;
    let file = ctx.container_file(job);
    let existing_loop = || {
        loops_backed_by(&file, false)
            .into_iter()
            .next()
            .map(|l| Arg::from(&l))
    };
    let size_now = || std::fs::symlink_metadata(&file).ok().map(|m| m.len());
    if let Some(m) = mount_at(&p.fs) {
        let ro = m.options.split(',').any(|o| o == "ro");
        if ro && !read_only {
            return Err(fail(
                Code::Runtime,
                format!(
                    "{} is mounted read-only (a restore, or ext4 remounted it after an I/O error): run e2e-close {} and retry",
                    p.fs.display(),
                    job.name
                ),
            ));
        }
        return Ok(Stack {
            mounted_remote: false,
            opened: false,
            overlay: None,
            loop_dev: existing_loop(),
            size: size_now(),
        });
    }
    let key = job.key_file()?; // before touching anything
    let mounted_remote = remote::mount(run, &job.remote, p)?;
    ctx.remote_seen.set(true);
    // A dry-run cannot look inside a remote it has not really mounted.
    let blind = run.is_dry() && mounted_remote;
    let mut undo = Undo::new(run);
    if mounted_remote {
        undo.push(Cmd::new(remote::fusermount()).arg("-u").arg(&p.remote));
    }
    let dev = p.dm_dev.as_path();
    let exists = if blind {
        !create
    } else {
        container_exists(&file)?
    };
    let mut created = false;
    let mut stack = Stack {
        mounted_remote,
        opened: true,
        overlay: None,
        loop_dev: None,
        size: if blind { None } else { size_now() },
    };

    if dm_slaves(&p.dm_name).is_some() {
        // Half-open from an earlier run: the mapping is there, only fsck + mount are missing.
        stack.loop_dev = existing_loop();
    } else if !exists {
        if !create {
            return Err(fail(
                Code::Config,
                format!(
                    "container {} does not exist: run e2e-open --create {} (or set container.create = true in {})",
                    file.display(),
                    job.name,
                    job.origin
                ),
            ));
        }
        if read_only {
            return Err(fail(
                Code::Config,
                "cannot create a container with --read-only",
            ));
        }
        let size = job.container.size.ok_or_else(|| {
            fail(
                Code::Config,
                format!(
                    "{}: container.size: required to create the container",
                    job.origin
                ),
            )
        })?;
        if blind {
            run.note("the remote is not mounted yet, so this script guards against an existing container:");
            run.run(&Cmd::new("test").arg("!").arg("-e").arg(&file))?;
            run.run(&Cmd::new("test").arg("!").arg("-L").arg(&file))?;
        }
        // Built under a temporary name and renamed into place once formatted: an interrupted
        // creation leaves only that name, which the next creation removes.
        let building = ct::building_name(&file);
        if std::fs::symlink_metadata(&building).is_ok() {
            eprintln!(
                "note: removing {}, left by an interrupted creation",
                building.display()
            );
            run.run(&Cmd::new("rm").arg("-f").arg(&building))?;
        }
        run.run(&ct::create_exclusive(&building))?;
        undo.push(Cmd::new("rm").arg("-f").arg(&building));
        run.run(&ct::truncate(&building, size))?;
        let lp = run.capture(&ct::losetup_attach(&building, false), "loop")?;
        undo.push(ct::losetup_detach(&lp));
        run.run(&ct::luks_format(&lp, &key, ct::test_pbkdf()))?;
        run.run(&ct::luks_open(
            &lp,
            &key,
            &p.dm_name,
            &OpenOpts {
                read_only: false,
                allow_discards: false,
            },
        ))?;
        undo.push(ct::luks_close(&p.dm_name));
        run.run(&fsys::mkfs(dev, &p.dm_name))?;
        if !blind && container_exists(&file)? {
            return Err(fail(
                Code::Refused,
                format!(
                    "{} appeared on the server while this run created the container: another host creates it too; nothing replaced",
                    file.display()
                ),
            ));
        }
        // Renamed while attached: the loop device keeps the open file under its new name.
        run.run(&Cmd::new("mv").arg("-T").arg(&building).arg(&file))?;
        stack.loop_dev = Some(lp);
        stack.size = Some(size);
        created = true;
    } else {
        if !blind {
            check_access(&file, &job.remote.user, false)?;
        }
        run.run(&ct::is_luks(&file))
            .map_err(|e| explain_lost_link(ctx, &job.remote.host, e, true))?;
        if !read_only && !blind {
            check_access(&file, &job.remote.user, true)?;
        }
        let lp = match existing_loop() {
            Some(l) => l,
            None => {
                let l = run.capture(&ct::losetup_attach(&file, read_only), "loop")?;
                undo.push(ct::losetup_detach(&l));
                l
            }
        };
        // No separate key test first: a wrong key fails here, and the undo detaches the loop.
        let shown = file.display().to_string();
        let opts = OpenOpts {
            read_only,
            allow_discards: false,
        };
        run.run(
            &ct::luks_open(&lp, &key, &p.dm_name, &opts)
                .on_fail(move |rc, _| (rc == 2).then(|| ct::wrong_key(&shown))),
        )?;
        undo.push(ct::luks_close(&p.dm_name));
        stack.loop_dev = Some(lp);
    }
    // A filesystem mkfs just made needs no check (and the check would cost another MMP wait).
    if !read_only && !created {
        fsys::check(run, dev)?;
    }
    let mut mount_dev = dev.to_path_buf();
    if read_only {
        if let Some(cow) = open_overlay(ctx, &mut undo)? {
            stack.overlay = Some(cow);
            mount_dev = p.overlay_dev.clone();
        }
    }
    run.run(&fsys::mount(&mount_dev, &p.fs, read_only))
        .map_err(|e| fsys::name_mmp_holder(run, dev, e))?;
    undo.done();
    Ok(stack)
}

/// A read-only open of a container whose journal needs recovery (a run cut off, a crash): the
/// read-only device cannot take the replay, so a device-mapper snapshot over the LUKS mapping takes
/// it instead, into a copy-on-write file in the client's 0700 run directory. The server's file is
/// never written; the replayed blocks (plaintext) stay in client memory (/run) until the close.
/// Returns the copy-on-write loop device, or `None` when the journal is clean (no overlay).
fn open_overlay(ctx: &Ctx, undo: &mut Undo) -> Result<Option<Arg>> {
    let (run, p) = (&ctx.run, &ctx.paths);
    let dev = p.dm_dev.as_path();
    let Some(sb) = run.query(&fsys::superblock(dev))? else {
        run.note(
            "a real run mounts through a local copy-on-write overlay if the journal needs recovery",
        );
        return Ok(None);
    };
    if !fsys::needs_recovery(&sb) {
        return Ok(None);
    }
    eprintln!(
        "note: the container's journal needs recovery (it was not closed cleanly): replaying it into a local overlay ({}); the server's copy is not written",
        p.cow.display()
    );
    let sectors: u64 = run
        .query(&Cmd::new("blockdev").arg("--getsz").arg(dev))?
        .and_then(|o| o.trim().parse().ok())
        .ok_or_else(|| {
            fail(
                Code::Runtime,
                format!("blockdev --getsz {}: no size", dev.display()),
            )
        })?;
    // Sparse, as large as the container: dm-snapshot drops a snapshot whose store fills up, and
    // tmpfs only holds what is written (the journal's replay: at most the journal's size).
    run.run(&ct::truncate(&p.cow, sectors * 512))?;
    undo.push(Cmd::new("rm").arg("-f").arg(&p.cow));
    let cow = run.capture(&ct::losetup_local(&p.cow), "cow")?;
    undo.push(ct::losetup_detach(&cow));
    run.run(&ct::overlay_create(&p.overlay_name, dev, sectors, &cow))?;
    undo.push(ct::overlay_remove(&p.overlay_name));
    Ok(Some(cow))
}

/// Whether the container file is there, judged without following a symlink: a symlink on the server
/// would resolve on the client (sshfs shows it as is), so truncate + luksFormat could hit a client
/// file. Any error but "not found" is an error, never "absent, so create".
fn container_exists(file: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(file) {
        Ok(m) if m.file_type().is_file() => Ok(true),
        Ok(m) if m.file_type().is_symlink() => Err(fail(
            Code::Refused,
            format!(
                "container {} is a symbolic link on the server: refused (it would resolve on this client); on the server, put the container file itself there",
                file.display()
            ),
        )),
        Ok(_) => Err(fail(
            Code::Refused,
            format!(
                "container {} is not a regular file on the server: refused",
                file.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(fail(
            Code::Runtime,
            format!(
                "cannot tell whether container {} exists ({e}): nothing created",
                file.display()
            ),
        )),
    }
}

/// Refuse a container the server account cannot read or write (handed back owned by another user,
/// say) with a line that says so: otherwise isLuks reports "not a LUKS container", or losetup quietly
/// attaches it read-only and fsck fails later with "Operation not permitted". Opening the file through
/// sshfs asks the server and changes nothing.
fn check_access(file: &Path, user: &str, write: bool) -> Result<()> {
    let how = if write { "writable" } else { "readable" };
    match std::fs::OpenOptions::new().read(!write).write(write).open(file) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(fail(
            Code::Refused,
            format!(
                "container {} is not {how} by the server account {user} ({e}): on the server, give it back to that account (chown and chmod 600)",
                file.display()
            ),
        )),
        // Anything else (a lost link, say) is for the steps that follow to report.
        _ => Ok(()),
    }
}

/// Unmount the container's ext4 within a minute: over a hung or dead sshfs the flush blocks, so
/// then the connection is fenced (the flush fails with I/O errors) and the mount detached lazily.
/// `known`: this run mounted it (a dry-run cannot see that in the mount table).
fn unmount_fs(ctx: &Ctx, known: bool) -> Result<()> {
    let (run, p) = (&ctx.run, &ctx.paths);
    if !known && mount_at(&p.fs).is_none() {
        return Ok(());
    }
    let shown = p.fs.display().to_string();
    let umount = fsys::umount(&p.fs).on_fail(move |_, stderr| {
        stderr.contains("target is busy").then(|| {
            Fail::new(
                Code::Locked,
                format!("{shown} is in use (a running e2e-sync holds it, or a shell or program has something open in it): stop that first; nothing closed"),
            )
        })
    });
    if run.run_timeout(&umount, Duration::from_secs(60))?.is_none() {
        remote::fence(run, p, ctx.port.get())?;
        run.run(&Cmd::new("umount").arg("-l").arg(&p.fs))?;
    }
    Ok(())
}

/// Remove a read-only overlay: the snapshot mapping, then its copy-on-write loop device(s) and file.
fn remove_overlay(run: &Runner, p: &JobPaths, cow_loops: &[Arg]) -> Result<()> {
    run.run(&ct::overlay_remove(&p.overlay_name))?;
    for l in cow_loops {
        run.run(&ct::losetup_detach(l.clone()))?;
    }
    run.run(&Cmd::new("rm").arg("-f").arg(&p.cow))?;
    Ok(())
}

/// Undo what [`ensure_open`] did (nothing if the stack was already up).
pub fn close_opened(ctx: &Ctx, s: &Stack) -> Result<()> {
    let _cleanup = ctx.run.unwinding();
    let p = &ctx.paths;
    if s.opened {
        unmount_fs(ctx, true)?;
        if let Some(cow) = &s.overlay {
            remove_overlay(&ctx.run, p, std::slice::from_ref(cow))?;
        }
        ctx.run.run(&ct::luks_close(&p.dm_name))?;
        if let Some(l) = &s.loop_dev {
            ctx.run.run(&ct::losetup_detach(l))?;
        }
    }
    if s.mounted_remote {
        remote::unmount(&ctx.run, p, true, ctx.port.get())?;
    }
    let _ = std::fs::remove_file(&p.owner);
    Ok(())
}

/// Bounded time on a server that stops answering (alive, but silent: ServerAlive is answered by
/// sshd, not by a stuck sftp-server). While the stack is up, a thread asks the server for a statfs
/// through sshfs every 30 s; after `E2E_BACKUP_STALL_TIMEOUT` seconds (default 600) without an
/// answer it stops the running step as a signal would, and the run unwinds (exit 3). Each answer
/// is also a systemd watchdog ping (`WatchdogSec=` on e2e-sync@), so a run that hangs where this
/// thread cannot help (in the kernel) is still stopped by systemd.
struct StallWatchdog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallWatchdog {
    fn start(ctx: &Ctx) -> Option<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        if ctx.run.is_dry() {
            return None;
        }
        let limit = std::env::var("E2E_BACKUP_STALL_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(600);
        let every = Duration::from_secs(limit.clamp(2, 120) / 2).min(Duration::from_secs(30));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, paths) = (stop.clone(), ctx.paths.clone());
        let watchdog = std::env::var_os("WATCHDOG_USEC").is_some();
        std::thread::spawn(move || {
            let mut last_ok = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                if !remote::is_mounted(&paths) || remote::responsive(&paths, every) {
                    last_ok = Instant::now();
                    if watchdog {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                } else if last_ok.elapsed() >= Duration::from_secs(limit) {
                    eprintln!(
                        "{}: the server has not answered for {limit} s; stopping the run",
                        paths.remote.display()
                    );
                    crate::exec::stop_stalled(limit);
                    // The running step may be blocked in the kernel on the silent FUSE mount
                    // (syncfs, a write), where no signal reaches it: killing the connection fails
                    // those requests (ENOTCONN), so the step returns and the run can unwind. The
                    // main thread then fences properly (remote::fence, logged as a step).
                    for pid in remote::connection_pids(&paths) {
                        eprintln!(
                            "+ kill -KILL {pid}  # stall watchdog: the connection's sshfs/ssh"
                        );
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    return;
                }
                let until = Instant::now() + every;
                while Instant::now() < until && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        Some(StallWatchdog { stop })
    }
}

impl Drop for StallWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Run `f` with the stack open, then leave it as found (also when `f` fails).
fn with_stack<T>(
    ctx: &Ctx,
    job: &Job,
    read_only: bool,
    f: impl FnOnce(&mut Stack) -> Result<T>,
) -> Result<T> {
    recover_stale(ctx)?;
    // Claim the layers this run is about to open before it opens them: a run killed half-way
    // through bring-up (or through creation) leaves a record the next run acts on.
    let p = &ctx.paths;
    let claim = !ctx.run.is_dry() && !ctx.fs_mounted() && dm_slaves(&p.dm_name).is_none();
    if claim {
        let remote = u8::from(!remote::is_mounted(p));
        let _ = std::fs::create_dir_all(&p.dir);
        let _ = std::fs::write(&p.owner, format!("{} {remote}\n", std::process::id()));
    }
    let mut stack = ensure_open(ctx, job, job.container.create, read_only)?;
    if claim && !stack.opened && !stack.mounted_remote {
        let _ = std::fs::remove_file(&p.owner);
    }
    if remote::is_mounted(&ctx.paths) {
        ctx.remote_seen.set(true); // (an already open stack: open_stack did not mount it)
    }
    // Held open for the run: the filesystem cannot be unmounted (e2e-close --force, a user's umount)
    // under it, so no step ever writes into the bare directory a closed container leaves behind.
    let pin = (!ctx.run.is_dry() && ctx.fs_mounted())
        .then(|| std::fs::File::open(&p.fs).ok())
        .flatten();
    let watchdog = StallWatchdog::start(ctx);
    let r = ctx
        .check_history(job)
        .and_then(|_| f(&mut stack))
        .map_err(|e| explain_lost_link(ctx, &job.remote.host, e, false));
    drop(watchdog);
    drop(pin);
    if crate::exec::stalled() {
        let _cleanup = ctx.run.unwinding();
        if let Err(f) = remote::fence(&ctx.run, &ctx.paths, ctx.port.get()) {
            eprintln!("warning: fencing the silent connection failed: {f:#}");
        }
    }
    let c = close_opened(ctx, &stack);
    match (r, c) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => {
            eprintln!("warning: closing the stack after the failure failed too: {c:#}");
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// e2e-sync

/// An exclusive lock on /run/e2e-backup/<job>/lock for the whole run (dropped = released).
fn lock(ctx: &Ctx) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    if ctx.run.is_dry() {
        return Ok(None);
    }
    // Only the job's run directory (a tmpfs directory): never a stat of remote/ or fs/, which
    // hangs when sshfs is stopped, and e2e-close must get past its lock in exactly that case.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ctx.paths.dir)
            .map_err(|e| {
                fail(
                    Code::Runtime,
                    format!("cannot make {}: {e}", ctx.paths.dir.display()),
                )
            })?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&ctx.paths.lock)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(fail(
            Code::Locked,
            format!(
                "job {} is already running on this host (lock {} is held)",
                ctx.paths.job,
                ctx.paths.lock.display()
            ),
        )),
        Err((_, e)) => Err(fail(
            Code::Runtime,
            format!("lock {}: {e}", ctx.paths.lock.display()),
        )),
    }
}

pub fn sync(cli: SyncCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    let _lock = lock(&ctx)?;
    ctx.accept_rollback.set(cli.accept_rollback);
    if let Some(r) = &cli.restore {
        return restore(&ctx, &job, &r[0], &r[1], cli.unchecked);
    }
    if let Some(snap) = &cli.verify {
        return verify(&ctx, &job, snap);
    }
    if cli.list {
        // Printed after the stack is closed: nothing the reader does can leave it open.
        let list = with_stack(&ctx, &job, true, |_| {
            let (stamps, _) = snapshots::scan(&ctx.paths.fs);
            Ok(stamps
                .into_iter()
                .map(|(s, _)| format!("{s}\n"))
                .collect::<String>())
        })?;
        print_stdout(&list);
        return Ok(None);
    }
    if job.sync.paths.is_empty() {
        return Err(fail(
            Code::Config,
            format!(
                "{}: sync.paths: required but not set (or give --source PATH)",
                job.origin
            ),
        ));
    }
    let mut job = job;
    job.container.create |= cli.create;
    with_stack(&ctx, &job, false, |stack| {
        if !cli.no_grow {
            auto_grow(&ctx, &job, stack)?;
        }
        let published = backup(&ctx, &job)?;
        let dest = published.dest.clone();
        if !ctx.run.is_dry() {
            // 5. of the publish order: the client records the snapshot before anything is pruned.
            let state = rollback::State {
                stamp: published.stamp.clone(),
                manifest_sha256: ctx.manifest_digest(&published.stamp)?,
                luks_uuid: ctx.luks_uuid(&job)?,
            };
            let file = rollback::state_file(&job.name);
            rollback::remember(&file, &state).map_err(|e| {
                fail(
                    Code::Runtime,
                    format!(
                        "snapshot {} made, but recording it in {} failed (nothing pruned): {e:#}",
                        dest.display(),
                        file.display()
                    ),
                )
            })?;
        }
        if !cli.no_prune && ctx.consistent.get() {
            prune(&ctx, &job, &published)?;
        }
        notify_status(&format!("snapshot {} done", dest.display()));
        Ok(Some(dest))
    })
}

/// A run that lost its link (or whose sshfs was killed) can leave pieces behind: a dead sshfs, a
/// mapping or an ext4 mount without a live remote under it. We hold the job's lock, so no other
/// run of this job uses them: tear them down, so the next run needs no manual e2e-close.
fn recover_stale(ctx: &Ctx) -> Result<()> {
    let p = &ctx.paths;
    if ctx.run.is_dry() {
        return Ok(());
    }
    // A run killed outright (SIGKILL, OOM, power to the process but not the host) could not
    // unwind: the layers it opened are still up, and would look like a stack opened by hand.
    if let Some((pid, remote)) = stale_owner(p) {
        eprintln!(
            "note: job {} has a stack left by a run that was killed (pid {pid}); tearing it down first",
            p.job
        );
        // Its rsync may take a moment to die (SIGTERM when its parent did): retry a busy umount.
        let mut tries = 0;
        loop {
            match teardown(ctx, !remote) {
                Ok(()) => break,
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("note: teardown not finished ({e:#}); retrying");
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
        let _ = std::fs::remove_file(&p.owner);
        return Ok(());
    }
    let remote_up = remote::is_mounted(p);
    let above = ctx.fs_mounted() || dm_slaves(&p.dm_name).is_some();
    let stale = if remote_up {
        !remote::responsive(p, Duration::from_secs(20))
    } else {
        above
    };
    if stale {
        eprintln!(
            "note: job {} has a stack left by a run that lost its link; tearing it down first",
            p.job
        );
        teardown(ctx, false)?;
    }
    Ok(())
}

/// The owner record of a stack whose run is gone: (pid, whether it had mounted the remote).
fn stale_owner(p: &JobPaths) -> Option<(i32, bool)> {
    let text = std::fs::read_to_string(&p.owner).ok()?;
    let mut w = text.split_whitespace();
    let pid: i32 = w.next()?.parse().ok()?;
    let remote = w.next() == Some("1");
    let alive =
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("e2e-"));
    (!alive).then_some((pid, remote))
}

/// What [`backup`] published: the new snapshot and the snapshots that were there before it.
struct Published {
    dest: PathBuf,
    stamp: String,
    now: i64,
    before: Vec<(String, i64)>,
}

/// The publish order. Nothing that points at a snapshot may become durable before the snapshot's
/// data and manifest (rsync does not fsync; ext4 commits metadata every 5 s, data later), so:
///
/// 1. rsync into `<stamp>.inflight`, write `manifests/<stamp>.sha256`;
/// 2. flush (syncfs): the data and the manifest are on the server;
/// 3. rename `<stamp>.inflight` → `<stamp>`, then `latest.tmp` → `latest`;
/// 4. flush: the snapshot and `latest` are durable;
/// 5. (caller) record {stamp, manifest hash, LUKS UUID} on the client;
/// 6. (caller, [`prune`]) only then delete old snapshots, and flush again.
///
/// A cut before 4 leaves the previous `latest` and every older snapshot as they were; a cut after it
/// leaves a complete new snapshot. Before rsync and before each rename the run checks that `fs/` is
/// still the container's filesystem (an `e2e-close --force` or a lost mount must not turn the rest of
/// the run into plaintext writes to the client's /run).
fn backup(ctx: &Ctx, job: &Job) -> Result<Published> {
    let run = &ctx.run;
    let fs = ctx.paths.fs.as_path();
    let snaps = fs.join("snapshots");
    let (stamps, leftovers) = snapshots::scan(fs);
    ctx.assert_container_mounted()?;
    // A crashed run's .inflight is incomplete: never a link-dest, always removed; a crashed prune's
    // .prune was already on its way out.
    for l in &leftovers {
        run.run(&Cmd::new("rm").arg("-rf").arg(snaps.join(l)))?;
        if let Some(s) = l.strip_suffix(INFLIGHT) {
            let m = snapshots::manifest_path(fs, s);
            for ext in ["sha256.tmp", "todo.tmp", "part.tmp"] {
                run.run(&Cmd::new("rm").arg("-f").arg(m.with_extension(ext)))?;
            }
        } else if let Some(s) = l.strip_suffix(PRUNING) {
            run.run(
                &Cmd::new("rm")
                    .arg("-f")
                    .arg(snapshots::manifest_path(fs, s)),
            )?;
        }
    }
    run.run(
        &Cmd::new("install")
            .args(["-d", "-m", "0700"])
            .arg(&snaps)
            .arg(fs.join("logs"))
            .arg(fs.join(snapshots::MANIFESTS)),
    )?;
    let mut now = timefmt::now();
    while stamps.iter().any(|s| s.1 == now) {
        now += 1; // two runs within one second
    }
    let stamp = timefmt::format_stamp(now);
    let link = snapshots::latest(fs).or_else(|| stamps.last().map(|s| s.0.clone()));
    if run.is_dry() && !ctx.fs_mounted() {
        run.note("the container is not open yet, so no --link-dest and no pruning are shown");
    }
    let cmd = snapshots::rsync_backup(&job.sync, fs, &stamp, link.as_deref());
    let out = run.run_streaming(&cmd, progress_reporter())?;
    finish_progress();
    if out.code == 24 {
        eprintln!("note: some files vanished during the transfer (rsync exit 24); snapshot kept");
    }
    // 1. The checksum manifest (inside the container) is complete before the snapshot is: a snapshot
    // never exists without one. A read error here fails the run; the .inflight goes next run.
    write_manifest(ctx, &stamp, link.as_deref())?;
    // 2.
    run.note("publish order: flush data and manifest before anything points at them");
    run.run(&fsys::sync_fs(fs))?;
    // 3.
    let dest = snaps.join(&stamp);
    ctx.assert_container_mounted()?;
    run.run(
        &Cmd::new("mv")
            .arg("-T")
            .arg(snaps.join(format!("{stamp}{INFLIGHT}")))
            .arg(&dest),
    )?;
    // `latest` moves atomically: a symlink beside it, then renamed over.
    let tmp = fs.join("latest.tmp");
    run.run(
        &Cmd::new("ln")
            .arg("-sfn")
            .arg(format!("snapshots/{stamp}"))
            .arg(&tmp),
    )?;
    ctx.assert_container_mounted()?;
    run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(fs.join("latest")))?;
    // 4.
    run.run(&fsys::sync_fs(fs))?;
    Ok(Published {
        dest,
        stamp,
        now,
        before: stamps,
    })
}

/// Step 6 of the publish order: delete the snapshots retention no longer keeps, once the new one is
/// durable and recorded. Each goes by rename to `.prune` first (a cut mid-`rm` leaves a name the next
/// run recognises and finishes), then one flush for all.
fn prune(ctx: &Ctx, job: &Job, p: &Published) -> Result<()> {
    let run = &ctx.run;
    let fs = ctx.paths.fs.as_path();
    let snaps = fs.join("snapshots");
    if let Some(newest) = p.before.iter().map(|s| s.1).max() {
        // A clock behind the newest snapshot makes "days ago" meaningless: keep everything.
        if timefmt::now() < newest {
            eprintln!(
                "warning: this host's clock ({}) is earlier than the newest snapshot ({}): not pruning until it is right",
                timefmt::format_stamp(timefmt::now()),
                timefmt::format_stamp(newest)
            );
            return Ok(());
        }
    }
    let mut all = p.before.clone();
    all.push((p.stamp.clone(), p.now));
    let keep = snapshots::select_keep(&all, &job.retention);
    let doomed: Vec<&String> = all
        .iter()
        .map(|s| &s.0)
        .filter(|s| !keep.contains(*s) && **s != p.stamp)
        .collect();
    for s in &doomed {
        let d = snaps.join(format!("{s}{PRUNING}"));
        ctx.assert_container_mounted()?;
        run.run(&Cmd::new("mv").arg("-T").arg(snaps.join(s)).arg(&d))?;
        run.run(&Cmd::new("rm").arg("-rf").arg(&d))?;
        run.run(
            &Cmd::new("rm")
                .arg("-f")
                .arg(snapshots::manifest_path(fs, s)),
        )?;
    }
    if !doomed.is_empty() {
        run.run(&fsys::sync_fs(fs))?;
    }
    Ok(())
}

/// sha256 of the files `names` (`./`-relative to `dir`) with `sha256sum`, through the NUL-separated
/// list file `list` and the output file `out` (both removed afterwards). With `unreadable_ok`, a file
/// sha256sum cannot read is left out of the result instead of failing the step.
fn hash_listed(
    run: &Runner,
    dir: &Path,
    names: &[Vec<u8>],
    list: &Path,
    out: &Path,
    unreadable_ok: bool,
) -> Result<snapshots::Manifest> {
    let data: Vec<u8> = names
        .iter()
        .flat_map(|n| n.iter().copied().chain([0]))
        .collect();
    std::fs::write(list, data).map_err(|e| {
        fail(
            Code::Runtime,
            format!("cannot write {}: {e}", list.display()),
        )
    })?;
    let mut cmd = snapshots::checksum_list_cmd(dir, list, out);
    if unreadable_ok {
        cmd = cmd.ok_code(123); // xargs: sha256sum failed on some file
    }
    let res = run.run(&cmd);
    let hashed = std::fs::read(out);
    let _ = std::fs::remove_file(list);
    let _ = std::fs::remove_file(out);
    res?;
    hashed
        .map_err(|e| e.to_string())
        .and_then(|d| snapshots::parse_manifest(&d))
        .map_err(|e| {
            fail(
                Code::Runtime,
                format!("reading back {}: {e}", out.display()),
            )
        })
}

/// The manifest of the new snapshot STAMP (still `.inflight`): hashes of files `--link-dest` linked to
/// the previous snapshot LINK are taken from LINK's manifest; only the files this run wrote are read
/// and hashed (by `sha256sum`, so a restorer can check a snapshot with stock tools).
fn write_manifest(ctx: &Ctx, stamp: &str, link: Option<&str>) -> Result<()> {
    let run = &ctx.run;
    let fs = ctx.paths.fs.as_path();
    let dir = fs.join("snapshots").join(format!("{stamp}{INFLIGHT}"));
    let manifest = snapshots::manifest_path(fs, stamp);
    let (tmp, todo, part) = (
        manifest.with_extension("sha256.tmp"),
        manifest.with_extension("todo.tmp"),
        manifest.with_extension("part.tmp"),
    );
    if run.is_dry() {
        // The script hashes every file (same manifest, self-contained); a real run reads only the
        // files it wrote and reuses the previous manifest's hashes for the hard-linked ones.
        run.note("a real run hashes only the files rsync wrote; here, every file");
        run.run(&snapshots::checksum_cmd(&dir, &tmp))?;
        run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(&manifest))?;
        return Ok(());
    }
    let prev = link.and_then(|l| {
        let p = snapshots::manifest_path(fs, l);
        match std::fs::read(&p).map(|d| snapshots::parse_manifest(&d)) {
            Ok(Ok(m)) => Some((fs.join("snapshots").join(l), m)),
            // An old snapshot without a (readable) manifest: hash everything, as the first run does.
            Ok(Err(e)) => {
                eprintln!("warning: {}: {e}; hashing every file", p.display());
                None
            }
            Err(_) => None,
        }
    });
    let (mut all, names) =
        snapshots::split_for_hashing(&dir, prev.as_ref().map(|(d, m)| (d.as_path(), m))).map_err(
            |e| {
                fail(
                    Code::Runtime,
                    format!("cannot list the new snapshot {}: {e}", dir.display()),
                )
            },
        )?;
    let hashed = hash_listed(run, &dir, &names, &todo, &part, false)?;
    if hashed.len() != names.len() {
        return Err(fail(
            Code::Runtime,
            format!(
                "sha256sum hashed {} of the {} new files",
                hashed.len(),
                names.len()
            ),
        ));
    }
    run.note(&format!(
        "manifest: {} files hashed, {} hashes reused from {}",
        hashed.len(),
        all.len(),
        link.unwrap_or("-")
    ));
    all.extend(hashed);
    std::fs::write(&tmp, snapshots::render_manifest(&all)).map_err(|e| {
        fail(
            Code::Runtime,
            format!("cannot write {}: {e}", tmp.display()),
        )
    })?;
    run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(&manifest))?;
    Ok(())
}

/// Progress to a TTY (stderr) and to systemd (`STATUS=`) when `NOTIFY_SOCKET` is set.
fn progress_reporter() -> impl FnMut(&str) {
    let tty = std::io::stderr().is_terminal();
    let notify = std::env::var_os("NOTIFY_SOCKET").is_some();
    let mut last = Instant::now() - Duration::from_secs(10);
    move |line: &str| {
        let Some(status) = snapshots::parse_progress(line) else {
            return;
        };
        if tty {
            eprint!("\r{status}\x1b[K");
        }
        if notify && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
        }
    }
}

fn notify_status(status: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
    }
}

fn finish_progress() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// Snapshot STAMP's manifest, or why it cannot serve as a check (exit 7): a check that cannot check
/// must not pass.
fn load_manifest(fs: &Path, stamp: &str) -> Result<snapshots::Manifest> {
    let mpath = snapshots::manifest_path(fs, stamp);
    let data = std::fs::read(&mpath).map_err(|e| {
        fail(
            Code::Unchecked,
            format!(
                "snapshot {stamp} has no readable manifest ({}: {e}): it cannot be checked",
                mpath.display()
            ),
        )
    })?;
    snapshots::parse_manifest(&data).map_err(|e| {
        fail(
            Code::Unchecked,
            format!(
                "snapshot {stamp}'s manifest {} is damaged ({e}): it cannot be checked",
                mpath.display()
            ),
        )
    })
}

/// Whether the tree at `p` (a file or a directory) holds at least one regular file.
fn holds_regular_file(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_file() => true,
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|rd| rd.flatten().any(|e| holds_regular_file(&e.path())))
            .unwrap_or(false),
        _ => false,
    }
}

fn restore(
    ctx: &Ctx,
    job: &Job,
    spec: &str,
    target: &str,
    unchecked: bool,
) -> Result<Option<PathBuf>> {
    with_stack(ctx, job, true, |_| {
        let fs = ctx.paths.fs.as_path();
        // Parsed once: the source path and the manifest that checks it name the same snapshot.
        let parsed = if ctx.run.is_dry() && !ctx.fs_mounted() {
            None
        } else {
            Some(snapshots::parse_spec(fs, spec)?)
        };
        let src = if let Some(sp) = &parsed {
            sp.source(fs)
        } else {
            // Not open in a dry-run: let the script follow the `latest` symlink itself.
            let (snap, rest) = spec.split_once('/').unwrap_or((spec, ""));
            if !spec.contains('/') {
                ctx.run
                    .note("restoring the contents of the snapshot (as SNAPSHOT/ would)");
            }
            PathBuf::from(format!("{}/{snap}/{rest}", fs.display()))
        };
        if !ctx.run.is_dry() && std::fs::symlink_metadata(&src).is_err() {
            return Err(fail(
                Code::Config,
                format!("{spec}: no such path in the snapshot"),
            ));
        }
        // The check's reference is found before anything is copied: a restore that could not be
        // checked is refused up front (exit 7) unless --unchecked.
        let want = if let (false, Some(snapshots::Spec { stamp, rest })) =
            (ctx.run.is_dry(), parsed)
        {
            let m = load_manifest(fs, &stamp).and_then(|m| {
                let want = snapshots::restore_subset(&m, rest);
                if want.is_empty() && holds_regular_file(&src) {
                    return Err(fail(
                        Code::Unchecked,
                        format!(
                            "snapshot {stamp}'s manifest lists no file of {spec}, which holds files: it cannot be checked"
                        ),
                    ));
                }
                Ok((stamp, want))
            });
            match m {
                Ok(m) => Some(m),
                Err(e) if unchecked => {
                    eprintln!("warning: {e:#}; restoring without a check (--unchecked)");
                    None
                }
                Err(e) => {
                    return Err(fail(
                        Code::Unchecked,
                        format!(
                        "{e:#}; nothing restored (pass --unchecked to restore it without a check)"
                    ),
                    ))
                }
            }
        } else {
            None
        };
        ctx.run
            .run_streaming(&snapshots::rsync_restore(&src, target), progress_reporter())?;
        finish_progress();
        if ctx.run.is_dry() {
            ctx.run.note("a real run then hashes the restored files and compares them with the snapshot's manifest");
        }
        if let Some((stamp, want)) = want {
            check_restored(ctx, &stamp, want, target)?;
        }
        Ok(Some(PathBuf::from(target)))
    })
}

/// After a restore, hash the restored files (on the client, where they now are) and compare them
/// with the snapshot's manifest (`want`: the restored part). dm-crypt has no integrity: a block the
/// server garbled decrypts to garbage that rsync would copy without complaint; this is where it is
/// caught.
fn check_restored(
    ctx: &Ctx,
    stamp: &str,
    mut want: snapshots::Manifest,
    target: &str,
) -> Result<()> {
    let run = &ctx.run;
    let mut dir = PathBuf::from(target);
    // One file restored to a name that is not a directory: rsync wrote it as TARGET itself.
    if want.len() == 1 && !dir.is_dir() {
        use std::os::unix::ffi::OsStrExt;
        let sum = want.into_values().next().unwrap_or_default();
        let name = dir
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        want = snapshots::Manifest::from([([b"./".as_slice(), &name].concat(), sum)]);
    }
    if want.is_empty() {
        eprintln!("snapshot {stamp}: the restored part holds no regular file; nothing to check");
        return Ok(());
    }
    let (list, out) = (
        ctx.paths.dir.join("restore.todo"),
        ctx.paths.dir.join("restore.sha256"),
    );
    // A restored file that cannot be read is counted below as a mismatch.
    let names: Vec<Vec<u8>> = want.keys().cloned().collect();
    let have = hash_listed(run, &dir, &names, &list, &out, true)?;
    let d = snapshots::compare(&want, &have);
    let bad: Vec<&Vec<u8>> = d.changed.iter().chain(&d.missing).collect();
    for n in &bad {
        let n = snapshots::show_name(n);
        eprintln!(
            "does not match the manifest: {}/{}",
            dir.display(),
            n.trim_start_matches("./")
        );
    }
    if bad.is_empty() {
        eprintln!(
            "checked {} restored files against the manifest of {stamp}",
            want.len()
        );
        return Ok(());
    }
    Err(fail(
        Code::Runtime,
        format!(
            "{} of {} restored files differ from snapshot {stamp}'s manifest: the server's copy is damaged; they are left in {target} for inspection, restore them from an older snapshot",
            bad.len(),
            want.len()
        ),
    ))
}

/// `e2e-sync --verify SNAPSHOT`: read-only open, re-checksum the snapshot into the client's run
/// directory (never the server), compare with the manifest written when it was made.
fn verify(ctx: &Ctx, job: &Job, spec: &str) -> Result<Option<PathBuf>> {
    with_stack(ctx, job, true, |_| {
        let fs = ctx.paths.fs.as_path();
        if ctx.run.is_dry() && !ctx.fs_mounted() {
            ctx.run
                .note("the container is not open yet: the snapshot and its manifest are not shown");
            return Ok(None);
        }
        let stamp = match snapshots::parse_spec(fs, spec.trim_end_matches('/'))? {
            snapshots::Spec { stamp, rest: "" } => stamp,
            _ => {
                return Err(fail(
                    Code::Config,
                    format!("{spec:?} is not a snapshot: --verify takes `latest` or a stamp, no path (see e2e-sync --list)"),
                ))
            }
        };
        let dir = fs.join("snapshots").join(&stamp);
        if !ctx.run.is_dry() && !dir.is_dir() {
            return Err(fail(Code::Config, format!("{stamp}: no such snapshot")));
        }
        let want = if ctx.run.is_dry() {
            None
        } else {
            let m = load_manifest(fs, &stamp)?;
            if m.is_empty() && holds_regular_file(&dir) {
                return Err(fail(
                    Code::Unchecked,
                    format!("snapshot {stamp}'s manifest is empty, but the snapshot holds files: it cannot be checked"),
                ));
            }
            Some(m)
        };
        let now = ctx.paths.dir.join("verify.sha256");
        // 123: sha256sum could not read some file: reported below, not a crash of the check.
        let out = ctx
            .run
            .run(&snapshots::checksum_cmd(&dir, &now).ok_code(123).ok_code(1))?;
        let Some(want) = want else {
            return Ok(None);
        };
        let have = std::fs::read(&now);
        let _ = std::fs::remove_file(&now);
        let have = snapshots::parse_manifest(&have?)
            .map_err(|e| fail(Code::Runtime, format!("re-reading {stamp}: {e}")))?;
        let unreadable: Vec<&str> = out
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let d = snapshots::compare(&want, &have);
        for (what, names) in [
            ("changed", &d.changed),
            ("missing", &d.missing),
            ("extra", &d.extra),
        ] {
            for n in names {
                eprintln!("{what}: {}", snapshots::show_name(n));
            }
        }
        for l in &unreadable {
            eprintln!("read error: {l}");
        }
        if d.is_empty() && unreadable.is_empty() {
            eprintln!("verified {stamp}: {} files match its manifest", want.len());
            return Ok(Some(dir));
        }
        Err(fail(
            Code::Runtime,
            format!(
                "snapshot {stamp} does not match its manifest: {} changed, {} missing, {} extra, {} read errors (of {} files)",
                d.changed.len(),
                d.missing.len(),
                d.extra.len(),
                unreadable.len(),
                want.len()
            ),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// e2e-grow

/// Before a sync: grow by container.auto_grow_step when free space is below auto_grow_free.
fn auto_grow(ctx: &Ctx, job: &Job, stack: &mut Stack) -> Result<()> {
    let c = &job.container;
    if c.auto_grow_free.is_zero() {
        return Ok(());
    }
    let (Ok((free, _)), Some(size)) = (fsys::usage(&ctx.paths.fs), stack.size) else {
        ctx.run
            .note("auto-grow check skipped: filesystem not mounted yet");
        return Ok(());
    };
    if ctx.run.is_dry() && !ctx.fs_mounted() {
        ctx.run
            .note("auto-grow check skipped: filesystem not mounted yet");
        return Ok(());
    }
    if free >= c.auto_grow_free.of(size) {
        return Ok(());
    }
    let mut new = size + c.auto_grow_step.of(size);
    if let Some(max) = c.max_size {
        new = new.min(max);
    }
    if new <= size {
        eprintln!(
            "warning: container has only {} free and is at container.max_size; not growing",
            human(free)
        );
        return Ok(());
    }
    match grow_to(ctx, job, stack, new) {
        Err(e) if code_of(&e) == Code::NoSpace => {
            eprintln!("warning: not growing before sync: {e:#}");
            Ok(())
        }
        r => r,
    }
}

/// Online grow: file → loop capacity → LUKS → ext4 (systemd-homed's order).
fn grow_to(ctx: &Ctx, job: &Job, stack: &mut Stack, new: u64) -> Result<()> {
    let p = &ctx.paths;
    let run = &ctx.run;
    let file = ctx.container_file(job);
    let new = new.div_ceil(4096) * 4096; // whole LUKS sectors
    let cur = stack.size.unwrap_or(0);
    if new < cur {
        return Err(fail(
            Code::Config,
            format!("refusing to shrink {} from {} to {}: ext4 shrinks only offline; e2e-trim returns unused space", file.display(), human(cur), human(new)),
        ));
    }
    if new == cur {
        return Ok(());
    }
    if !(run.is_dry() && stack.mounted_remote) {
        let free = remote::server_free(p)?;
        let need = (new - cur).saturating_add(job.container.server_reserve);
        if free < need {
            return Err(fail(
                Code::NoSpace,
                format!(
                    "server has {} free; growing by {} would leave less than container.server_reserve ({})",
                    human(free),
                    human(new - cur),
                    human(job.container.server_reserve)
                ),
            ));
        }
    }
    let key = job.key_file()?;
    let lp = stack.loop_dev.clone().ok_or_else(|| {
        fail(
            Code::Runtime,
            format!(
                "no loop device backs {}: is it open through e2e-trim?",
                file.display()
            ),
        )
    })?;
    run.run(&ct::truncate(&file, new))?;
    run.run(&ct::losetup_refresh(&lp))?;
    run.run(&ct::luks_resize(&p.dm_name, &key))?;
    run.run(&fsys::resize2fs(&p.dm_dev))?;
    stack.size = Some(new);
    Ok(())
}

pub fn grow(cli: GrowCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    let _lock = lock(&ctx)?;
    let file = ctx.container_file(&job);
    // Bad sizes are refused before anything is opened (an open rw mount writes the superblock).
    let to = cli
        .to
        .as_deref()
        .map(config::parse_size)
        .transpose()
        .map_err(|e| fail(Code::Config, format!("--to: {e}")))?;
    let by = cli
        .by
        .as_deref()
        .map(parse_size_spec)
        .transpose()
        .map_err(|e| fail(Code::Config, format!("--by: {e}")))?;
    with_stack(&ctx, &job, false, |stack| {
        let cur = stack.size;
        let new = match (to, by) {
            (Some(to), _) => to,
            (None, Some(spec)) => {
                let Some(cur) = cur else {
                    ctx.run
                        .note("current size unknown in a dry-run before the container is open");
                    return Ok(Some(file.clone()));
                };
                cur + spec.of(cur)
            }
            (None, None) => unreachable!("clap requires --to or --by"),
        };
        if let Some(max) = job.container.max_size {
            if new > max {
                return Err(fail(
                    Code::Config,
                    format!(
                        "{} is more than container.max_size ({}) in {}",
                        human(new),
                        human(max),
                        job.origin
                    ),
                ));
            }
        }
        grow_to(&ctx, &job, stack, new)?;
        Ok(Some(file.clone()))
    })
}

// ---------------------------------------------------------------------------------------------
// e2e-trim

fn free_nbd_device() -> Option<PathBuf> {
    let mut devs: Vec<(u32, PathBuf)> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let i: u32 = n.strip_prefix("nbd")?.parse().ok()?;
            // A connected device has a pid file and a non-zero size.
            let busy = e.path().join("pid").exists();
            (!busy).then(|| (i, Path::new("/dev").join(&n)))
        })
        .collect();
    devs.sort();
    devs.into_iter().next().map(|d| d.1)
}

pub fn trim(cli: TrimCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    let _lock = lock(&ctx)?;
    let p = &ctx.paths;
    let run = &ctx.run;
    let r = &job.remote;
    let file = ctx.container_file(&job);
    if ctx.fs_mounted()
        || dm_slaves(&p.dm_name).is_some()
        || !loops_backed_by(&file, false).is_empty()
    {
        return Err(fail(
            Code::Refused,
            format!("container of job {} is open through e2e-open; run e2e-close {} first (TRIM goes through NBD, not the loop device)", job.name, job.name),
        ));
    }
    let key = job.key_file()?;
    // The nbd module is often not loaded until first use.
    if cli.nbd_device.is_none() && !Path::new("/sys/module/nbd").exists() {
        run.run(&Cmd::new("modprobe").arg("nbd"))?;
    }
    let nbd = match cli.nbd_device.clone().or_else(free_nbd_device) {
        Some(d) => d,
        None if run.is_dry() => PathBuf::from("/dev/nbd0"),
        None => {
            return Err(fail(
                Code::Runtime,
                "no free NBD device: load the module (modprobe nbd)",
            ))
        }
    };
    // The tunnel's local end is a Unix socket in the 0700 run directory: a loopback TCP port
    // would let any local user reach the decrypted-by-nobody but writable NBD export.
    let sock = p.dir.join("nbd.sock");
    remote::make_dirs(run, p)?;
    let alloc = remote::allocated_cmd(r, &job.container.file);
    let before = server_allocation(run, &alloc)?;

    let mut undo = Undo::new(run);
    // The tunnel: the NBD server listens on the server's loopback only; NBD is plain text.
    let ctl = format!("ControlPath={}", p.ssh_ctl.display());
    let tunnel = remote::ssh_checked(r)
        .args([
            "-f",
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ControlMaster=yes",
            "-o",
            "StreamLocalBindUnlink=yes",
            "-o",
        ])
        .arg(&ctl)
        .arg("-L")
        .arg(format!("{}:127.0.0.1:{}", sock.display(), cli.nbd_port))
        .arg(remote::destination(r));
    run.run(&tunnel)?;
    undo.push(
        Cmd::new("ssh")
            .arg("-o")
            .arg(&ctl)
            .args(["-O", "exit"])
            .arg(remote::destination(r)),
    );
    let export = job.container.file.clone();
    undo.push(Cmd::new("rm").arg("-f").arg(&sock));
    run.run(
        &Cmd::new("nbd-client")
            .arg("-unix")
            .arg(&sock)
            .arg(&nbd)
            .arg("-N")
            .arg(&export)
            .on_fail(move |_, stderr| {
                Some(crate::Fail::new(
                    Code::Remote,
                    format!(
                        "nbd-client could not attach export {export:?} through the tunnel ({}): is the NBD server (qemu-nbd) running on the server's 127.0.0.1 with that export name?",
                        stderr.lines().last().unwrap_or("").trim()
                    ),
                ))
            }),
    )?;
    undo.push(Cmd::new("nbd-client").arg("-d").arg(&nbd));
    run.run(&ct::is_luks(&nbd))?;
    run.run(&ct::luks_open(
        &nbd,
        &key,
        &p.dm_name,
        &OpenOpts {
            read_only: false,
            allow_discards: true,
        },
    ))?;
    undo.push(ct::luks_close(&p.dm_name));
    fsys::check(run, &p.dm_dev)?;
    run.run(&fsys::mount(&p.dm_dev, &p.fs, false))?;
    undo.push(fsys::umount(&p.fs));
    let out = run.run(&fsys::fstrim(&p.fs))?;
    let claimed = fsys::parse_fstrim(&out.stdout);
    if let Some(c) = claimed {
        eprintln!(
            "fstrim reported {c} bytes ({}) trimmed (not trusted; judged by the server)",
            human(c)
        );
    }
    drop(undo); // tear down in reverse: umount, close, nbd-client -d, tunnel exit
    let after = match before {
        Some(_) => server_allocation(run, &alloc)?,
        None => None,
    };
    if let (Some(b), Some(a)) = (before, after) {
        eprintln!(
            "server allocated bytes: before {b} ({}), after {a} ({})",
            human(b),
            human(a)
        );
        if a >= b && claimed.unwrap_or(0) > 0 {
            return Err(fail(
                Code::Runtime,
                format!(
                    "fstrim reported {} trimmed but the server file did not shrink ({b} → {a} bytes): the server's NBD server must turn TRIM into hole punches (qemu-nbd --discard=unmap; not nbd-server, see e2e-trim --help)",
                    human(claimed.unwrap_or(0))
                ),
            ));
        }
    }
    Ok(Some(file))
}

/// The container's allocation on the server (`ssh HOST stat`), or None with a warning when the account
/// runs no commands: the NixOS server module's accounts are SFTP-only (ForceCommand internal-sftp)
/// yet may forward the NBD port, so the trim itself still works there. ssh's own failures
/// (unreachable, key refused) still end the run.
fn server_allocation(run: &Runner, alloc: &Cmd) -> Result<Option<u64>> {
    match run.query(alloc) {
        Ok(o) => Ok(o.and_then(|o| remote::parse_allocated(&o))),
        Err(e) if code_of(&e) == Code::Remote => Err(e),
        Err(e) => {
            let why = format!("{e:#}").replace('\n', " ");
            eprintln!("warning: cannot read the container's allocation on the server: the account runs no commands (SFTP-only?) ({why}); trimming without the before/after check");
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// e2e-close

/// Tear down from any state, using only what the kernel shows (no job file needed).
pub fn close(cli: CloseCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let _ = ctx.job(); // only for the server's port, to fence a dead link: closing needs no job file
                       // A run in progress would go on writing into whatever is at fs/ once the container is gone.
    let _lock = match lock(&ctx) {
        Err(e) if cli.force && code_of(&e) == Code::Locked => {
            eprintln!("warning: {e:#}; closing anyway (--force): that run will fail");
            None
        }
        Err(e) if code_of(&e) == Code::Locked => {
            return Err(fail(
                Code::Locked,
                format!("{e:#}: a run is using the stack; wait for it, stop it, or pass --force"),
            ))
        }
        l => l?,
    };
    teardown(&ctx, cli.keep_remote)?;
    Ok(None)
}

/// e2e-close's work: unwind every layer of the job that the kernel shows.
fn teardown(ctx: &Ctx, keep_remote: bool) -> Result<()> {
    let p = &ctx.paths;
    let run = &ctx.run;
    let _cleanup = run.unwinding();
    // ext4 over a loop over a hung sshfs (or a dead link) blocks umount; killing sshfs first turns
    // that into I/O errors, and the rest of the teardown goes through.
    if remote::is_mounted(p) && !remote::responsive(p, Duration::from_secs(20)) {
        eprintln!("{}: sshfs does not answer; killing it", p.remote.display());
        remote::fence(run, p, ctx.port.get())?;
    }
    unmount_fs(ctx, false)?;
    let mut loops = Vec::new();
    if let Some(slaves) = dm_slaves(&p.overlay_name) {
        let cows: Vec<Arg> = slaves
            .iter()
            .filter(|s| s.starts_with("loop"))
            .map(|s| Path::new("/dev").join(s).into())
            .collect();
        remove_overlay(run, p, &cows)?;
    } else if p.cow.exists() {
        run.run(&Cmd::new("rm").arg("-f").arg(&p.cow))?;
    }
    if let Some(slaves) = dm_slaves(&p.dm_name) {
        run.run(&ct::luks_close(&p.dm_name))?;
        for s in slaves.iter().filter(|s| s.starts_with("nbd")) {
            run.run(&Cmd::new("nbd-client").arg("-d").arg(format!("/dev/{s}")))?;
        }
        // Our loop under the mapping: once a dead sshfs is gone its backing path no longer
        // starts with remote/, so the search by path below would miss it.
        loops.extend(
            slaves
                .iter()
                .filter(|s| s.starts_with("loop"))
                .map(|s| Path::new("/dev").join(s)),
        );
    }
    for l in loops_backed_by(&p.remote, true) {
        if !loops.contains(&l) {
            loops.push(l);
        }
    }
    for l in loops {
        run.run(&ct::losetup_detach(&l))?;
    }
    if p.ssh_ctl.exists() {
        let ctl = format!("ControlPath={}", p.ssh_ctl.display());
        run.run(
            &Cmd::new("ssh")
                .arg("-o")
                .arg(ctl)
                .args(["-O", "exit", "e2e-backup"]),
        )?;
    }
    if !keep_remote {
        remote::unmount(run, p, false, ctx.port.get())?;
    }
    // Whatever a killed run had opened is closed now.
    let _ = std::fs::remove_file(&p.owner);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    /// The dry-run of a create + sync on a host where nothing of the job exists: a complete
    /// script, in order, that `sh -n` accepts.
    #[test]
    fn dry_run_create_and_sync_is_a_script() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("e2e-ops-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k");
        std::fs::write(&key, [1u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let common = Common {
            job: "e2e-unit-test-job".into(),
            config: None,
            config_dir: Some(dir.clone()),
            dry_run: true,
            verbose: false,
            overrides: Overrides {
                host: Some("srv".into()),
                user: Some("u".into()),
                remote_path: Some("/srv/b".into()),
                identity_file: Some("/id".into()),
                known_hosts: Some("/kh".into()),
                size: Some("1G".into()),
                key_file: Some(key.clone()),
                sources: vec!["/home".into()],
                ..Overrides::default()
            },
        };
        let ctx = Ctx::with_runner(&common, Runner::buffered()).unwrap();
        let mut job = ctx.job().unwrap();
        job.container.create = true;
        with_stack(&ctx, &job, false, |_| backup(&ctx, &job)).unwrap();
        let script = ctx.run.script();
        let text = script.join("\n");
        let run = "/run/e2e-backup/e2e-unit-test-job";
        let file = format!("{run}/remote/e2e-unit-test-job.luks");
        let building = format!("{run}/remote/.e2e-unit-test-job.luks.creating");
        let k = key.display();
        let expect_in_order = [
            "set -e".to_string(),
            format!("install -d -m 0700 {run} {run}/remote {run}/fs"),
            format!("sshfs u@srv:/srv/b {run}/remote -F /dev/null -o allow_other"),
            format!("test '!' -e {file}"),
            format!("test '!' -L {file}"),
            format!("sh -c 'set -C && : >\"$1\"' e2e-create {building}"),
            format!("truncate -s 1073741824 {building}"),
            format!("loop=$(losetup -f --show --direct-io=on {building})"),
            format!("cryptsetup luksFormat --type luks2 --batch-mode --key-file {k} --sector-size 4096 \"$loop\""),
            format!("cryptsetup open --key-file {k} \"$loop\" e2e-e2e-unit-test-job"),
            "mkfs.ext4 -q -m0".to_string(),
            format!("mv -T {building} {file}"),
            format!("mount -t ext4 -o rw,nosuid,nodev,noinit_itable,errors=remount-ro,data_err=abort /dev/mapper/e2e-e2e-unit-test-job {run}/fs"),
            "rsync -aHAX --numeric-ids --delete --delete-excluded".to_string(),
            // The publish order: flush, rename, latest, flush.
            format!("sync -f {run}/fs"),
            format!("mv -T {run}/fs/snapshots/"),
            format!("mv -T {run}/fs/latest.tmp {run}/fs/latest"),
            format!("sync -f {run}/fs"),
            format!("umount {run}/fs"),
            "cryptsetup close e2e-e2e-unit-test-job".to_string(),
            "losetup -d \"$loop\"".to_string(),
            format!("-u {run}/remote"),
        ];
        assert!(text.contains("--exclude=/run/e2e-backup/ "), "{text}");
        let mut at = 0;
        for e in &expect_in_order {
            let i = script[at..]
                .iter()
                .position(|l| l.contains(e.as_str()))
                .unwrap_or_else(|| panic!("{e:?} not found after line {at} in:\n{text}"));
            at += i + 1;
        }
        let sh = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&text)
            .status()
            .unwrap();
        assert!(sh.success(), "sh -n rejects:\n{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
