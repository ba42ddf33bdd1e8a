# Offline evaluation of nix/modules/e2e-backup.nix for nix/check: lib.evalModules with stub
# declarations of the NixOS options the module sets (typed like NixOS's, so misspelt options and
# wrong types fail) and stub pkgs (nothing is built). Returns what the module generated, as JSON.
#   nix-instantiate --eval --strict --json nix/eval.nix --arg lib 'import NIXPKGS_LIB/lib' --argstr case two-jobs
{ lib, case }:
let
  inherit (lib) mkOption types;
  fakeDrv = name: { outPath = "/nix/store/00000000000000000000000000000000-${name}"; inherit name; };
  pkgs = {
    inherit lib;
    # The real generator runs remarshal at build time; the stub keeps the value for nix/check to
    # write as TOML and feed to the real parser.
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      generate = name: value: fakeDrv name // { tomlValue = value; };
    };
    writeText = name: text: fakeDrv name // { inherit text; };
    writeShellScript = name: text: fakeDrv name // { inherit text; };
    e2e-backup = fakeDrv "e2e-backup";
    e2e-backup-next = fakeDrv "e2e-backup-next";
    shadow = fakeDrv "shadow";
    coreutils = fakeDrv "coreutils";
    nbd = fakeDrv "nbd";
    qemu-utils = fakeDrv "qemu-utils";
    sshfs = fakeDrv "sshfs";
  };
  unitValue = types.oneOf [ types.bool types.int types.str (types.listOf types.str) ];
  unitCommon = {
    overrideStrategy = mkOption { type = types.enum [ "asDropinIfExists" "asDropin" ]; default = "asDropinIfExists"; };
    description = mkOption { type = types.str; default = ""; };
    wants = mkOption { type = types.listOf types.str; default = [ ]; };
    wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
    after = mkOption { type = types.listOf types.str; default = [ ]; };
    documentation = mkOption { type = types.listOf types.str; default = [ ]; };
    unitConfig = mkOption { type = types.attrsOf unitValue; default = { }; };
  };
  stubs = {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule { options.source = mkOption { type = types.package; }; });
        default = { };
      };
      systemd.packages = mkOption { type = types.listOf types.package; default = [ ]; };
      systemd.generators = mkOption { type = types.attrsOf types.path; default = { }; };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule {
          options = unitCommon // {
            restartIfChanged = mkOption { type = types.bool; default = true; };
            serviceConfig = mkOption { type = types.attrsOf unitValue; default = { }; };
          };
        });
        default = { };
      };
      systemd.timers = mkOption {
        type = types.attrsOf (types.submodule {
          options = unitCommon // { timerConfig = mkOption { type = types.attrsOf unitValue; default = { }; }; };
        });
        default = { };
      };
      systemd.mounts = mkOption {
        type = types.listOf (types.submodule {
          options = unitCommon // {
            what = mkOption { type = types.str; };
            where = mkOption { type = types.str; };
            type = mkOption { type = types.str; default = ""; };
            options = mkOption { type = types.str; default = ""; };
          };
        });
        default = [ ];
      };
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
      boot.kernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
      system.fsPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      users.groups = mkOption { type = types.attrsOf (types.submodule { }); default = { }; };
      users.users = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            isSystemUser = mkOption { type = types.bool; default = false; };
            group = mkOption { type = types.str; };
            home = mkOption { type = types.str; };
            shell = mkOption { type = types.either types.package types.str; };
            openssh.authorizedKeys.keys = mkOption { type = types.listOf types.str; default = [ ]; };
          };
        });
        default = { };
      };
      services.openssh.enable = mkOption { type = types.bool; default = false; };
      services.openssh.extraConfig = mkOption { type = types.lines; default = ""; };
    };
  };

  cases = {
    # Two jobs using most options (home: startAt, the hooks, skipUnchanged, browse and
    # dynamicFilesFrom instead of paths; db: timerConfig, environment, allowPartial = false and
    # its own package), and a server with two clients and NBD.
    two-jobs = {
      services.openssh.enable = true;
      services.e2e-backup.jobs = {
        home = {
          # No paths: the list the command writes holds them all.
          dynamicFilesFrom = "echo /etc; find /home -mindepth 1 -maxdepth 1 -type d -not -name guest | sort";
          exclude = [ "*.cache" "/home/*/.local/share/Trash" ];
          extraRsyncArgs = [ "--one-file-system" ];
          startAt = [ "*-*-* 03:00:00" "*-*-* 15:00:00" ];
          verifyAt = "Sun 04:00";
          trimAt = "monthly";
          inhibitsSleep = true;
          skipUnchanged = true;
          browse = { automount = true; idleTimeout = "15min"; };
          prune.keep = { daily = 7; weekly = 4; monthly = 6; within = "2w"; };
          preHook = "echo pre";
          postHook = "echo post $EXIT_STATUS";
          remote = {
            host = "backup.example.org";
            user = "e2e-laptop";
            path = "/data";
            identityFile = "/etc/e2e-backup/id_ed25519";
            hostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
          };
          container = { size = "64G"; maxSize = "1T"; };
          keyFile = "/etc/e2e-backup/home.key";
        };
        db = {
          paths = [ "/var/backup/db" ];
          excludeFrom = [ "/etc/e2e-backup/db.exclude" ];
          # What startAt = "hourly", persistentTimer = false and randomizedDelaySec = "0" made,
          # plus a trigger they cannot express.
          timerConfig = { OnCalendar = "hourly"; OnBootSec = "10min"; Persistent = false; RandomizedDelaySec = "0"; };
          environment = { E2E_BACKUP_STALL_TIMEOUT = "300"; E2E_GROW = "--by 10%"; };
          environmentFile = "/run/secrets/e2e-db.env";
          package = pkgs.e2e-backup-next;
          prune.keep.last = 24;
          allowPartial = false;
          remote = {
            host = "10.0.0.2";
            port = 2222;
            user = "e2e-laptop";
            path = "/data";
            identityFile = "/etc/e2e-backup/id_ed25519";
            knownHostsFile = "/etc/e2e-backup/known_hosts";
            nbdPort = 10811;
          };
          container = { size = "5T"; file = "laptop-db.luks"; create = false; autoGrowFree = "0"; filesystem = "btrfs"; };
          keyCredential = { path = "/etc/credstore.encrypted/e2e-db.key"; encrypted = true; };
        };
      };
      services.e2e-backup.server = {
        enable = true;
        nbd.enable = true;
        clients = {
          laptop = { authorizedKeys = [ "ssh-ed25519 AAAAlaptop laptop" ]; containers = [ "laptop-db.luks" ]; nbdPort = 10811; };
          desktop = { authorizedKeys = [ "ssh-ed25519 AAAAdesktop desktop" ]; };
        };
      };
    };
    # A server keeping copies of its clients' containers (e2e-keep): laptop in the default
    # layout, desktop with its own account and directory; retention and alertAfter at their
    # defaults, plus keepLast and fullCopy.
    history = {
      services.openssh.enable = true;
      services.e2e-backup.server = {
        enable = true;
        clients = {
          laptop.authorizedKeys = [ "ssh-ed25519 AAAAlaptop laptop" ];
          desktop = {
            authorizedKeys = [ "ssh-ed25519 AAAAdesktop desktop" ];
            user = "backup-desktop";
            directory = "/srv/other-backups/desk-top";
          };
        };
        history = { enable = true; keepLast = 5; fullCopy = true; };
      };
    };
    # Impossible settings: each must be refused by an assertion with a helpful message.
    bad = {
      services.e2e-backup.jobs."bad..name" = {
        paths = [ "relative/path" ];
        remote = {
          host = "h"; user = "u"; path = "/data";
          identityFile = "/nix/store/00000000000000000000000000000000-id";
        };
        container.size = "64 GB";
        keyFile = "/etc/k";
        keyCredential.path = "/etc/k.cred";
        environment = { "NOT-A-NAME" = "x"; E2E_BACKUP_OUTCOME = "/tmp/o"; };
        # timerConfig with startAt, randomizedDelaySec that would apply to nothing, and no trigger.
        startAt = "hourly";
        randomizedDelaySec = "5m";
        timerConfig = { Persistent = false; };
        # systemd would take "5m"; the job file takes s, min and h only.
        browse.idleTimeout = "5m";
      };
      services.e2e-backup.server = {
        enable = true;
        nbd.enable = true;
        clients = {
          a = { authorizedKeys = [ ]; containers = [ "home.luks" ]; nbdPort = 10810; };
          b = { authorizedKeys = [ "k" ]; containers = [ "home.luks" ]; };
        };
        # The copies inside a's store, where a could delete them; no unit in "3 days".
        history = { enable = true; dir = "/srv/e2e-backup/a/data/copies"; alertAfter = "3 days"; };
      };
    };
  };

  eval = lib.evalModules {
    modules = [ stubs ./modules/e2e-backup.nix cases.${case} { _module.args.pkgs = pkgs; } ];
  };
  c = eval.config;
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
  jobFiles = lib.mapAttrs (_: v: v.source.tomlValue or null) c.environment.etc;
  etcSources = lib.mapAttrs (_: v: v.source.outPath) c.environment.etc;
  services = c.systemd.services;
  timers = c.systemd.timers;
  mounts = c.systemd.mounts;
  packages = map (p: p.outPath) c.systemd.packages;
  generators = c.systemd.generators;
  fsPackages = map (p: p.name) c.system.fsPackages;
  kernelModules = c.boot.kernelModules;
  users = c.users.users;
  groups = lib.attrNames c.users.groups;
  tmpfiles = c.systemd.tmpfiles.rules;
  sshdExtraConfig = c.services.openssh.extraConfig;
}
