# e2e-backup: `make` builds, `make install PREFIX=/usr/local DESTDIR=` installs.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
CARGO ?= cargo
INSTALL ?= install

BINS = e2e-mount e2e-open e2e-sync e2e-grow e2e-trim e2e-close e2e-setup e2e-keep

.PHONY: all build test check install uninstall clean install-units install-man install-completions uninstall-extras

all: build

build:
	$(CARGO) build --release --locked

test:
	$(CARGO) test --locked

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --locked

# Installs what `make` built; it does not build (so `sudo make install` never runs cargo as root).
install:
	@for b in $(BINS) e2e-backup-generator; do test -x target/release/$$b || { echo "target/release/$$b missing: run make first" >&2; exit 1; }; done
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	for b in $(BINS); do $(INSTALL) -m 0755 target/release/$$b $(DESTDIR)$(BINDIR)/$$b; done
	$(INSTALL) -d $(DESTDIR)$(GENERATORDIR)
	$(INSTALL) -m 0755 target/release/e2e-backup-generator $(DESTDIR)$(GENERATORDIR)/e2e-backup-generator
# Then the units, man pages and completions:
# systemd units: units/*.in with @BINDIR@ substituted → $(DESTDIR)$(PREFIX)/lib/systemd/system
# man pages:     man/*.1, man/*.5, man/*.7, man/*.8 → $(DESTDIR)$(PREFIX)/share/man/man{1,5,7,8}
# generator:     e2e-backup-generator → $(DESTDIR)$(GENERATORDIR) (with the binaries, above)
# completions:   completions/{bash,zsh,fish} → share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}
	$(MAKE) --no-print-directory install-units install-man install-completions

uninstall:
	for b in $(BINS); do rm -f $(DESTDIR)$(BINDIR)/$$b; done
	rm -f $(DESTDIR)$(GENERATORDIR)/e2e-backup-generator

# Removes what install-units/-man/-completions put in place (`make uninstall uninstall-extras`).
uninstall-extras:
	for u in units/*.in; do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$u .in); done
	for m in man/*.[1578]; do rm -f $(DESTDIR)$(MANDIR)/man$${m##*.}/$$(basename $$m); done
	for b in $(BINS); do rm -f $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$b \
	  $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_$$b $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/$$b.fish; done

# Units, man pages and completions come from the source tree as they are (no build step), and are
# written only under DESTDIR, so installing from a read-only tree works.
UNITDIR ?= $(PREFIX)/lib/systemd/system
# The generator of the jobs' mount units (e2e-backup-generator(8)); systemd also searches
# /usr/local/lib/systemd/system-generators.
GENERATORDIR ?= $(PREFIX)/lib/systemd/system-generators
MANDIR ?= $(PREFIX)/share/man
# Tools the sleep-inhibitor unit runs; found on PATH, overridable (e.g. by the Nix package).
SYSTEMD_INHIBIT ?= $(shell command -v systemd-inhibit || echo /usr/bin/systemd-inhibit)
SLEEP ?= $(shell command -v sleep || echo /usr/bin/sleep)

install-units:
	$(INSTALL) -d $(DESTDIR)$(UNITDIR)
	for u in units/*.in; do \
	  sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@INHIBIT@|$(SYSTEMD_INHIBIT)|g' -e 's|@SLEEP@|$(SLEEP)|g' $$u \
	    > $(DESTDIR)$(UNITDIR)/$$(basename $$u .in) && chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u .in) || exit 1; \
	done

install-man:
	for s in 1 5 7 8; do $(INSTALL) -d $(DESTDIR)$(MANDIR)/man$$s; done
	for m in man/*.[1578]; do $(INSTALL) -m 0644 $$m $(DESTDIR)$(MANDIR)/man$${m##*.}/; done

install-completions:
	$(INSTALL) -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
	  $(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(INSTALL) -m 0644 completions/bash/* $(DESTDIR)$(PREFIX)/share/bash-completion/completions/
	$(INSTALL) -m 0644 completions/zsh/* $(DESTDIR)$(PREFIX)/share/zsh/site-functions/
	$(INSTALL) -m 0644 completions/fish/* $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/

clean:
	$(CARGO) clean
