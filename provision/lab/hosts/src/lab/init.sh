# Lab host init: PID 1 of a lab host. When it starts, the harness (setup.rs) has already
# created the host's mount, UTS and PID namespaces and made the overlay its root with
# fresh /proc, /sys, /dev, /run and /tmp; this script sets up and starts sshd, then waits.
#
# Arguments: NAME ADDR CLIENT_PUBLIC_KEY [PORT, default 22]
# stdin:     the lifeline pipe. The harness holds its only write end, so EOF means the
#            owning test process dropped the host or died; PID 1 then exits and the
#            kernel kills everything else in the namespace and drops its mounts.
# stdout:    diagnostics, then one line `ready HOST_KEY_TYPE HOST_KEY_BASE64`.
# Start-up time is mostly process starts (32 hosts may start at once on 2 cores), so
# this script uses shell builtins where it can.
set -eu
exec 2>&1
name=$1 addr=$2 client_key=$3 port=${4:-22}

umask 022
echo "$name" >/etc/hostname
printf '127.0.0.1\tlocalhost\n%s\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$addr" "$name" >/etc/hosts

# sshd: fresh host key, key-only root login, listening on this host's address only.
# (Also: no man-db auto-update. Its apt trigger rebuilds the whole man index, which
# takes ~10 s per apt-get install on an overlay; nobody tests man pages.)
rm -f /etc/ssh/ssh_host_* /etc/ssh/sshd_config.d/* /root/.ssh/authorized_keys /var/lib/man-db/auto-update
[ -d /etc/ssh/sshd_config.d ] || mkdir -p /etc/ssh/sshd_config.d
[ -d /var/log ] || mkdir -p /var/log
ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f /etc/ssh/ssh_host_ed25519_key
printf '%s\n' "# Lab host $name. Drop-ins come first so that a provisioning tool's settings win." \
    'Include /etc/ssh/sshd_config.d/*.conf' \
    "ListenAddress $addr:$port" \
    'HostKey /etc/ssh/ssh_host_ed25519_key' \
    'PidFile /run/sshd.pid' \
    'PermitRootLogin prohibit-password' \
    'PubkeyAuthentication yes' \
    'PasswordAuthentication no' \
    'KbdInteractiveAuthentication no' \
    'UsePAM no' \
    'AcceptEnv LANG LC_*' \
    'Subsystem sftp /usr/lib/openssh/sftp-server' >/etc/ssh/sshd_config
umask 077
[ -d /root/.ssh ] || mkdir /root/.ssh
printf '%s\n' "$client_key" >/root/.ssh/authorized_keys
umask 022
# Without PAM, sshd refuses any login to an account whose password is locked ('!').
while IFS=: read -r user password _; do
    if [ "$user" = root ]; then
        case $password in '!'*) sed -i 's/^root:!*/root:/' /etc/shadow ;; esac
    fi
done </etc/shadow
/usr/sbin/sshd -E /var/log/lab-sshd.log </dev/null

# Stay as PID 1: reap orphans (daemons that exit would otherwise stay zombies and look
# alive to `kill -0`) until the lifeline ends. `cat` watches it: exit 0 means EOF, i.e.
# the owner is gone; any other end (a modelled reboot kills every process but PID 1)
# just starts a new watcher. fd 3 keeps the lifeline open in PID 1 for that.
exec 3<&0 </dev/null
read -r key_type key_b64 _ </etc/ssh/ssh_host_ed25519_key.pub
echo "ready $key_type $key_b64"
exec >/dev/null 2>&1
set +e
while :; do
    cat <&3 >/dev/null 2>&1 &
    wait $! && break
    sleep 0.1
done
