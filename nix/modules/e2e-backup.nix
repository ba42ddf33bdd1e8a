# NixOS module: services.e2e-backup.jobs.<name> (clients) and services.e2e-backup.server.
#
# Clients use the package's own template units (e2e-open@, e2e-sync@, …, see e2e-backup(7)); per
# job this module writes /etc/e2e-backup/<name>.toml and adds drop-ins to the instances (hooks, key
# credential, environment, timer schedule). The package's e2e-backup-generator
# (e2e-backup-generator(8)) is registered: it reads those job files at boot and at each
# daemon-reload and writes each job's mount units (the sshfs remote, the container's ext4) and,
# for browse.automount, the browse automount. Option names follow
# services.borgbackup.jobs and services.restic.backups where the meaning is the same.
#
# The server gives each client a chrooted SFTP-only account; with server.history.enable it also
# keeps read-only copies of the clients' containers out of their reach (e2e-keep(1)), shown to
# each client read-only at /data/history.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression optional optionals
    optionalAttrs mapAttrsToList filterAttrs attrValues concatLists mkMerge;

  cfg = config.services.e2e-backup;
  settingsFormat = pkgs.formats.toml { };

  # As src/paths.rs validate_job: the name becomes a unit instance, a file name and a dm name.
  validJobName = n: builtins.match "[A-Za-z0-9_][A-Za-z0-9_.@-]*" n != null
    && !(lib.hasInfix ".." n) && builtins.stringLength n <= 64;
  # As src/size.rs parse_size / parse_size_spec.
  sizeRe = "[0-9]+([KMGTPEkmgtpe](iB|B)?)?";
  isSize = s: builtins.match sizeRe s != null;
  isSizeOrPercent = s: isSize s || builtins.match "[0-9]+(\\.[0-9]+)?%" s != null;
  # As src/config/mod.rs time_span: browse.idle_timeout, a systemd TimeoutIdleSec= subset.
  isTimeSpan = s: builtins.match "[1-9][0-9]*(s|min|h)?" s != null;
  inStore = p: p != null && lib.hasPrefix builtins.storeDir (toString p);
  # Variables the units and the module set themselves (units/*.in, the job file's location).
  reservedEnv = [ "E2E_BACKUP_OUTCOME" "E2E_BACKUP_CONFIG_DIR" ];
  validEnvName = n: builtins.match "[A-Za-z_][A-Za-z0-9_]*" n != null && !(builtins.elem n reservedEnv);
  # One Environment= word: quoted (spaces), C escapes for '\', '"' and newlines, "%%" for '%'
  # (systemd expands specifiers in Environment=), so that the value arrives as written.
  envWord = k: v: "\"" + lib.replaceStrings [ "\\" "\"" "\n" "%" ] [ "\\\\" "\\\"" "\\n" "%%" ] "${k}=${v}" + "\"";
  # As src/remote/mod.rs SFTP_REQUESTS (tests/man.rs keeps them equal): internal-sftp refuses the rest.
  sftpRequests = "open,close,read,write,lstat,fstat,setstat,fsetstat,opendir,readdir,remove,mkdir,realpath,stat,rename,posix-rename,statvfs,fsync";
  defaultTimer = { startAt = "daily"; persistentTimer = true; randomizedDelaySec = "1h"; };

  keepOption = what: mkOption {
    type = types.ints.unsigned;
    default = 0;
    description = "Keep the newest snapshot of each of the last N ${what} that have snapshots (0: rule off).";
  };

  jobModule = { name, ... }: {
    options = {
      paths = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "/home" "/etc" ];
        description = "Absolute paths to back up (sync.paths). May be empty when dynamicFilesFrom is set.";
      };
      dynamicFilesFrom = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "find /home -mindepth 1 -maxdepth 1 -type d -not -name guest";
        description = ''
          A shell command whose output, one absolute path a line (empty lines and lines starting
          with # skipped), is added to paths at each run, as
          `services.restic.backups.<name>.dynamicFilesFrom`. It runs as an ExecStartPre= of
          e2e-sync@${name}, after preHook (so it can list what preHook wrote), as root, with the
          job's environment and environmentFile, in that unit's sandbox (no JIT under
          MemoryDenyWriteExecute=), under `set -eo pipefail`: a command that fails
          (also inside a pipe) fails the run, which then backs up nothing. Its output replaces
          /run/e2e-backup-lists/${name}.list atomically (sync.files_from of the job file names
          that list), which e2e-sync reads and checks at its start; a line that is not an absolute
          path fails the run with exit 2. The list stays there until the next run or reboot, so
          an `e2e-sync ${name}` run by hand backs up the paths of the list the last successful
          run of the command wrote, and fails with exit 2 when none was written yet since boot.
          null: paths alone.
        '';
      };
      exclude = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "*.cache" "/home/*/.local/share/Trash" ];
        description = "rsync exclude patterns.";
      };
      excludeFrom = mkOption {
        type = types.listOf types.path;
        default = [ ];
        example = literalExpression ''[ "/etc/e2e-backup/home.exclude" ./home.exclude ]'';
        description = ''
          Files of rsync exclude patterns, one a line (sync.exclude_from, rsync --exclude-from),
          read at each run. A string is a path on the client; a Nix path literal is copied into
          the Nix store.
        '';
      };
      extraRsyncArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--one-file-system" ];
        description = "Extra arguments appended to rsync (sync.rsync_args).";
      };
      allowPartial = mkOption {
        type = types.bool;
        default = true;
        description = ''
          A run during which some source files cannot be read still publishes its snapshot, marked
          incomplete (the previous version stands in), and exits 8 (sync.allow_partial). false: such
          a run fails and publishes nothing.
        '';
      };
      skipUnchanged = mkOption {
        type = types.bool;
        default = false;
        description = ''
          A run that finds the source unchanged since the latest complete snapshot makes no new
          snapshot; it records the run beside that snapshot instead, shown as "unchanged through
          STAMP" by `e2e-sync --list` (sync.skip_unchanged). false: every run makes a snapshot.
        '';
      };
      browse = {
        automount = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Browse the job's snapshots read-only at /run/e2e-backup/${name}/browse (browse.automount
            of the job file): a systemd automount, written at boot and at each daemon-reload by
            e2e-backup-generator (of services.e2e-backup.package, which this turns on), mounts
            them on first access, which brings the stack up (the job's mount units, e2e-open@${name}),
            and unmounts them after browse.idleTimeout without use, which lets the stack unwind. A
            backup may run meanwhile: it shares the open stack and leaves it open for the browser.
          '';
        };
        idleTimeout = mkOption {
          type = types.str;
          default = "10min";
          example = "1h";
          description = ''
            How long the browse mount stays without use before it is unmounted (browse.idle_timeout,
            the automount's TimeoutIdleSec=): a whole number > 0, in seconds or followed by s, min
            or h, e.g. "15min".
          '';
        };
      };
      startAt = mkOption {
        type = with types; either str (listOf str);
        default = defaultTimer.startAt;
        example = "*-*-* 03:00:00";
        description = ''
          When to run the backup (systemd.time(7) calendar events). An empty list installs no
          timer: run it with `systemctl start e2e-backup@${name}`. See also timerConfig.
        '';
      };
      persistentTimer = mkOption {
        type = types.bool;
        default = defaultTimer.persistentTimer;
        description = "Run a backup missed while the machine was off at the next boot (Persistent=; also for the verifyAt and trimAt timers).";
      };
      randomizedDelaySec = mkOption {
        type = types.str;
        default = defaultTimer.randomizedDelaySec;
        example = "0";
        description = "Random delay added to each scheduled run (RandomizedDelaySec=; also for the verifyAt and trimAt timers).";
      };
      timerConfig = mkOption {
        type = with types; nullOr (attrsOf anything);
        default = null;
        example = { OnCalendar = "00:05"; RandomizedDelaySec = "5h"; Persistent = true; };
        description = ''
          Free-form [Timer] settings of e2e-backup@${name}.timer (systemd.timer(5)), as
          `services.restic.backups.<name>.timerConfig`. When set they replace what startAt,
          persistentTimer and randomizedDelaySec give that timer (leave startAt at its default;
          persistentTimer and randomizedDelaySec then apply to the verifyAt and trimAt timers
          only). The package's OnCalendar=daily is dropped first, so only your triggers apply;
          Persistent= and RandomizedDelaySec= not given here stay the package's (yes, 1h). It
          needs at least one trigger (OnCalendar=, OnBootSec=, …). null: startAt and the
          options above make the timer.
        '';
      };
      verifyAt = mkOption {
        type = with types; either str (listOf str);
        default = [ ];
        example = "weekly";
        description = ''
          When to read the newest snapshot back and check it against its manifest
          (e2e-verify@${name}.timer, systemd.time(7) calendar events). Empty: no scheduled verify.
        '';
      };
      trimAt = mkOption {
        type = with types; either str (listOf str);
        default = [ ];
        example = "monthly";
        description = ''
          When to give the server back the space of deleted data (e2e-trim@${name}.timer; needs
          the server's NBD side, services.e2e-backup.server.nbd). Empty: no scheduled trim.
        '';
      };
      inhibitsSleep = mkOption {
        type = types.bool;
        default = false;
        description = "Keep the machine from suspending while the job syncs, grows or trims.";
      };
      prune.keep = {
        last = mkOption {
          type = types.ints.unsigned;
          default = 0;
          description = "Keep the N newest snapshots.";
        };
        hourly = keepOption "hours";
        daily = keepOption "days";
        weekly = keepOption "ISO weeks";
        monthly = keepOption "months";
        yearly = keepOption "years";
        within = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "7d";
          description = "Keep every snapshot made within this long before the newest one (units y, m, w, d, h, e.g. \"1y6m\"; retention.keep_within).";
        };
      };
      preHook = mkOption {
        type = types.lines;
        default = "";
        description = "Shell commands run before the sync, with the container already open (e.g. a database dump into a backed-up path). A failure cancels the run.";
      };
      postHook = mkOption {
        type = types.lines;
        default = "";
        description = "Shell commands run after the sync, also when it failed; $SERVICE_RESULT and $EXIT_STATUS tell how it went.";
      };
      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { E2E_BACKUP_STALL_TIMEOUT = "300"; E2E_GROW = "--by 10%"; };
        description = ''
          Environment variables of every unit of the job that runs an e2e-backup binary:
          e2e-open@${name}, e2e-sync@ (its preHook and postHook too), e2e-grow@,
          e2e-trim@, e2e-verify@ and e2e-backup@${name}, as Environment= in their drop-ins. The
          binaries pass them on to rsync, ssh and the other tools they run; ENVIRONMENT in
          e2e-sync(1) lists the ones they read. E2E_GROW, the arguments e2e-grow@ passes to
          e2e-grow, replaces that unit's --by=25%. Values are taken literally ('%' is not a systemd
          specifier here). E2E_BACKUP_OUTCOME and E2E_BACKUP_CONFIG_DIR belong to the units and
          the module and cannot be set.
        '';
      };
      environmentFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/e2e-backup-home.env";
        description = ''
          A file of KEY=value lines (systemd.exec(5) EnvironmentFile=) read when each of the
          job's units starts (the same units as environment; its values win over environment's).
          A path on the client, given as a string so that it stays out of the world-readable Nix
          store; a missing file fails the unit.
        '';
      };
      package = mkOption {
        type = types.nullOr types.package;
        default = null;
        defaultText = literalExpression "config.services.e2e-backup.package";
        description = ''
          The e2e-backup package whose binaries this job's units run (their ExecStart= and
          ExecStop= lines are replaced), e.g. to try a new version on one job. null:
          services.e2e-backup.package. The unit templates themselves (ordering, hardening) and
          the tools on PATH stay those of services.e2e-backup.package.
        '';
      };
      remote = {
        host = mkOption { type = types.str; description = "Server host name."; };
        port = mkOption { type = types.port; default = 22; description = "SSH port."; };
        user = mkOption { type = types.str; description = "SSH user on the server."; };
        path = mkOption {
          type = types.str;
          example = "/data";
          description = "Directory on the server holding the container (/data for a services.e2e-backup.server client).";
        };
        identityFile = mkOption {
          type = types.str;
          example = "/etc/e2e-backup/id_ed25519";
          description = "SSH private key (a path on the client, not in the Nix store).";
        };
        hostKey = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "ssh-ed25519 AAAAC3Nza...";
          description = "The server's SSH host public key; a known_hosts file pinning it is generated.";
        };
        knownHostsFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          description = "A known_hosts file pinning the server's host key (instead of hostKey).";
        };
        nbdPort = mkOption {
          type = types.port;
          default = 10809;
          description = "nbd-server port on the server's loopback, for e2e-trim (services.e2e-backup.server.clients.<name>.nbdPort).";
        };
      };
      container = {
        file = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Container file name inside remote.path (default <job>.luks).";
        };
        size = mkOption {
          type = types.str;
          example = "64G";
          description = "Container size at creation (truncate-style: 5T = 5 TiB).";
        };
        filesystem = mkOption {
          type = types.enum [ "ext4" "btrfs" ];
          default = "ext4";
          description = "The filesystem a new container gets, and with it the snapshot engine: ext4 (hard-link snapshots with rsync --link-dest) or btrfs (rsync in place into a working subvolume, each snapshot a read-only subvolume snapshot; a container of at least 128M). Read from the container at every open: a job that names the other one is refused. See e2e-backup.toml(5).";
        };
        create = mkOption {
          type = types.bool;
          default = true;
          description = "Create the container on first use (like borgbackup's doInit). Set to false once it exists, so that a wrong path is an error rather than a fresh start.";
        };
        maxSize = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Never grow beyond this size.";
        };
        autoGrowFree = mkOption {
          type = types.str;
          default = "10%";
          description = "Grow before a sync when free space is below this (\"0\" disables).";
        };
        autoGrowStep = mkOption {
          type = types.str;
          default = "25%";
          description = "Grow by this much.";
        };
        serverReserve = mkOption {
          type = types.str;
          default = "1G";
          description = "Never let the server's free space drop below this.";
        };
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/etc/e2e-backup/home.key";
        description = "LUKS key file on the client (mode 0600, not in the Nix store). Keep a copy elsewhere.";
      };
      keyCredential = {
        path = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Pass the key as systemd credential `key` from this file (LoadCredential=) instead of keyFile.";
        };
        encrypted = mkOption {
          type = types.bool;
          default = false;
          description = "The credential file is encrypted with systemd-creds (LoadCredentialEncrypted=).";
        };
      };
    };
  };

  knownHosts = name: job:
    if job.remote.knownHostsFile != null then job.remote.knownHostsFile
    else pkgs.writeText "e2e-backup-${name}-known_hosts"
      "${if job.remote.port == 22 then job.remote.host else "[${job.remote.host}]:${toString job.remote.port}"} ${toString job.remote.hostKey}\n";

  # The job file (docs/contract.md, e2e-backup.toml(5)). null = key left out (tool default).
  jobSettings = name: job: {
    remote = {
      inherit (job.remote) host port user path;
      identity_file = job.remote.identityFile;
      known_hosts = toString (knownHosts name job);
    };
    container = filterAttrs (_: v: v != null) {
      inherit (job.container) size create filesystem;
      file = job.container.file;
      key_file = job.keyFile;
      max_size = job.container.maxSize;
      auto_grow_free = job.container.autoGrowFree;
      auto_grow_step = job.container.autoGrowStep;
      server_reserve = job.container.serverReserve;
    };
    sync = {
      inherit (job) paths exclude;
      rsync_args = job.extraRsyncArgs;
      allow_partial = job.allowPartial;
      skip_unchanged = job.skipUnchanged;
    } // optionalAttrs (job.excludeFrom != [ ]) { exclude_from = map (p: "${p}") job.excludeFrom; }
    // optionalAttrs (job.dynamicFilesFrom != null) { files_from = [ (filesFromList name) ]; };
    retention = {
      keep_last = job.prune.keep.last;
      keep_hourly = job.prune.keep.hourly;
      keep_daily = job.prune.keep.daily;
      keep_weekly = job.prune.keep.weekly;
      keep_monthly = job.prune.keep.monthly;
      keep_yearly = job.prune.keep.yearly;
    } // optionalAttrs (job.prune.keep.within != null) { keep_within = job.prune.keep.within; };
    browse = {
      inherit (job.browse) automount;
      idle_timeout = job.browse.idleTimeout;
    };
  };

  # Where the dynamicFilesFrom command's output goes: outside /run/e2e-backup/<name>/, which the
  # tools own (and which no backup includes).
  filesFromDir = "e2e-backup-lists";
  filesFromList = name: "/run/${filesFromDir}/${name}.list";

  jobFile = name: job: settingsFormat.generate "e2e-backup-${name}.toml" (jobSettings name job);

  credentialConfig = job: optionalAttrs (job.keyCredential.path != null) (
    if job.keyCredential.encrypted
    then { LoadCredentialEncrypted = "key:${job.keyCredential.path}"; }
    else { LoadCredential = "key:${job.keyCredential.path}"; });

  # The commands of the package's template units (units/*.in, @BINDIR@/ left out), for a job
  # whose units run another package's binaries; nix/check compares them with units/*.in.
  unitCommands = job: {
    e2e-open = { ExecStart = "e2e-open --no-mount %i"; ExecStop = "e2e-close --keep-remote %i"; };
    e2e-sync.ExecStart = "e2e-sync %i";
    e2e-grow.ExecStart = "e2e-grow $E2E_GROW %i";
    e2e-trim.ExecStart = "e2e-trim${lib.optionalString (job.remote.nbdPort != 10809)
      " --nbd-port ${toString job.remote.nbdPort}"} %i";
    e2e-verify.ExecStart = "e2e-sync --verify=latest %i";
    e2e-backup.ExecStart = "e2e-close --outcome %i";
  };

  # Drop-ins for the package's template instances; asDropin keeps the template's settings.
  jobServices = name: job:
    let
      dropin = extra: {
        overrideStrategy = "asDropin";
        # A changed job file applies from the next run; never restart a running backup for it.
        restartIfChanged = false;
      } // extra;
      pkg = if job.package != null then job.package else cfg.package;
      # The settings every unit running the job's binaries gets: environment, and the commands
      # of the job's own package (the empty entry drops the template's command first).
      runConfig = unit:
        optionalAttrs (job.environment != { }) {
          Environment = mapAttrsToList envWord job.environment;
        } // optionalAttrs (job.environmentFile != null) {
          EnvironmentFile = toString job.environmentFile;
        } // lib.mapAttrs (_: cmd: [ "" "${pkg}/bin/${cmd}" ]) (filterAttrs (k: _:
          job.package != null || (unit == "e2e-trim" && k == "ExecStart" && job.remote.nbdPort != 10809))
          (unitCommands job).${unit});
      # e2e-sync@ and e2e-trim@ below also get the credential (all five read the key).
      keyUnits = [ "e2e-open" "e2e-grow" "e2e-verify" ];
      inhibit = optionals job.inhibitsSleep [ "e2e-backup-inhibit@${name}.service" ];
      # dynamicFilesFrom: the command's output into the list, whole or not at all (a failed
      # command leaves the previous list and fails the unit, so e2e-sync does not run).
      filesFromCommand = pkgs.writeShellScript "e2e-backup-${name}-files-from"
        ("set -eo pipefail\n" + job.dynamicFilesFrom + "\n");
      filesFromWrite = pkgs.writeShellScript "e2e-backup-${name}-files-from-write" ''
        set -eo pipefail
        umask 077
        list=${lib.escapeShellArg (filesFromList name)}
        ${filesFromCommand} >"$list.new"
        ${pkgs.coreutils}/bin/mv -f "$list.new" "$list"
      '';
      preCommands = optional (job.preHook != "") "${pkgs.writeShellScript "e2e-backup-${name}-pre" job.preHook}"
        ++ optional (job.dynamicFilesFrom != null) "${filesFromWrite}";
    in
    mkMerge [
      (lib.listToAttrs (map (u: lib.nameValuePair "${u}@${name}" (dropin {
        serviceConfig = credentialConfig job // runConfig u;
        wants = inhibit;
      })) keyUnits))
      {
        "e2e-sync@${name}" = dropin {
          serviceConfig = credentialConfig job // runConfig "e2e-sync"
            // optionalAttrs (preCommands != [ ]) { ExecStartPre = preCommands; }
            // optionalAttrs (job.dynamicFilesFrom != null) {
            # Made by systemd before ExecStartPre=, root's, mode 0700 at every start; kept after
            # the run (until reboot) for e2e-sync run by hand. Shared by the jobs' instances,
            # all with the same settings, so no instance's stop removes another's list.
            RuntimeDirectory = filesFromDir;
            RuntimeDirectoryMode = "0700";
            RuntimeDirectoryPreserve = true;
          } // optionalAttrs (job.postHook != "") {
            ExecStopPost = [ "${pkgs.writeShellScript "e2e-backup-${name}-post" job.postHook}" ];
          };
          wants = inhibit;
        };
        "e2e-trim@${name}" = dropin {
          serviceConfig = credentialConfig job // runConfig "e2e-trim";
          wants = inhibit;
        };
      }
      # The units that need no drop-in otherwise: only when there is something to put in it.
      (lib.listToAttrs (lib.concatMap (u: optional (runConfig u != { })
        (lib.nameValuePair "${u}@${name}" (dropin { serviceConfig = runConfig u; })))
        [ "e2e-backup" ]))
    ];

  # The backup, verify and trim timers of a job: drop-ins over the package's templates.
  jobTimer = name: job:
    let
      timer = timerConfig: {
        overrideStrategy = "asDropin";
        wantedBy = [ "timers.target" ];
        inherit timerConfig;
      };
      # The empty entry drops the template's own OnCalendar= (daily, weekly, monthly).
      calendar = c: {
        OnCalendar = [ "" ] ++ lib.toList c;
        Persistent = job.persistentTimer;
        RandomizedDelaySec = job.randomizedDelaySec;
      };
      at = lib.filterAttrs (_: c: lib.toList c != [ ]) {
        "e2e-backup@${name}" = job.startAt;
        "e2e-verify@${name}" = job.verifyAt;
        "e2e-trim@${name}" = job.trimAt;
      };
    in
    lib.mapAttrs (_: c: timer (calendar c)) at
    // optionalAttrs (job.timerConfig != null) {
      "e2e-backup@${name}" = timer (job.timerConfig // {
        OnCalendar = [ "" ] ++ lib.toList (job.timerConfig.OnCalendar or [ ]);
      });
    };

  hasTimer = job: lib.toList job.verifyAt != [ ] || lib.toList job.trimAt != [ ];
  hasTrigger = tc: lib.any (k: lib.hasPrefix "On" k && lib.filter (v: v != "") (lib.toList tc.${k}) != [ ])
    (lib.attrNames tc);

  jobAssertions = name: job: [
    {
      assertion = validJobName name;
      message = "services.e2e-backup.jobs.\"${name}\": the job name must match [A-Za-z0-9_][A-Za-z0-9_.@-]*, without \"..\", at most 64 characters (it becomes a unit instance and /run/e2e-backup/<name>).";
    }
    {
      assertion = (job.paths != [ ] || job.dynamicFilesFrom != null) && builtins.all (lib.hasPrefix "/") job.paths;
      message = "services.e2e-backup.jobs.${name}.paths must hold absolute paths only, at least one unless dynamicFilesFrom is set (got ${builtins.toJSON job.paths}).";
    }
    {
      assertion = (job.keyFile != null) != (job.keyCredential.path != null);
      message = "services.e2e-backup.jobs.${name}: set exactly one of keyFile (a path on the client) and keyCredential.path (a systemd credential).";
    }
    {
      assertion = !(inStore job.keyFile) && !(inStore job.keyCredential.path && !job.keyCredential.encrypted);
      message = "services.e2e-backup.jobs.${name}: the LUKS key must not be in the world-readable Nix store; give a path as a string (\"/etc/e2e-backup/${name}.key\"), not a Nix path literal, or use an encrypted credential.";
    }
    {
      assertion = !(inStore job.remote.identityFile);
      message = "services.e2e-backup.jobs.${name}.remote.identityFile is in the Nix store, where every user can read the SSH private key; give a path outside it as a string.";
    }
    {
      assertion = (job.remote.hostKey != null) != (job.remote.knownHostsFile != null);
      message = "services.e2e-backup.jobs.${name}.remote: set exactly one of hostKey and knownHostsFile: the server's host key must be pinned.";
    }
    {
      assertion = isSize job.container.size;
      message = "services.e2e-backup.jobs.${name}.container.size = \"${job.container.size}\" is not a size like 64G (K, M, G, T, P, E = powers of 1024).";
    }
    {
      assertion = job.container.maxSize == null || isSize job.container.maxSize;
      message = "services.e2e-backup.jobs.${name}.container.maxSize is not a size like 5T.";
    }
    {
      assertion = isSize job.container.serverReserve && isSizeOrPercent job.container.autoGrowFree
        && isSizeOrPercent job.container.autoGrowStep;
      message = "services.e2e-backup.jobs.${name}.container: serverReserve must be a size, autoGrowFree and autoGrowStep sizes or percentages (\"10%\").";
    }
    {
      assertion = isTimeSpan job.browse.idleTimeout;
      message = "services.e2e-backup.jobs.${name}.browse.idleTimeout = \"${job.browse.idleTimeout}\" is not a time span the job file takes: a whole number > 0, alone (seconds) or followed by s, min or h, e.g. \"10min\".";
    }
    {
      assertion = job.container.file == null
        || (builtins.match "[^/.\n][^/\n]*" job.container.file != null);
      message = "services.e2e-backup.jobs.${name}.container.file must be a plain file name (no '/', not starting with '.').";
    }
    {
      assertion = builtins.all validEnvName (lib.attrNames job.environment);
      message = "services.e2e-backup.jobs.${name}.environment: variable names must match [A-Za-z_][A-Za-z0-9_]*, and ${lib.concatStringsSep " and " reservedEnv} are set by the units and the module (got ${builtins.toJSON (lib.attrNames job.environment)}).";
    }
    {
      assertion = job.timerConfig == null || job.startAt == defaultTimer.startAt;
      message = "services.e2e-backup.jobs.${name}: timerConfig replaces startAt as the schedule of e2e-backup@${name}.timer; put the calendar events in timerConfig.OnCalendar and leave startAt unset, or drop timerConfig.";
    }
    {
      assertion = job.timerConfig == null || hasTimer job
        || (job.persistentTimer == defaultTimer.persistentTimer && job.randomizedDelaySec == defaultTimer.randomizedDelaySec);
      message = "services.e2e-backup.jobs.${name}: with timerConfig set, persistentTimer and randomizedDelaySec apply only to the verifyAt and trimAt timers, and this job has neither; set Persistent and RandomizedDelaySec in timerConfig instead.";
    }
    {
      assertion = job.timerConfig == null || hasTrigger job.timerConfig;
      message = "services.e2e-backup.jobs.${name}.timerConfig has no trigger (OnCalendar, OnBootSec, OnUnitActiveSec, …), so the timer would never start a backup; for no timer at all leave timerConfig null and set startAt = [ ].";
    }
  ];

  # ---- server ----
  srv = cfg.server;

  clientModule = { name, ... }: {
    options = {
      user = mkOption {
        type = types.str;
        default = "e2e-${name}";
        description = "System user the client logs in as.";
      };
      directory = mkOption {
        type = types.str;
        default = "${srv.baseDirectory}/${name}";
        description = "Chroot of the client; its containers live in <directory>/data, which the client sees as /data.";
      };
      authorizedKeys = mkOption {
        type = types.listOf types.str;
        description = "The client's SSH public keys (its remote.identityFile's .pub).";
      };
      containers = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "alice-home.luks" ];
        description = "Container file names to export over NBD for e2e-trim (export name = file name; unique across clients).";
      };
      nbdPort = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 10810;
        description = "Loopback port of this client's own NBD server (set the job's remote.nbdPort to it). One nbd-server per client: NBD has no authentication, so a shared one would let any client reach every export.";
      };
    };
  };

  clients = srv.clients;
  nbdClients = filterAttrs (_: c: srv.nbd.enable && c.containers != [ ]) clients;

  # qemu-nbd, not nbd-server: nbd-server's TRIM handler (exptrim, nbdsrv.c) clamps each request to
  # export size minus twice its offset, so discards in the upper half of the file never punch holes.
  # qemu-nbd serves one file, hence one container per client when NBD is enabled (assertion below).
  nbdCommand = c: let f = lib.head c.containers; in lib.escapeShellArgs [
    "${pkgs.qemu-utils}/bin/qemu-nbd" "--persistent" "--bind" "127.0.0.1" "--port" (toString c.nbdPort)
    "--format" "raw" "--discard=unmap" "--export-name" f "${c.directory}/data/${f}"
  ];

  # restrict: no pty, no agent/X11 forwarding, no port forwarding — except the one NBD port.
  keyLine = c: k:
    if srv.nbd.enable && c.nbdPort != null
    then "restrict,port-forwarding,permitopen=\"127.0.0.1:${toString c.nbdPort}\" ${k}"
    else "restrict ${k}";

  allExports = concatLists (mapAttrsToList (_: c: c.containers) nbdClients);

  # ---- server-held copies (e2e-keep(1), SERVER-HELD COPIES in e2e-backup(7)) ----
  hist = srv.history;
  # A path without "//" or a trailing "/", for the comparisons and the unit names below.
  norm = p: let n = lib.strings.normalizePath (toString p); in if n == "/" then n else lib.removeSuffix "/" n;
  isInside = a: b: a == b || lib.hasPrefix (if b == "/" then b else b + "/") a;
  overlap = a: b: isInside a b || isInside b a;
  # The client's store: the writable tree of its chroot, holding its *.luks (the client's /data),
  # where its copies show up read-only as history/ (what e2e-sync --from-copy opens).
  storeDir = c: "${norm c.directory}/data";
  historyDir = c: "${storeDir c}/history";
  copiesDir = name: norm "${toString hist.dir}/${name}";
  # systemd-escape --path, as nixpkgs' utils.escapeSystemdPath: the unit name of a mount point.
  mountUnit = p:
    let
      e = lib.strings.escapeC (lib.stringToCharacters " !\"#$%&'()*+,;<=>=@[\\]^`{|}~-")
        (lib.removePrefix "/" (norm p));
    in
    lib.replaceStrings [ "/" ] [ "-" ] (if lib.hasPrefix "." e then "\\x2e" + lib.removePrefix "." e else e)
    + ".mount";
  # As src/timefmt.rs parse_within: numbers with units y, m, w, d, h, together, not all zero.
  isDuration = s: builtins.match "([0-9]+[ymwdh])+" s != null && builtins.match "(0+[ymwdh])+" s == null;
  # The rules not at 0, in e2e-keep --help's order.
  keepFlags = lib.concatMap ({ flag, n }: optionals (n > 0) [ "--keep-${flag}" (toString n) ]) [
    { flag = "last"; n = hist.keepLast; }
    { flag = "hourly"; n = hist.keepHourly; }
    { flag = "daily"; n = hist.keepDaily; }
    { flag = "weekly"; n = hist.keepWeekly; }
    { flag = "monthly"; n = hist.keepMonthly; }
    { flag = "yearly"; n = hist.keepYearly; }
  ];
  keepCommand = name: c: lib.escapeShellArgs ([
    "${cfg.package}/bin/e2e-keep" "--into" (copiesDir name) "--user" c.user
  ] ++ keepFlags
    ++ optionals (hist.alertAfter != null) [ "--alert-after" hist.alertAfter ]
    ++ optional hist.fullCopy "--full-copy"
    ++ [ (storeDir c) ]);
  # Pairs (a client's copies, a client's directory) one inside the other: that client could reach
  # the copies other than through the read-only mount (write or delete them, or read another's).
  copiesOverlaps = concatLists (mapAttrsToList (a: _: concatLists (mapAttrsToList (b: c:
    optional (overlap (copiesDir a) (norm c.directory))
      "the copies of ${a} (${copiesDir a}) and the directory of ${b} (${norm c.directory})")
    clients)) clients);

  copyKeepOption = flag: what: default: mkOption {
    type = types.ints.unsigned;
    inherit default;
    description = "Keep the newest copy of each of the last N ${what} that have copies (e2e-keep --keep-${flag}; 0: rule off). With all six at 0 every copy is kept.";
  };
