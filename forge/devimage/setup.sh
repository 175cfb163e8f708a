#!/bin/sh
# Build-time set-up of the forge dev image, run as root by the Dockerfile.
#   setup.sh packages   mirrors, then packages.txt (INSTALL_PACKAGES=1) or a check that the
#                       base already has what the image needs (INSTALL_PACKAGES=0)
#   setup.sh user       the dev user, its keys and sudo, sshd's state directory
set -eu

die() { echo "forge dev image: $*" >&2; exit 1; }

packages() {
    if [ -n "${APT_MIRROR:-}" ]; then
        case $APT_MIRROR in *[!A-Za-z0-9._:/-]*) die "APT_MIRROR has odd characters: $APT_MIRROR" ;; esac
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
            [ -f "$f" ] || continue
            sed -i -E "s#://(archive|security|ports)\.ubuntu\.com/#://${APT_MIRROR}/#g; s#://deb\.debian\.org/#://${APT_MIRROR}/#g" "$f"
        done
    fi
    if [ -n "${PIP_INDEX_URL:-}" ]; then
        printf '[global]\nindex-url = %s\n' "$PIP_INDEX_URL" > /etc/pip.conf
    fi
    if [ "${INSTALL_PACKAGES:-1}" = 1 ]; then
        command -v apt-get >/dev/null || die "INSTALL_PACKAGES=1 needs an apt-based base image"
        list=$(sed -e 's/#.*//' /tmp/forge-dev/packages.txt | tr -s ' \n' '  ')
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086 # word splitting wanted: one package per word
        apt-get install -y -q --no-install-recommends $list ${EXTRA_PACKAGES:-}
        rm -rf /var/lib/apt/lists/*
        if [ -f /etc/locale.gen ]; then
            sed -i 's/^# *\(en_US.UTF-8\)/\1/' /etc/locale.gen && locale-gen >/dev/null
        fi
    elif [ -n "${EXTRA_PACKAGES:-}" ]; then
        die "EXTRA_PACKAGES needs INSTALL_PACKAGES=1"
    fi
    for tool in sshd ssh-keygen xauth sudo useradd setpriv; do
        PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$tool" >/dev/null ||
            die "the image needs $tool: build with INSTALL_PACKAGES=1 or from a base that has it"
    done
    # Host keys are made per container at start (start-sshd.sh): never ship the base's.
    rm -f /etc/ssh/ssh_host_*
}

user() {
    name=${DEV_USER:?} uid=${DEV_UID:?} gid=${DEV_GID:?}
    case $name in *[!a-z0-9_-]* | [!a-z_]*) die "DEV_USER must be a plain user name, not '$name'" ;; esac
    case $uid$gid in *[!0-9]*) die "DEV_UID and DEV_GID must be numbers" ;; esac
    [ "$uid" != 0 ] || die "DEV_UID=0: the dev user is not root (give your own uid)"
    [ "$gid" != 0 ] || die "DEV_GID=0: the dev user's group is not root's (give your own gid)"

    # Free the uid if the base gave it to someone else (e.g. ubuntu:1000 in Ubuntu 24.04).
    other=$(getent passwd "$uid" | cut -d: -f1 || true)
    if [ -n "$other" ] && [ "$other" != "$name" ]; then userdel "$other"; fi
    # The group: ours if the gid is free, else the existing group with that gid.
    if ! getent group "$gid" >/dev/null; then
        if getent group "$name" >/dev/null; then groupmod -g "$gid" "$name"; else groupadd -g "$gid" "$name"; fi
    fi
    if getent passwd "$name" >/dev/null; then
        usermod -u "$uid" -g "$gid" -s /bin/bash "$name"
    else
        useradd -m -u "$uid" -g "$gid" -s /bin/bash "$name"
    fi
    home=$(getent passwd "$name" | cut -d: -f6)
    # No password at all: login is by key only, and sudo asks for none.
    usermod -p '*' "$name"
    printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$name" > /etc/sudoers.d/forge-dev
    chmod 0440 /etc/sudoers.d/forge-dev

    mkdir -p /etc/forge-dev
    printf '%s\n' "$name" > /etc/forge-dev/user
    chmod 0644 /etc/forge-dev/user /etc/forge-dev/sshd_config /etc/forge-dev/bashrc /etc/profile.d/forge-dev.sh
    chmod 0755 /usr/local/bin/forge-dev-entrypoint /usr/local/bin/forge-dev-sshd
    chown root:root /usr/local/sbin/forge-fixuid
    chmod 4755 /usr/local/sbin/forge-fixuid

    # sshd's state (host keys, pid file): the user's, kept across restarts of one container.
    install -d -m 0700 -o "$uid" -g "$gid" /var/lib/forge-dev/sshd
    install -d -m 0755 -o root -g root /var/lib/forge-dev/fixuid

    install -d -m 0700 -o "$uid" -g "$gid" "$home/.ssh"
    [ -s /tmp/forge-dev/authorized_keys ] || die "no public keys in authorized_keys (forge build adds yours)"
    install -m 0600 -o "$uid" -g "$gid" /tmp/forge-dev/authorized_keys "$home/.ssh/authorized_keys"
    line='. /etc/forge-dev/bashrc'
    grep -qxF "$line" "$home/.bashrc" 2>/dev/null || printf '\n%s\n' "$line" >> "$home/.bashrc"
    chown "$uid:$gid" "$home/.bashrc"
}

case ${1:-} in
    packages) packages ;;
    user) user ;;
    *) die "usage: setup.sh packages|user" ;;
esac
