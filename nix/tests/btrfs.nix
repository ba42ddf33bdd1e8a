# NixOS VM test: btrfs (script: nix/tests/btrfs.py). Run: nix build .#checks.x86_64-linux.btrfs
{ pkgs, module, package }:
(import ./lib.nix { inherit pkgs module package; }).makeTest {
  name = "btrfs";
  script = ./btrfs.py;
  job.container.filesystem = "btrfs";
}