in
{
  options.services.e2e-backup = {
    package = mkOption {
      type = types.package;
      default = pkgs.e2e-backup or (pkgs.callPackage ../packages/e2e-backup.nix { });
      defaultText = literalExpression "pkgs.callPackage ./nix/packages/e2e-backup.nix { }";
      description = "The e2e-backup package.";
    };

    jobs = mkOption {
      type = types.attrsOf (types.submodule jobModule);
      default = { };
      example = literalExpression ''
        {
          home = {
            paths = [ "/home" ];
            exclude = [ "*.cache" ];
            remote = { host = "backup.example.org"; user = "e2e-laptop"; path = "/data";
                       identityFile = "/etc/e2e-backup/id_ed25519"; hostKey = "ssh-ed25519 AAAA..."; };
            container.size = "64G";
            keyFile = "/etc/e2e-backup/home.key";
            prune.keep = { daily = 7; weekly = 4; monthly = 6; };
          };
        }
      '';
      description = "Backup jobs: each runs as `systemctl start e2e-backup@<name>` and on its timer.";
    };

    server = {
      enable = mkEnableOption "the e2e-backup server side: SFTP-only, chrooted accounts for clients";
      baseDirectory = mkOption {
        type = types.str;
        default = "/srv/e2e-backup";
        description = "Parent of the clients' chroot directories.";
      };
      clients = mkOption {
        type = types.attrsOf (types.submodule clientModule);
        default = { };
        description = "One locked-down account per client.";
      };
      nbd.enable = mkOption {
        type = types.bool;
        default = false;
        description = "Run a qemu-nbd per client on 127.0.0.1:<nbdPort> exporting its container with TRIM turned into hole punches, reachable only through that client's SSH tunnel, for e2e-trim.";
      };
      history = {
        enable = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Keep read-only copies of each client's containers out of its reach (e2e-keep(1),
            SERVER-HELD COPIES in e2e-backup(7)), against a compromised client that destroys the
            live container. Per client <name>: e2e-keep-<name>.service (root, on
            e2e-keep-<name>.timer) copies each container of <directory>/data that changed and
            settled, while no process of the client's account runs, by reflink into
            <history.dir>/<name>/<FILE>/<STAMP>.luks (root's, mode 0444), and applies the
            retention below by the server's clock; that directory is bind-mounted read-only at
            <directory>/data/history, which the client sees as /data/history (what
            `e2e-sync JOB --from-copy STAMP` opens). A suspicious change of a container
            (truncated, LUKS header gone or replaced, allocation down by half), or no completed
            session within alertAfter, fails the unit with the line at priority err: set
            systemd.services."e2e-keep-<name>".onFailure to be told.
          '';
        };
        dir = mkOption {
          type = types.path;
          default = "/srv/e2e-backup-copies";
          example = "/srv/copies";
          description = ''
            Where the copies go, <dir>/<name> per client: outside baseDirectory and every client's
            directory, and on the same XFS or btrfs filesystem as the clients' directories (a
            reflink cannot cross filesystems; see fullCopy). Give it as a string.
          '';
        };
        keepLast = mkOption {
          type = types.ints.unsigned;
          default = 0;
          description = "Keep the N newest copies of each container (e2e-keep --keep-last; 0: rule off).";
        };
        keepHourly = copyKeepOption "hourly" "hours" 0;
        keepDaily = copyKeepOption "daily" "days" 14;
        keepWeekly = copyKeepOption "weekly" "ISO weeks" 8;
        keepMonthly = copyKeepOption "monthly" "months" 12;
        keepYearly = copyKeepOption "yearly" "years" 0;
        alertAfter = mkOption {
          type = types.nullOr types.str;
          default = "3d";
          example = "1w";
          description = ''
            Fail the client's e2e-keep unit, with a line at priority err, when a container's newest
            copy is older than this: the client has not completed a session since (e2e-keep
            --alert-after). Numbers with units y, m (30 days), w, d, h, written together, e.g.
            "3d" or "1d12h". null: never.
          '';
        };
        fullCopy = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Copy whole where a reflink is impossible (another filesystem, or one without reflinks,
            such as ext4) instead of refusing (e2e-keep --full-copy): every copy then writes the
            container's size, and takes that much space.
          '';
        };
        interval = mkOption {
          type = types.str;
          default = "*:0/15";
          example = "hourly";
          description = ''
            When each client's e2e-keep timer looks for a finished session (OnCalendar=,
            systemd.time(7)); a run copies nothing while the client's session is open or when
            nothing changed. Missed runs are made up at boot (Persistent=).
          '';
        };
      };
    };
  };

  config = mkMerge [
    (mkIf (cfg.jobs != { }) {
      assertions = concatLists (mapAttrsToList jobAssertions cfg.jobs);
      environment.systemPackages = [ cfg.package ];
      systemd.packages = [ cfg.package ];
      environment.etc = lib.mapAttrs' (name: job:
        lib.nameValuePair "e2e-backup/${name}.toml" { source = jobFile name job; }) cfg.jobs;
      systemd.services = mkMerge (mapAttrsToList jobServices cfg.jobs);
      systemd.timers = mkMerge (mapAttrsToList jobTimer cfg.jobs);
      # The jobs' mount units (and browse automounts): mount units are named after their paths,
      # so a generator writes them from the job files in /etc/e2e-backup (where environment.etc
      # above puts them, the generator's default directory). The sshfs mount needs no
      # environment; the units that run the job's binaries get it above.
      systemd.generators = {
        e2e-backup-generator = "${cfg.package}/lib/systemd/system-generators/e2e-backup-generator";
      };
      # mount(8) of the generated remote mount unit runs sshfs as its helper mount.fuse.sshfs.
      system.fsPackages = [ pkgs.sshfs ];
      boot.kernelModules = [ "loop" "dm_crypt" "fuse" ];
    })

    (mkIf srv.enable {
      assertions = mapAttrsToList (name: c: {
        assertion = c.authorizedKeys != [ ];
        message = "services.e2e-backup.server.clients.${name}.authorizedKeys is empty: the client could never log in.";
      }) clients
      ++ mapAttrsToList (name: c: {
        assertion = c.containers == [ ] || !srv.nbd.enable || c.nbdPort != null;
        message = "services.e2e-backup.server.clients.${name}: nbd is enabled and containers are listed, so set nbdPort (a loopback port of its own).";
      }) clients
      ++ mapAttrsToList (name: c: {
        assertion = !srv.nbd.enable || lib.length c.containers <= 1;
        message = "services.e2e-backup.server.clients.${name}: with nbd enabled a client exports one container (qemu-nbd serves one file); split the containers over several client entries.";
      }) clients
      ++ [
        {
          assertion = lib.allUnique allExports;
          message = "services.e2e-backup.server: NBD export names (container file names) must be unique across clients; give the clients' jobs distinct container.file names (got ${builtins.toJSON allExports}).";
        }
        {
          assertion = lib.allUnique (lib.filter (p: p != null) (mapAttrsToList (_: c: c.nbdPort) nbdClients));
          message = "services.e2e-backup.server: each client needs its own nbdPort.";
        }
        {
          assertion = config.services.openssh.enable;
          message = "services.e2e-backup.server needs services.openssh.enable = true.";
        }
      ];

      users.groups = lib.mapAttrs' (_: c: lib.nameValuePair c.user { }) clients;
      users.users = lib.mapAttrs' (_: c: lib.nameValuePair c.user {
        isSystemUser = true;
        group = c.user;
        home = "${c.directory}/data";
        # No shell: ForceCommand internal-sftp below is all the account can do.
        shell = "${pkgs.shadow}/bin/nologin";
        openssh.authorizedKeys.keys = map (keyLine c) c.authorizedKeys;
      }) clients;

      # ChrootDirectory must be root-owned and not group/world-writable; the client writes in data/.
      systemd.tmpfiles.rules = [ "d ${srv.baseDirectory} 0755 root root -" ]
        ++ concatLists (mapAttrsToList (_: c: [
        "d ${c.directory} 0755 root root -"
        "d ${c.directory}/data 0700 ${c.user} ${c.user} -"
      ]) clients);

      # ClientAlive*: a client whose link died is dropped within ~60 s, and with it the
      # sftp-server that could still apply its queued writes after a later run has started.
      services.openssh.extraConfig = lib.concatStrings (mapAttrsToList (_: c: ''
        Match User ${c.user}
          ChrootDirectory ${c.directory}
          ForceCommand internal-sftp -d /data -p ${sftpRequests}
          PermitTTY no
          X11Forwarding no
          AllowAgentForwarding no
          PermitTunnel no
          ClientAliveInterval 15
          ClientAliveCountMax 4
          ${if srv.nbd.enable && c.nbdPort != null
            then "AllowTcpForwarding local\n  PermitOpen 127.0.0.1:${toString c.nbdPort}"
            else "AllowTcpForwarding no"}
      '') clients);

      systemd.services = lib.mapAttrs' (name: c: lib.nameValuePair "e2e-backup-nbd-${name}" {
        description = "qemu-nbd for e2e-backup client ${name} (loopback only, for e2e-trim)";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        serviceConfig = {
          # qemu-nbd stays in the foreground (no --fork): one process for systemd to watch.
          ExecStart = nbdCommand c;
          User = c.user;
          Group = c.user;
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          ReadWritePaths = [ "${c.directory}/data" ];
          PrivateTmp = true;
          PrivateDevices = true;
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
          CapabilityBoundingSet = "";
          SystemCallArchitectures = "native";
        };
      }) nbdClients;
    })

    (mkIf (srv.enable && hist.enable) {
      assertions = [
        {
          assertion = copiesOverlaps == [ ];
          message = "services.e2e-backup.server.history.dir = \"${toString hist.dir}\": a client's copies must not lie inside a store directory (a client's directory, its chroot) nor hold one, or the client could reach them other than read-only: ${lib.concatStringsSep "; " copiesOverlaps}. Put history.dir outside baseDirectory and the clients' directories, on the same XFS or btrfs filesystem.";
        }
        {
          assertion = hist.alertAfter == null || isDuration hist.alertAfter;
          message = "services.e2e-backup.server.history.alertAfter = \"${toString hist.alertAfter}\" is not a duration like 3d, 1w or 1d12h (numbers with units y, m, w, d, h, written together, not all zero); null turns the alert off.";
        }
      ];

      # Root's, 0755: the bind mount shows the mode of the copies' directory to the client, which
      # may read and traverse but not write; the copies in it are root's, 0444. The mount point
      # in the client's store is root's too; while mounted the client can neither remove nor
      # replace it.
      systemd.tmpfiles.rules = concatLists (mapAttrsToList (name: c: [
        "d ${copiesDir name} 0755 root root -"
        "d ${historyDir c} 0755 root root -"
      ]) clients);

      # A mount unit rather than fileSystems: the mount point lies in a tree the client writes,
      # and fstab's generator resolves symlinks in it when it writes the unit (a client that put
      # a symlink there could have its copies mounted over any directory of the server), while
      # systemd refuses to start a mount unit whose Where= holds a symlink. Not part of
      # local-fs.target: a failure (copies' filesystem missing) does not stop the boot.
      systemd.mounts = mapAttrsToList (name: c: {
        description = "e2e-backup server: client ${name}'s copies, read-only in its directory";
        what = copiesDir name;
        where = historyDir c;
        type = "none";
        options = "bind,ro";
        wantedBy = [ "multi-user.target" ];
      }) clients;

      # As the package's e2e-keep@.service (units/e2e-keep@.service.in), with the settings in the
      # command line instead of /etc/e2e-backup/keep/<name>.env.
      systemd.services = lib.mapAttrs' (name: c: lib.nameValuePair "e2e-keep-${name}" {
        description = "e2e-backup server: read-only copies of client ${name}'s containers";
        documentation = [ "man:e2e-keep(1)" "man:e2e-backup(7)" ];
        # A copy stopped halfway is only made again; let a running one finish over a switch.
        restartIfChanged = false;
        # (Re)mounts the copies for the client if that failed before (e.g. the copies'
        # directory did not exist yet); the copies are made either way.
        wants = [ (mountUnit (historyDir c)) ];
        after = [ (mountUnit (historyDir c)) ];
        # A store whose filesystem is not mounted would look empty and be copied from nowhere.
        unitConfig.RequiresMountsFor = [ (storeDir c) (copiesDir name) ];
        serviceConfig = {
          Type = "oneshot";
          ExecStart = keepCommand name c;
          Nice = 10;
          IOSchedulingClass = "idle";
          # Root, as it must be to write where the client cannot; it needs nothing else of the
          # system. No ProtectHome=: a store may live under /home.
          ProtectSystem = "full";
          PrivateTmp = true;
          PrivateNetwork = true;
          NoNewPrivileges = true;
          RestrictRealtime = true;
          LockPersonality = true;
          RestrictNamespaces = true;
          SystemCallArchitectures = "native";
          MemoryDenyWriteExecute = true;
          RestrictAddressFamilies = "AF_UNIX";
        };
      }) clients;

      systemd.timers = lib.mapAttrs' (name: _: lib.nameValuePair "e2e-keep-${name}" {
        description = "e2e-backup server: copies of client ${name}'s containers after each session";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = hist.interval;
          Persistent = true;
        };
      }) clients;
    })
  ];
}
