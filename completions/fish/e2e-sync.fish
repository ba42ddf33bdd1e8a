complete -c e2e-sync -l config -d 'Job file to read instead of <config-dir>/<JOB>.toml' -r -F
complete -c e2e-sync -l config-dir -d 'Directory of job files [env: E2E_BACKUP_CONFIG_DIR] [default: /etc/e2e-backup]' -r -F
complete -c e2e-sync -l host -d 'Server host name (remote.host)' -r
complete -c e2e-sync -l port -d 'SSH port (remote.port)' -r
complete -c e2e-sync -l user -d 'SSH user (remote.user)' -r
complete -c e2e-sync -l remote-path -d 'Directory on the server holding the container (remote.path)' -r
complete -c e2e-sync -l identity-file -d 'SSH private key (remote.identity_file)' -r -F
complete -c e2e-sync -l known-hosts -d 'known_hosts file pinning the server key (remote.known_hosts)' -r -F
complete -c e2e-sync -l container-file -d 'Container file name inside the remote path (container.file)' -r
complete -c e2e-sync -l size -d 'Container size at creation, e.g. 64G (container.size)' -r
complete -c e2e-sync -l key-file -d 'LUKS key file (container.key_file)' -r -F
complete -c e2e-sync -l source -d 'Source path to back up, repeatable (sync.paths)' -r
complete -c e2e-sync -l exclude -d 'rsync exclude pattern, repeatable (sync.exclude)' -r
complete -c e2e-sync -l restore -d 'Restore SNAPSHOT[/PATH] (SNAPSHOT may be `latest`) into TARGET, rsync-style, read-only open; then check every restored file against the snapshot\'s checksum manifest (exit 1 if one differs)' -r
complete -c e2e-sync -l diff -d 'What changed from snapshot OLD to NEW (each `latest` or a stamp), from their checksum manifests, reading no file data: one line per regular file, `+ PATH` added, `- PATH` removed, `M PATH` other contents (metadata, symlinks and empty directories are not compared); the counts on stderr. Exit 7 if a manifest cannot be read' -r
complete -c e2e-sync -l history -d 'The versions of one file, by its source path (e.g. /home/alice/notes.txt), across the snapshots, oldest first: `STAMP<TAB>STATE<TAB>SIZE<TAB>MODIFIED<TAB>SHA256` (first 16 hex digits), STATE one of added, same, changed, removed, stale (not readable in that run: the previous version), unknown (no readable manifest: exit 7)' -r
complete -c e2e-sync -l verify -d 'Re-read SNAPSHOT (--verify=STAMP; default `latest`; read-only open) against the checksum manifest written when it was made; report changed, missing and extra files, exit 1 on any difference' -r
complete -c e2e-sync -l from-copy -d 'Read a copy the server keeps (e2e-keep(1)) instead of the live container: the one of STAMP, at history/<container.file>/STAMP.luks in the job\'s remote directory; with --list, --restore, --verify, --diff or --history (read-only; the job must not be open)' -r
complete -c e2e-sync -l dry-run -d 'Print the commands that would run, shell-quoted, one per line, as a script; run none'
complete -c e2e-sync -s v -l verbose -d 'Also show the output of the commands run'
complete -c e2e-sync -s q -l quiet -d 'Only warnings and errors on stderr: no logged commands, progress, notes or reports (for cron and scripts; stdout and the exit code are unchanged)'
complete -c e2e-sync -l unchecked -d 'With --restore: restore even when the snapshot\'s manifest is missing, damaged or lists none of the files (otherwise refused with exit 7 before anything is copied); the restore is unchecked'
complete -c e2e-sync -l list -d 'List the snapshots, oldest first, one stamp per line; an incomplete one is followed by a tab and "incomplete: N source path(s) not read"'
complete -c e2e-sync -l json -d 'Print the result as JSON on stdout instead of a path or lines: a sync\'s summary (snapshot, stamp, complete, unread, files, bytes, changed_bytes, seconds), --verify\'s and --restore\'s findings, --list, --diff and --history (every schema in docs/contract.md)'
complete -c e2e-sync -l prune -d 'Apply [retention] now, without a sync: print every snapshot, oldest first, as `keep<TAB>STAMP<TAB>rules` (e.g. "daily 2": the newest of the 2nd most recent day) or `remove<TAB>STAMP<TAB>no rule keeps it`, then delete the removed ones. The snapshot `latest` names is always kept'
complete -c e2e-sync -l preview -d 'With --prune: open read-only, print the verdicts, delete nothing'
complete -c e2e-sync -l create -d 'Create the container first if it does not exist (as e2e-open --create)'
complete -c e2e-sync -l no-grow -d 'Do not grow the container before syncing'
complete -c e2e-sync -l no-prune -d 'Do not prune old snapshots after syncing'
complete -c e2e-sync -l skip-unchanged -d 'Make no new snapshot when nothing changed since the latest one, as sync.skip_unchanged = true: the run is recorded beside that snapshot ("unchanged through", in --list)'
complete -c e2e-sync -l accept-rollback -d 'Use the container even though it fails the check against what this host last wrote (it lacks the newest snapshot this host wrote, that snapshot\'s manifest changed, or its LUKS UUID differs: the server handed back an older or another copy); a sync then prunes nothing'
complete -c e2e-sync -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2e-sync -s V -l version -d 'Print version'
function __e2e_backup_jobs
    set -l d /etc/e2e-backup
    set -q E2E_BACKUP_CONFIG_DIR; and set d $E2E_BACKUP_CONFIG_DIR
    for f in $d/*.toml
        basename $f .toml
    end
end
complete -c e2e-sync -n 'not string match -q -- "-*" (commandline -ct)' -a '(__e2e_backup_jobs)' -d job
