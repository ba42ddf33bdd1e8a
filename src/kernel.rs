//! Read-only views of kernel state: mounts, loop devices' backing files, device-mapper slaves, NBD
//! devices, processes and TCP tables. They run no external command, so `--dry-run` sees them, and
//! they read under a root directory (`/` on a host), so tests can feed them fixture trees.

use std::cell::Cell;
use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: i32,
    pub comm: String,
    pub argv: Vec<String>,
    pub ppid: Option<i32>,
}

/// The kernel's /proc and /sys as seen under `root`. Paths the kernel reports (mount points,
/// backing files) are taken as they are written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    root: PathBuf,
    /// A dry run printed a teardown it did not run: the views then show what a real run would see
    /// after it (nothing of the job's stack).
    forgotten: Cell<bool>,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel::at("/")
    }
}

impl Kernel {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Kernel {
            root: root.into(),
            forgotten: Cell::new(false),
        }
    }

    /// Dry runs only: from here on, show no mounts, devices or processes.
    pub fn forget(&self) {
        self.forgotten.set(true);
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn block_devices(&self) -> Vec<(String, PathBuf)> {
        if self.forgotten.get() {
            return Vec::new();
        }
        let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(self.path("/sys/block"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The mount at exactly `path`, if any (the last one wins, as in the kernel's view).
    pub fn mount_at(&self, path: &Path) -> Option<Mount> {
        if self.forgotten.get() {
            return None;
        }
        let text = std::fs::read_to_string(self.path("/proc/self/mountinfo")).ok()?;
        parse_mountinfo(&text)
            .into_iter()
            .rev()
            .find(|m| m.mountpoint == path)
    }

    /// Every other mount of the filesystem mounted at `path` (the same source device): bind mounts
    /// of it or of a directory in it, such as the job's browse automount.
    pub fn other_mounts_of(&self, path: &Path) -> Vec<Mount> {
        let Some(m) = self.mount_at(path) else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(self.path("/proc/self/mountinfo")).unwrap_or_default();
        parse_mountinfo(&text)
            .into_iter()
            .filter(|o| o.source == m.source && o.fstype == m.fstype && o.mountpoint != path)
            .collect()
    }

    /// Loop devices whose backing file is `file` (or, with `prefix`, lies below that directory).
    pub fn loops_backed_by(&self, file: &Path, prefix: bool) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for (name, dir) in self.block_devices() {
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(back) = std::fs::read_to_string(dir.join("loop/backing_file")) else {
                continue;
            };
            let back = back.trim_end_matches('\n');
            let back = Path::new(back.strip_suffix(" (deleted)").unwrap_or(back));
            if back == file || (prefix && back.starts_with(file)) {
                found.push(Path::new("/dev").join(&name));
            }
        }
        found
    }

    /// The /sys/block directory of the device-mapper device named `dm_name`.
    fn dm_dir(&self, dm_name: &str) -> Option<PathBuf> {
        self.block_devices().into_iter().find_map(|(_, dir)| {
            let name = std::fs::read_to_string(dir.join("dm/name")).unwrap_or_default();
            (name.trim() == dm_name).then_some(dir)
        })
    }

    /// Whether a device-mapper device of that name exists, and the block devices under it.
    pub fn dm_slaves(&self, dm_name: &str) -> Option<Vec<String>> {
        let dir = self.dm_dir(dm_name)?;
        let mut s: Vec<String> = std::fs::read_dir(dir.join("slaves"))
            .map(|r| {
                r.flatten()
                    .map(|x| x.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        s.sort();
        Some(s)
    }

    /// The LUKS UUID of the container behind the crypt mapping `dm_name`, from the UUID cryptsetup
    /// gave the mapping (`CRYPT-LUKS2-<32 hex digits>-<name>` in sysfs): what `cryptsetup luksUUID`
    /// reads from the header on the server, without reading it.
    pub fn dm_luks_uuid(&self, dm_name: &str) -> Option<String> {
        let u = std::fs::read_to_string(self.dm_dir(dm_name)?.join("dm/uuid")).ok()?;
        luks_uuid_of_dm(u.trim())
    }

    /// Whether the device-mapper device is read-only (`ro` in sysfs: opened with --readonly).
    pub fn dm_read_only(&self, dm_name: &str) -> Option<bool> {
        let ro = std::fs::read_to_string(self.dm_dir(dm_name)?.join("ro")).ok()?;
        Some(ro.trim() == "1")
    }

    /// Sectors written to the device-mapper device so far (the 7th field of its `stat`, counted as
    /// writes complete): it grows while a flush through it makes progress.
    pub fn dm_sectors_written(&self, dm_name: &str) -> Option<u64> {
        let stat = std::fs::read_to_string(self.dm_dir(dm_name)?.join("stat")).ok()?;
        stat.split_whitespace().nth(6)?.parse().ok()
    }

    /// The first NBD device with no client connected (a connected one has a pid file).
    pub fn free_nbd_device(&self) -> Option<PathBuf> {
        let mut devs: Vec<(u32, String)> = self
            .block_devices()
            .into_iter()
            .filter(|(_, dir)| !dir.join("pid").exists())
            .filter_map(|(n, _)| Some((n.strip_prefix("nbd")?.parse().ok()?, n)))
            .collect();
        devs.sort();
        devs.first().map(|(_, n)| Path::new("/dev").join(n))
    }

    pub fn module_loaded(&self, name: &str) -> bool {
        self.path(&format!("/sys/module/{name}")).exists()
    }

    /// The kernel's node name: what kmmpd and e2fsck write into the MMP block.
    pub fn hostname(&self) -> String {
        std::fs::read_to_string(self.path("/proc/sys/kernel/hostname")).unwrap_or_default()
    }

    /// Whether process `pid` exists and its command name starts with `prefix`.
    pub fn process_named(&self, pid: i32, prefix: &str) -> bool {
        std::fs::read_to_string(self.path(&format!("/proc/{pid}/comm")))
            .is_ok_and(|c| c.starts_with(prefix))
    }

    pub fn process_exists(&self, pid: i32) -> bool {
        self.path(&format!("/proc/{pid}")).exists()
    }

    /// Every process, from /proc/PID/{cmdline,stat}.
    pub fn processes(&self) -> Vec<Process> {
        let Ok(rd) = std::fs::read_dir(self.path("/proc")) else {
            return Vec::new();
        };
        if self.forgotten.get() {
            return Vec::new();
        }
        rd.flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let argv = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
                let (left, rest) = stat.rsplit_once(')').unwrap_or(("", ""));
                let comm = left.split_once('(').map_or("", |(_, c)| c).to_string();
                let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
                Some(Process {
                    pid,
                    comm,
                    argv,
                    ppid,
                })
            })
            .collect()
    }

    /// The kernel's TCP tables, IPv4 and IPv6.
    pub fn tcp_tables(&self) -> String {
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.path(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Undo the octal escapes (`\040` for space) of /proc mount files.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u16, |v, c| v * 8 + u16::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `CRYPT-LUKS2-0123…ef-e2e-home` → `01234567-89ab-cdef-0123-456789abcdef`.
fn luks_uuid_of_dm(dm_uuid: &str) -> Option<String> {
    let rest = dm_uuid
        .strip_prefix("CRYPT-LUKS2-")
        .or_else(|| dm_uuid.strip_prefix("CRYPT-LUKS1-"))?;
    let hex = rest.get(..32)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || rest.as_bytes().get(32) != Some(&b'-') {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let lf: Vec<&str> = left.split(' ').collect();
            let rf: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                mountpoint: PathBuf::from(unescape(lf.get(4)?)),
                options: lf.get(5)?.to_string(),
                fstype: rf.first()?.to_string(),
                source: unescape(rf.get(1)?),
            })
        })
        .collect()
}

/// Local ports of orphaned TCP connections to remote port `port` that may still hold unsent data
/// (FIN-WAIT-1, CLOSING, LAST-ACK; inode 0 = no process owns them), from /proc/net/tcp{,6} text.
/// A dead ssh's socket lives on like this and delivers its queued writes when the link returns.
pub fn orphan_ports(tcp_tables: &str, port: u16) -> Vec<u16> {
    let mut out = Vec::new();
    for l in tcp_tables.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 10 || f[0] == "sl" {
            continue;
        }
        let port_of = |a: &str| {
            a.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let (Some(lp), Some(rp)) = (port_of(f[1]), port_of(f[2])) else {
            continue;
        };
        if rp == port && matches!(f[3], "04" | "0B" | "09") && f[9] == "0" {
            out.push(lp);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luks_uuid_from_the_mapping_uuid() {
        assert_eq!(
            luks_uuid_of_dm("CRYPT-LUKS2-3b5c1a6e0f9d4c2a8e7f6b5a4c3d2e1f-e2e-home").as_deref(),
            Some("3b5c1a6e-0f9d-4c2a-8e7f-6b5a4c3d2e1f")
        );
        for bad in [
            "",
            "CRYPT-PLAIN-e2e-home",
            "CRYPT-LUKS2-3b5c-e2e-home",
            "LVM-x",
        ] {
            assert_eq!(luks_uuid_of_dm(bad), None, "{bad}");
        }
    }

    #[test]
    fn views_read_under_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let k = Kernel::at(tmp.path());
        let dev = |d: &[&str]| d.iter().map(PathBuf::from).collect::<Vec<_>>();
        let put = |p: &str, text: &str| {
            let f = tmp.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, text).unwrap();
        };
        put(
            "sys/block/loop1/loop/backing_file",
            "/srv/a.luks (deleted)\n",
        );
        put("sys/block/loop0/loop/backing_file", "/srv/b.luks\n");
        put("sys/block/dm-3/dm/name", "e2e-home\n");
        put(
            "sys/block/dm-3/stat",
            "     120        0     2048       40     3071        0   524288    90210        0     1000    90250\n",
        );
        put("sys/block/dm-3/slaves/nbd2/x", "");
        put("sys/block/nbd1/pid", "42\n");
        put("sys/block/nbd2/size", "0\n");
        put("proc/7/cmdline", "sshfs\0u@h:/srv\0/run/x/remote\0");
        put("proc/7/stat", "7 (sshfs) S 1 7 7");
        put("proc/8/stat", "8 (ssh) S 7 7 7");
        assert_eq!(
            k.loops_backed_by(Path::new("/srv/a.luks"), false),
            dev(&["/dev/loop1"])
        );
        assert_eq!(
            k.loops_backed_by(Path::new("/srv"), true),
            dev(&["/dev/loop0", "/dev/loop1"])
        );
        assert_eq!(k.dm_slaves("e2e-home"), Some(vec!["nbd2".to_string()]));
        assert_eq!(k.dm_slaves("e2e-other"), None);
        assert_eq!(k.dm_sectors_written("e2e-home"), Some(524288));
        assert_eq!(k.dm_sectors_written("e2e-other"), None);
        assert_eq!(k.dm_read_only("e2e-home"), None, "no ro file: not known");
        put("sys/block/dm-3/ro", "1\n");
        assert_eq!(k.dm_read_only("e2e-home"), Some(true));
        assert_eq!(k.free_nbd_device(), Some(PathBuf::from("/dev/nbd2")));
        let ps = k.processes();
        let ssh = ps.iter().find(|p| p.pid == 8).unwrap();
        assert_eq!((ssh.comm.as_str(), ssh.ppid), ("ssh", Some(7)));
        assert_eq!(
            ps.iter().find(|p| p.pid == 7).unwrap().argv[2],
            "/run/x/remote"
        );
        assert!(!k.process_named(7, "ssh"), "no comm file: not known");
        k.forget();
        assert_eq!(k.dm_slaves("e2e-home"), None);
        assert!(k.processes().is_empty());
    }

    #[test]
    fn orphaned_connections() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:B1F2 020000C0:0016 04 00001000:00000000 01:00000100 00000005     0        0 0 1 0000 20 4 30 10 -1
   1: 0100007F:B1F3 020000C0:0016 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000 20 4 30 10 -1
   2: 0100007F:B1F4 020000C0:0016 05 00000000:00000000 00:00000000 00000000     0        0 0 1 0000 20 4 30 10 -1
   3: 0100007F:B1F5 020000C0:0050 04 00000000:00000000 00:00000000 00000000     0        0 0 1 0000 20 4 30 10 -1
   4: 0100007F:B1F6 020000C0:0016 09 00000000:00000000 00:00000000 00000000     0        0 0 1 0000 20 4 30 10 -1";
        // FIN-WAIT-1 and LAST-ACK orphans to port 22; not the live one, FIN-WAIT-2, or port 80.
        assert_eq!(orphan_ports(t, 22), vec![0xB1F2, 0xB1F6]);
        assert!(orphan_ports(t, 2222).is_empty());
    }

    #[test]
    fn mountinfo() {
        let t = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 30 0:50 / /run/e2e-backup/h/remote rw,nosuid,nodev,relatime shared:9 - fuse.sshfs u@h:/srv rw,user_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0].mountpoint, Path::new("/mnt/a b"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[1].fstype, "fuse.sshfs");
        assert_eq!(m[1].source, "u@h:/srv");
        assert_eq!(m[1].options, "rw,nosuid,nodev,relatime");
    }
}
