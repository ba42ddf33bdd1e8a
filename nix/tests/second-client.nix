# NixOS VM test: second-client (script: nix/tests/second-client.py). Run: nix build .#checks.x86_64-linux.second-client
{ pkgs, module, package }:
(import ./lib.nix { inherit pkgs module package; }).makeTest {
  name = "second-client";
  script = ./second-client.py;
  clients = [ "client" "client2" ];
}
