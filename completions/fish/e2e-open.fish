complete -c e2e-open -l config -d 'Job file to read instead of <config-dir>/<JOB>.toml' -r -F
complete -c e2e-open -l config-dir -d 'Directory of job files [env: E2E_BACKUP_CONFIG_DIR] [default: /etc/e2e-backup]' -r -F
complete -c e2e-open -l host -d 'Server host name (remote.host)' -r
complete -c e2e-open -l port -d 'SSH port (remote.port)' -r
complete -c e2e-open -l user -d 'SSH user (remote.user)' -r
complete -c e2e-open -l remote-path -d 'Directory on the server holding the container (remote.path)' -r
complete -c e2e-open -l identity-file -d 'SSH private key (remote.identity_file)' -r -F
complete -c e2e-open -l known-hosts -d 'known_hosts file pinning the server key (remote.known_hosts)' -r -F
complete -c e2e-open -l container-file -d 'Container file name inside the remote path (container.file)' -r
complete -c e2e-open -l size -d 'Container size at creation, e.g. 64G (container.size)' -r
complete -c e2e-open -l key-file -d 'LUKS key file (container.key_file)' -r -F
complete -c e2e-open -l source -d 'Source path to back up, repeatable (sync.paths)' -r
complete -c e2e-open -l exclude -d 'rsync exclude pattern, repeatable (sync.exclude)' -r
complete -c e2e-open -l keep-lease -d '(started by the bring-up of a btrfs container, not by hand) keep its lease from SEQ on until SIGTERM, then release it' -r
complete -c e2e-open -l dry-run -d 'Print the commands that would run, shell-quoted, one per line, as a script; run none'
complete -c e2e-open -s v -l verbose -d 'Also show the output of the commands run'
complete -c e2e-open -s q -l quiet -d 'Only warnings and errors on stderr: no logged commands, progress, notes or reports (for cron and scripts; stdout and the exit code are unchanged)'
complete -c e2e-open -l create -d 'Create the container if the file does not exist yet'
complete -c e2e-open -l read-only -d 'Open and mount read-only (for restores)'
complete -c e2e-open -l no-mount -d 'Stop at the checked LUKS mapping and leave mounting to the job\'s mount unit; the remote must be mounted already (how e2e-open@.service runs, see e2e-backup-generator(8))'
complete -c e2e-open -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2e-open -s V -l version -d 'Print version'
function __e2e_backup_jobs
    set -l d /etc/e2e-backup
    set -q E2E_BACKUP_CONFIG_DIR; and set d $E2E_BACKUP_CONFIG_DIR
    for f in $d/*.toml
        basename $f .toml
    end
end
complete -c e2e-open -n 'not string match -q -- "-*" (commandline -ct)' -a '(__e2e_backup_jobs)' -d job
