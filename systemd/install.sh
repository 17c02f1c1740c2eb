#!/bin/sh
# Installs ipamd as a system service on Debian 12 (bookworm), or removes it.
#
#   sudo systemd/install.sh                     install, or upgrade in place
#   sudo systemd/install.sh --uninstall         remove the program and units;
#                                               keep leases, config and group
#   sudo systemd/install.sh --uninstall --purge also remove /var/lib/ipamd,
#                                               /etc/ipamd and the ipamd group
#
# Run it from the source tree (it installs the tree it sits in). Idempotent:
# a second run changes nothing but the program, which it upgrades to the
# tree's version and restarts if it was running. What it does:
#   - python3 and python3-venv from Debian if missing (Debian's python3
#     refuses `pip install` as root: PEP 668, externally-managed-environment);
#   - a venv of its own at /opt/ipamd with ipamd and its dependencies from
#     PyPI (for an offline host, pip's own PIP_NO_INDEX=1 and
#     PIP_FIND_LINKS=DIR of wheels work as usual);
#   - links /usr/local/bin/ipamd and /usr/local/bin/ipamd-client to it;
#   - the `ipamd` system group, which ipamd.socket gives the socket to;
#   - /etc/ipamd/ipamd.conf, the commented example, only if there is none;
#   - the units in /etc/systemd/system, daemon-reload, enable --now
#     ipamd.socket. Local changes to the units belong in drop-ins
#     (`systemctl edit ipamd.service`): this script rewrites the unit files.
# It never overwrites or deletes a file that it did not install: an existing
# unit, link or venv that is not ipamd's stops it with a message.
set -eu

PREFIX=/opt/ipamd
CONF_DIR=/etc/ipamd
UNIT_DIR=/etc/systemd/system
BIN_DIR=/usr/local/bin
STATE_DIR=/var/lib/ipamd
GROUP=ipamd
# Every unit file this script installs carries this line; the script touches
# no unit file without it.
MARKER="# Installed by ipamd's systemd/install.sh"
LINKS="ipamd ipamd-client"
UNITS="ipamd.socket ipamd.service ipamd-metrics.socket"

src=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

[ "$(id -u)" = 0 ] || die "run as root (it installs into $PREFIX and $UNIT_DIR)"
command -v systemctl >/dev/null || die "systemctl not found: this installs a systemd service"

ours_unit() { grep -qxF "$MARKER" "$1" 2>/dev/null; }
ours_link() { [ -L "$1" ] && case $(readlink "$1") in "$PREFIX"/bin/*) true ;; *) false ;; esac; }
ours_venv() { [ -e "$PREFIX/pyvenv.cfg" ] && [ -e "$PREFIX/.ipamd-venv" ]; }

install_python() {
    # ensurepip is what Debian leaves out of python3 and puts in python3-venv.
    if command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null; then
        return
    fi
    say "installing python3 and python3-venv from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends python3 python3-venv >/dev/null
}

# Every refusal before any change: a refused install leaves nothing behind.
preflight() {
    if [ -e "$PREFIX" ] && ! ours_venv; then
        die "$PREFIX exists and is not ipamd's venv: move it away first"
    fi
    for name in $LINKS; do
        link=$BIN_DIR/$name
        if { [ -e "$link" ] || [ -L "$link" ]; } && ! ours_link "$link"; then
            die "$link exists and is not ipamd's link: move it away first"
        fi
    done
    for unit in $UNITS; do
        if [ -e "$UNIT_DIR/$unit" ] && ! ours_unit "$UNIT_DIR/$unit"; then
            die "$UNIT_DIR/$unit exists and was not installed by this script: move it away first"
        fi
        ours_unit "$src/systemd/$unit" || die "$src/systemd/$unit lacks the line: $MARKER"
    done
}

install_program() {
    if ! ours_venv; then
        say "creating the venv $PREFIX"
        python3 -m venv "$PREFIX"
        : >"$PREFIX/.ipamd-venv"
    fi
    # pip builds in the source directory, which may be read-only (or shared):
    # build from a copy of what the package is made of (pyproject.toml's
    # packages and readme).
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    cp -R "$src/pyproject.toml" "$src/README.md" "$src/ipamd" "$build/"
    say "installing ipamd from $src into $PREFIX"
    "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location --upgrade "$build"
    rm -rf "$build"
    trap - EXIT
    for name in $LINKS; do
        ln -sfn "$PREFIX/bin/$name" "$BIN_DIR/$name"
    done
}

install_units() {
    getent group "$GROUP" >/dev/null || { say "creating the group $GROUP"; groupadd --system "$GROUP"; }
    if [ ! -e "$CONF_DIR/ipamd.conf" ]; then
        say "installing the example config $CONF_DIR/ipamd.conf (changes nothing until edited)"
        install -d -m 0755 "$CONF_DIR"
        install -m 0644 "$src/systemd/ipamd.conf" "$CONF_DIR/ipamd.conf"
    fi
    # ipamd-metrics.socket is installed but not enabled: metrics over HTTP are opt-in.
    for unit in $UNITS; do
        install -m 0644 "$src/systemd/$unit" "$UNIT_DIR/$unit"
    done
    systemctl daemon-reload
    systemctl enable --quiet --now ipamd.socket
    # An upgrade: the running daemon is the old program until it restarts.
    systemctl try-restart ipamd.service
    say "ipamd.socket is $(systemctl is-active ipamd.socket); the daemon starts on the first connection"
}

uninstall() {
    purge=$1
    for unit in ipamd.service ipamd.socket ipamd-metrics.socket; do
        if ours_unit "$UNIT_DIR/$unit"; then
            systemctl disable --quiet --now "$unit" || true
            rm -f "$UNIT_DIR/$unit"
            say "removed $UNIT_DIR/$unit"
        elif [ -e "$UNIT_DIR/$unit" ]; then
            say "left $UNIT_DIR/$unit: this script did not install it"
        fi
    done
    systemctl daemon-reload
    systemctl reset-failed ipamd.service ipamd.socket ipamd-metrics.socket 2>/dev/null || true
    for name in $LINKS; do
        if ours_link "$BIN_DIR/$name"; then rm -f "$BIN_DIR/$name"; fi
    done
    if ours_venv; then rm -rf "$PREFIX"; say "removed $PREFIX"; fi
    if [ "$purge" = yes ]; then
        rm -rf "$STATE_DIR" "$CONF_DIR"
        if getent group "$GROUP" >/dev/null; then groupdel "$GROUP"; fi
        say "purged $STATE_DIR, $CONF_DIR and the group $GROUP"
    else
        say "kept the leases ($STATE_DIR), the config ($CONF_DIR) and the group $GROUP" \
            "(--uninstall --purge removes them)"
    fi
}

case "${1:-}" in
"")
    preflight
    install_python
    install_program
    install_units
    ;;
--uninstall)
    case "${2:-}" in
    "") uninstall no ;;
    --purge) uninstall yes ;;
    *) die "unknown option ${2}; usage: install.sh [--uninstall [--purge]]" ;;
    esac
    ;;
*) die "unknown option $1; usage: install.sh [--uninstall [--purge]]" ;;
esac
