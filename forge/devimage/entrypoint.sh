#!/bin/sh
# Entrypoint of the forge dev image. The container runs as its user (`docker run -u UID:GID`);
# this makes the image's dev user that uid and gid, saves the container's environment for
# SSH sessions, then runs the command (by default the user's sshd).
set -eu
name=$(cat /etc/forge-dev/user)

if [ "$(id -u)" = 0 ]; then
    # Started as root (`-u 0`): run everything as the dev user instead.
    uid=$(id -u "$name") gid=$(id -g "$name")
    exec setpriv --reuid="$uid" --regid="$gid" --init-groups "$0" "$@"
fi

# The uid and gid we run as must be the dev user's: when the image was built for another
# uid, the setuid helper rewrites the user's entry (once per container; see fixuid.c).
if [ "$(id -u)" != "$(id -u "$name")" ] || { [ "$(id -g)" != 0 ] && [ "$(id -g)" != "$(id -g "$name")" ]; }; then
    /usr/local/sbin/forge-fixuid
fi
HOME=$(getent passwd "$name" | cut -d: -f6)
USER=$name
LOGNAME=$name
export HOME USER LOGNAME
if [ -n "${FORGE_USER:-}" ] && [ "$FORGE_USER" != "$name" ]; then
    echo "forge dev image: FORGE_USER is $FORGE_USER but this image's user is $name: log in as $name" \
         "(build the image with that user name: forge build --user)" >&2
fi

# sshd starts sessions with a fresh environment: give them the container's (CUDA_*, PATH,
# LD_LIBRARY_PATH, NVIDIA_*, ...). sshd reads ~/.ssh/environment (PermitUserEnvironment);
# /etc/profile.d/forge-dev.sh reads it again for login shells, whose /etc/profile resets PATH.
# Variables of the session itself are left out, and so are values with a newline.
umask 077
mkdir -p "$HOME/.ssh"
nl=$(printf '\001')
env -0 | tr '\n\0' '\001\n' | grep -v "$nl" |
    grep -E '^[A-Za-z_][A-Za-z0-9_]*=' |
    grep -v -E '^(HOME|USER|LOGNAME|SHELL|MAIL|PWD|OLDPWD|SHLVL|TERM|DISPLAY|XAUTHORITY|HOSTNAME|_|SSH_[A-Za-z0-9_]*|FORGE_AUTHORIZED_KEYS)=' \
    > "$HOME/.ssh/environment.tmp" || true
mv -f "$HOME/.ssh/environment.tmp" "$HOME/.ssh/environment"

# Keys given at start (forge migrate passes FORGE_AUTHORIZED_KEYS) are added to those the
# image was built with. Only public key lines are taken.
if [ -n "${FORGE_AUTHORIZED_KEYS:-}" ]; then
    printf '%s\n' "$FORGE_AUTHORIZED_KEYS" | while IFS= read -r key; do
        case $key in
            ssh-* | ecdsa-sha2-* | sk-*)
                grep -qxF "$key" "$HOME/.ssh/authorized_keys" 2>/dev/null || printf '%s\n' "$key" >> "$HOME/.ssh/authorized_keys" ;;
        esac
    done
fi
umask 022

exec "$@"
