#!/bin/sh
# Install the Debian packages that the real-sshd test fixture (tests/infra/sshd.py) needs:
# OpenSSH's server, the google-authenticator PAM module (TOTP second factor) and cron's
# `crontab` command (used by `glidein-client deploy`; the cron daemon itself need not run).
# Idempotent: installs only what is missing. Run as root (CI does).
set -eu

PACKAGES="openssh-server libpam-google-authenticator cron"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "sshd packages already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages:$missing; run this script as root to install them" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
echo "installed:$missing"
