# NixOS VM test: failing-job (script: nix/tests/failing-job.py). Run: nix build .#checks.x86_64-linux.failing-job
{ pkgs, module, package }:
(import ./lib.nix { inherit pkgs module package; }).makeTest {
  name = "failing-job";
  script = ./failing-job.py;
}
