complete -c e2e-close -l config -d 'Job file to read instead of <config-dir>/<JOB>.toml' -r -F
complete -c e2e-close -l config-dir -d 'Directory of job files [env: E2E_BACKUP_CONFIG_DIR] [default: /etc/e2e-backup]' -r -F
complete -c e2e-close -l host -d 'Server host name (remote.host)' -r
complete -c e2e-close -l port -d 'SSH port (remote.port)' -r
complete -c e2e-close -l user -d 'SSH user (remote.user)' -r
complete -c e2e-close -l remote-path -d 'Directory on the server holding the container (remote.path)' -r
complete -c e2e-close -l identity-file -d 'SSH private key (remote.identity_file)' -r -F
complete -c e2e-close -l known-hosts -d 'known_hosts file pinning the server key (remote.known_hosts)' -r -F
complete -c e2e-close -l container-file -d 'Container file name inside the remote path (container.file)' -r
complete -c e2e-close -l size -d 'Container size at creation, e.g. 64G (container.size)' -r
complete -c e2e-close -l key-file -d 'LUKS key file (container.key_file)' -r -F
complete -c e2e-close -l source -d 'Source path to back up, repeatable (sync.paths)' -r
complete -c e2e-close -l exclude -d 'rsync exclude pattern, repeatable (sync.exclude)' -r
complete -c e2e-close -l dry-run -d 'Print the commands that would run, shell-quoted, one per line, as a script; run none'
complete -c e2e-close -s v -l verbose -d 'Also show the output of the commands run'
complete -c e2e-close -s q -l quiet -d 'Only warnings and errors on stderr: no logged commands, progress, notes or reports (for cron and scripts; stdout and the exit code are unchanged)'
complete -c e2e-close -l keep-remote -d 'Leave the sshfs mount in place'
complete -c e2e-close -l force -d 'Close even while a run of this job holds its lock (a stale lock; a running sync keeps its filesystem mounted all the same)'
complete -c e2e-close -l outcome -d 'Then exit with the outcome of the job\'s last backup run through the systemd units, read from the file $E2E_BACKUP_OUTCOME names (what e2e-backup@JOB.service runs): the sync\'s snapshot, or the failing layer\'s error line and exit code; no recorded outcome is a failure'
complete -c e2e-close -l release-lease -d '(a step of teardown, not for use by hand) stop the lease keeper of the job\'s btrfs container and leave its lease free'
complete -c e2e-close -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2e-close -s V -l version -d 'Print version'
function __e2e_backup_jobs
    set -l d /etc/e2e-backup
    set -q E2E_BACKUP_CONFIG_DIR; and set d $E2E_BACKUP_CONFIG_DIR
    for f in $d/*.toml
        basename $f .toml
    end
end
complete -c e2e-close -n 'not string match -q -- "-*" (commandline -ct)' -a '(__e2e_backup_jobs)' -d job
