# The e2e-backup package: the eight binaries (wrapped so the tools they run are found on NixOS),
# the systemd generator of the browse automounts, systemd units, man pages and shell completions,
# installed as the project's own `make install` does.
{ lib
, rustPlatform
, makeWrapper
, sshfs
, fuse3
, openssh
, cryptsetup
, util-linux
, e2fsprogs
, btrfs-progs
, rsync
, nbd
, coreutils
, procps
, systemd
}:

rustPlatform.buildRustPackage {
  pname = "e2e-backup";
  version = (lib.importTOML ../../Cargo.toml).package.version;

  src = lib.cleanSourceWith {
    src = ../..;
    # Only what the build and `make install` read; edits to nix/ or docs/ do not rebuild.
    filter = path: type:
      let rel = lib.removePrefix (toString ../.. + "/") (toString path);
      in builtins.any (p: rel == p || lib.hasPrefix (p + "/") rel)
        [ "Cargo.toml" "Cargo.lock" "Makefile" "src" "bins" "tests" "units" "man" "completions" ];
  };

  cargoLock.lockFile = ../../Cargo.lock;

  nativeBuildInputs = [ makeWrapper ];

  # The VM scenarios in tests/vm need QEMU and root; `cargo test` (unit tests, man page and
  # completion goldens) runs as usual in checkPhase.

  # `make install` expects target/release/; cargo's build hook leaves the binaries in
  # target/<triple>/release, so copy them from the output cargo's install hook made.
  postInstall = ''
    mkdir -p target/release
    for b in e2e-mount e2e-open e2e-sync e2e-grow e2e-trim e2e-close e2e-setup e2e-keep; do
      cp $out/bin/$b target/release/$b
    done
    make install-units install-man install-completions PREFIX=$out BINDIR=$out/bin \
      SYSTEMD_INHIBIT=${systemd}/bin/systemd-inhibit SLEEP=${coreutils}/bin/sleep
    # Where `make install` puts the generator (GENERATORDIR); it runs no tools, so no wrapper.
    mkdir -p $out/lib/systemd/system-generators
    mv $out/bin/e2e-backup-generator $out/lib/systemd/system-generators/
    for b in $out/bin/e2e-*; do
      wrapProgram $b --prefix PATH : ${lib.makeBinPath [
        sshfs fuse3 openssh cryptsetup util-linux e2fsprogs btrfs-progs rsync nbd coreutils
        procps # pgrep: e2e-keep's look for a client session still open
      ]}
    done
  '';

  meta = {
    description = "End-to-end encrypted backups into a LUKS2 container on an untrusted SSH server";
    license = with lib.licenses; [ mit asl20 ];
    platforms = lib.platforms.linux;
    mainProgram = "e2e-sync";
  };
}
