#!/bin/sh
# The dev image's default command: the dev user's own sshd on port 22, in the foreground.
# Host keys are made on the container's first start (never baked into the image) and kept
# across restarts of that container.
set -eu
dir=/var/lib/forge-dev/sshd
umask 077
for type in ed25519 ecdsa rsa; do
    key=$dir/ssh_host_${type}_key
    [ -s "$key" ] || ssh-keygen -q -t "$type" -N '' -C "forge-dev@$(hostname)" -f "$key"
done
exec /usr/sbin/sshd -D -e -f /etc/forge-dev/sshd_config "$@"
