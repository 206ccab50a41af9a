# Build and install Spillway on a systemd host.
#
#   make build                       release binaries (needs LIBTORCH, see scripts/install-deps.sh)
#   sudo make install                install into /usr and /etc
#   make install DESTDIR=/tmp/stage  stage the same files under /tmp/stage
#   sudo make uninstall              remove what install put there, except /etc/spillway
#
# PREFIX (default /usr) moves everything but the configuration, which stays in
# SYSCONFDIR (default /etc). The unit file and the example configuration are
# rewritten to the installed paths.

PREFIX ?= /usr
SYSCONFDIR ?= /etc
DESTDIR ?=
BINDIR := $(PREFIX)/bin
LIBEXECDIR := $(PREFIX)/lib/spillway
UNITDIR := $(PREFIX)/lib/systemd/system
SYSUSERSDIR := $(PREFIX)/lib/sysusers.d
TMPFILESDIR := $(PREFIX)/lib/tmpfiles.d
DOCDIR := $(PREFIX)/share/doc/spillway
DATADIR := $(PREFIX)/share/spillway
CONFDIR := $(SYSCONFDIR)/spillway

CARGO ?= cargo
PROFILE ?= release
BUILD_DIR ?= target/$(PROFILE)
BINARIES := $(BUILD_DIR)/spillway $(BUILD_DIR)/spillway-worker

INSTALL ?= install
# Rewrites the default installed paths in the unit file and the example
# configuration when PREFIX is not /usr.
SUBSTITUTE_PATHS := sed -e 's|/usr/bin/spillway|$(BINDIR)/spillway|g' \
	-e 's|/usr/lib/spillway/|$(LIBEXECDIR)/|g' \
	-e 's|/usr/share/doc/spillway|$(DOCDIR)|g' \
	-e 's|/etc/spillway/|$(CONFDIR)/|g'

.PHONY: build install uninstall check-binaries

build:
	$(CARGO) build --profile $(PROFILE) --bins

check-binaries:
	@for binary in $(BINARIES); do \
		if [ ! -x "$$binary" ]; then \
			echo "error: $$binary not found; run 'make build' (or set BUILD_DIR to the folder with the binaries)" >&2; \
			exit 1; \
		fi; \
	done

install: check-binaries
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR) \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(DOCDIR) $(DESTDIR)$(DATADIR)/grafana $(DESTDIR)$(DATADIR)/prometheus \
		$(DESTDIR)$(CONFDIR)
	$(INSTALL) -m 0755 $(BINARIES) $(DESTDIR)$(LIBEXECDIR)/
	ln -sf $(LIBEXECDIR)/spillway $(DESTDIR)$(BINDIR)/spillway
	ln -sf $(LIBEXECDIR)/spillway-worker $(DESTDIR)$(BINDIR)/spillway-worker
	$(SUBSTITUTE_PATHS) systemd/spillway.service > $(DESTDIR)$(UNITDIR)/spillway.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/spillway.service
	$(INSTALL) -m 0644 systemd/spillway.sysusers $(DESTDIR)$(SYSUSERSDIR)/spillway.conf
	$(INSTALL) -m 0644 systemd/spillway.tmpfiles $(DESTDIR)$(TMPFILESDIR)/spillway.conf
	$(SUBSTITUTE_PATHS) docs/examples/spillway.toml > $(DESTDIR)$(DOCDIR)/spillway.toml.example
	chmod 0644 $(DESTDIR)$(DOCDIR)/spillway.toml.example
	$(INSTALL) -m 0644 docs/operations.md docs/configuration.md $(DESTDIR)$(DOCDIR)/
	$(INSTALL) -m 0644 deploy/grafana/spillway.json $(DESTDIR)$(DATADIR)/grafana/
	$(INSTALL) -m 0644 deploy/prometheus/spillway.rules.yml $(DESTDIR)$(DATADIR)/prometheus/
	@# An existing configuration is the admin's: never overwrite it.
	@if [ -e $(DESTDIR)$(CONFDIR)/spillway.toml ]; then \
		echo "keeping the existing $(DESTDIR)$(CONFDIR)/spillway.toml; the new example is $(DESTDIR)$(DOCDIR)/spillway.toml.example"; \
	else \
		$(INSTALL) -m 0644 $(DESTDIR)$(DOCDIR)/spillway.toml.example $(DESTDIR)$(CONFDIR)/spillway.toml; \
		echo "installed $(DESTDIR)$(CONFDIR)/spillway.toml"; \
	fi
	@# On the live system, create the user and the folders now; a staged tree
	@# (DESTDIR set) leaves that to its package's install scripts.
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemd-sysusers $(SYSUSERSDIR)/spillway.conf && \
		systemd-tmpfiles --create $(TMPFILESDIR)/spillway.conf && \
		systemctl daemon-reload && \
		echo "next: edit $(CONFDIR)/spillway.toml, then systemctl enable --now spillway"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/spillway $(DESTDIR)$(BINDIR)/spillway-worker
	rm -f $(DESTDIR)$(LIBEXECDIR)/spillway $(DESTDIR)$(LIBEXECDIR)/spillway-worker
	rm -f $(DESTDIR)$(UNITDIR)/spillway.service
	rm -f $(DESTDIR)$(SYSUSERSDIR)/spillway.conf $(DESTDIR)$(TMPFILESDIR)/spillway.conf
	rm -rf $(DESTDIR)$(DOCDIR) $(DESTDIR)$(DATADIR)
	-rmdir $(DESTDIR)$(LIBEXECDIR)
	@echo "kept $(DESTDIR)$(CONFDIR), /var/lib/spillway, /var/cache/spillway, /var/log/spillway and the spillway user"
