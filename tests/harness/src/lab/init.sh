# Lab host init. `unshare --mount --uts --pid --fork --propagation private` runs this
# as PID 1 of a fresh PID namespace inside private mount and UTS namespaces.
#
# Arguments: NAME ADDR CLIENT_PUBLIC_KEY
# stdin:     the lifeline pipe. The harness holds its only write end, so EOF means the
#            owning test process dropped the host or died; PID 1 then exits and the
#            kernel kills everything else in the namespace and drops its mounts.
# stdout:    diagnostics, then one line `ready HOST_PID HOST_KEY_TYPE HOST_KEY_BASE64`.
set -eu
exec 2>&1
name=$1 addr=$2 client_key=$3

# Our PID as the machine sees it: /proc is still the machine's procfs here, and the
# redirection is opened by this shell itself, so /proc/self is PID 1 of the lab.
read -r host_pid _ </proc/self/stat

# Upper and work dirs live on a tmpfs of their own: overlayfs refuses an upper dir
# inside its lower dir, and memory is what makes start-up cheap and teardown total.
# /tmp is only a mount point; this mount is invisible outside the namespace.
mount -t tmpfs -o mode=700 lab-layers /tmp
mkdir /tmp/upper /tmp/work /tmp/root
mount -t overlay -o lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work lab-root /tmp/root
cd /tmp/root

# The lower layer is the machine's root file system only, without its submounts:
# /proc, /sys, /dev, /run and /tmp are provided fresh. Start-up time is mostly process
# starts, so this script uses shell builtins where it can (32 hosts start at once).
mount -t proc -o nosuid,nodev,noexec proc proc
echo "$name" >proc/sys/kernel/hostname # UTS-namespaced, so the machine keeps its own
# The kernel is shared: keep sysctl writes (and /sys) from reaching the machine.
mount --bind -o ro proc/sys proc/sys
if [ -e proc/sysrq-trigger ]; then mount --bind -o ro proc/sysrq-trigger proc/sysrq-trigger; fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs sys
mount -t tmpfs -o mode=755,nosuid,nodev lab-run run
mount -t tmpfs -o mode=1777,nosuid,nodev lab-tmp tmp
# A private /dev with the basic nodes; the machine's device nodes stay untouched.
mount -t tmpfs -o mode=755,nosuid lab-dev dev
mkdir -m 755 dev/pts dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev lab-shm dev/shm
cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty dev/
cp -a /dev/fd /dev/stdin /dev/stdout /dev/stderr dev/ 2>/dev/null || :
[ -e dev/fd ] || ln -s /proc/self/fd dev/fd
ln -s pts/ptmx dev/ptmx

# Make the overlay the root and let go of the machine's mount tree.
pivot_root . .
umount -l .
cd /

umask 022
echo "$name" >/etc/hostname
printf '127.0.0.1\tlocalhost\n%s\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$addr" "$name" >/etc/hosts

# sshd: fresh host key, key-only root login, listening on this host's address only.
rm -f /etc/ssh/ssh_host_* /etc/ssh/sshd_config.d/* /root/.ssh/authorized_keys
mkdir -p /etc/ssh/sshd_config.d /run/sshd /var/log
ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f /etc/ssh/ssh_host_ed25519_key
printf '%s\n' "# Lab host $name. Drop-ins come first so that a provisioning tool's settings win." \
    'Include /etc/ssh/sshd_config.d/*.conf' \
    "ListenAddress $addr:22" \
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
echo "ready $host_pid $key_type $key_b64"
exec >/dev/null 2>&1
set +e
while :; do
    cat <&3 >/dev/null 2>&1 &
    wait $! && break
    sleep 0.1
done
