{
  description = "e2e-backup: end-to-end encrypted backups into a LUKS2 container on an untrusted SSH server";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (system: pkgs: rec {
        e2e-backup = pkgs.callPackage ./nix/packages/e2e-backup.nix { };
        default = e2e-backup;
      });

      # Nix 2.8 rejects a bare path here; a module that imports it works everywhere.
      nixosModules = {
        e2e-backup = { imports = [ ./nix/modules/e2e-backup.nix ]; };
        default = self.nixosModules.e2e-backup;
      };

      overlays.default = final: prev: {
        e2e-backup = final.callPackage ./nix/packages/e2e-backup.nix { };
      };

      # One NixOS VM test per feature (nix/tests/<feature>.nix), plus the package build.
      checks = forAll (system: pkgs:
        let
          test = file: import file {
            inherit pkgs;
            module = self.nixosModules.e2e-backup;
            package = self.packages.${system}.e2e-backup;
          };
        in
        {
          package = self.packages.${system}.e2e-backup;
          basic = test ./nix/tests/basic.nix;
          grow = test ./nix/tests/grow.nix;
          trim = test ./nix/tests/trim.nix;
          second-client = test ./nix/tests/second-client.nix;
          failing-job = test ./nix/tests/failing-job.nix;
          browse = test ./nix/tests/browse.nix;
          btrfs = test ./nix/tests/btrfs.nix;
        });
    };
}
