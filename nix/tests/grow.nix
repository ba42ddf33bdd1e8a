# NixOS VM test: grow (script: nix/tests/grow.py). Run: nix build .#checks.x86_64-linux.grow
{ pkgs, module, package }:
(import ./lib.nix { inherit pkgs module package; }).makeTest {
  name = "grow";
  script = ./grow.py;
}
