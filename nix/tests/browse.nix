# NixOS VM test: browse (script: nix/tests/browse.py). Run: nix build .#checks.x86_64-linux.browse
{ pkgs, module, package }:
(import ./lib.nix { inherit pkgs module package; }).makeTest {
  name = "browse";
  script = ./browse.py;
  job.browse.automount = true;
}
