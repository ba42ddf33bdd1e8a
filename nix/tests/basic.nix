# NixOS VM test: basic (script: nix/tests/basic.py). Run: nix build .#checks.x86_64-linux.basic
{ pkgs, module, package }:
(import ./lib.nix { inherit pkgs module package; }).makeTest {
  name = "basic";
  script = ./basic.py;
}
