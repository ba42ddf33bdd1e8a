# Shared by the NixOS VM tests: a server node (services.e2e-backup.server) and client nodes with
# one job "home" each, plus the Python prelude (common.py) every test script starts with.
{ pkgs, module, package }:
let
  inherit (pkgs) lib;
  keys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;
  nbdPorts = { client = 10810; client2 = 10811; };
in
{
  # makeTest { name; clients ? [ "client" ]; nbd ? false; job ? { }; script = ./feature.py; }
  makeTest = { name, clients ? [ "client" ], nbd ? false, job ? { }, script }:
    pkgs.testers.runNixOSTest {
      name = "e2e-backup-${name}";
      nodes = {
        server = { ... }: {
          imports = [ module ];
          services.openssh.enable = true;
          services.e2e-backup.package = package;
          services.e2e-backup.server = {
            enable = true;
            nbd.enable = nbd;
            clients = lib.genAttrs clients (c: {
              authorizedKeys = [ keys.snakeOilPublicKey ];
              containers = [ "${c}-home.luks" ];
              nbdPort = nbdPorts.${c};
            });
          };
          environment.systemPackages = [ pkgs.nbd ];
          virtualisation.diskSize = 2048;
        };
      } // lib.genAttrs clients (c: { ... }: {
        imports = [ module ];
        services.e2e-backup.package = package;
        services.e2e-backup.jobs.home = lib.recursiveUpdate {
          paths = [ "/data" ];
          startAt = [ ];
          remote = {
            host = "server";
            user = "e2e-${c}";
            path = "/data";
            identityFile = "/etc/e2e-backup/id";
            knownHostsFile = "/etc/e2e-backup/known_hosts";
            nbdPort = nbdPorts.${c};
          };
          container = { size = "256M"; file = "${c}-home.luks"; };
          keyFile = "/etc/e2e-backup/home.key";
        } job;
        boot.kernelModules = [ "nbd" ];
        environment.systemPackages = [ pkgs.cryptsetup pkgs.openssh pkgs.btrfs-progs ];
        virtualisation.memorySize = 1024;
      });
      testScript = ''
        PRIVKEY = "${pkgs.writeText "snakeoil-key" keys.snakeOilPrivateKey}"
        CLIENTS = [${lib.concatMapStringsSep ", " (c: c) clients}]
      '' + builtins.readFile ./common.py + builtins.readFile script;
    };
}
