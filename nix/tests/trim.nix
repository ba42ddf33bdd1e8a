# NixOS VM test: trim (script: nix/tests/trim.py). Run: nix build .#checks.x86_64-linux.trim
{ pkgs, module, package }:
(import ./lib.nix { inherit pkgs module package; }).makeTest {
  name = "trim";
  script = ./trim.py;
  nbd = true;
  job.prune.keep.last = 1;
}
