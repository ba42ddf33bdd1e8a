# e2e-backup: `make` builds, `make install PREFIX=/usr/local DESTDIR=` installs.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
CARGO ?= cargo
INSTALL ?= install

BINS = e2e-mount e2e-open e2e-sync e2e-grow e2e-trim e2e-close

.PHONY: all build test check install uninstall clean

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
	@for b in $(BINS); do test -x target/release/$$b || { echo "target/release/$$b missing: run make first" >&2; exit 1; }; done
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	for b in $(BINS); do $(INSTALL) -m 0755 target/release/$$b $(DESTDIR)$(BINDIR)/$$b; done
# ---- units and man pages: added here by the units/man work (issue [3]) ----
# systemd units: units/*.in with @BINDIR@ substituted → $(DESTDIR)$(PREFIX)/lib/systemd/system
# man pages:     man/*.1, man/*.5, man/*.7 → $(DESTDIR)$(PREFIX)/share/man/man{1,5,7}
# ---- end of units and man pages ----

uninstall:
	for b in $(BINS); do rm -f $(DESTDIR)$(BINDIR)/$$b; done

clean:
	$(CARGO) clean
