# Shared part of the lab stand-ins, sourced by each of them.
#
# TEST SUPPORT ONLY. Lab hosts have no systemd, no snapd, no GPU and share the
# machine's kernel, so these scripts model the commands that need them well enough for
# a provisioning tool to be tested against: state lives in files under $LAB_STATE,
# inside the lab host's own root, and every call is appended to $LAB_STATE/calls.log.
LAB_STATE=/var/lib/lab-standins
mkdir -p "$LAB_STATE"
# LAB_NAME and LAB_ADDR, written when the stand-ins are installed.
[ -f "$LAB_STATE/host.env" ] && . "$LAB_STATE/host.env"

# lab_record PROGRAM ARGS...: one line per call, fields separated by tabs, with
# backslash, tab and newline escaped as \\, \t and \n (LabHost::calls decodes them).
lab_record() {
    awk 'BEGIN {
        for (i = 1; i < ARGC; i++) {
            s = ARGV[i]; gsub(/\\/, "&&", s); gsub(/\t/, "\\t", s); gsub(/\n/, "\\n", s)
            printf "%s%s", (i > 1 ? "\t" : ""), s
        }
        printf "\n"; exit
    }' "$@" >>"$LAB_STATE/calls.log"
}

# lab_hold NAME: while a test keeps $LAB_STATE/hold/NAME, the call waits there (to make a
# host go down in the middle of a step). The test removes the file to let it go on.
lab_hold() {
    while [ -e "$LAB_STATE/hold/$1" ]; do sleep 0.1; done
}

lab_die() {
    code=$1
    shift
    printf '%s\n' "$*" >&2
    exit "$code"
}

# The lab's real sshd (see the lab init script). sshd writes its pid file only once
# its listening sockets are bound, so the pid file appearing means "ready".
lab_sshd_running() { [ -f /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)" 2>/dev/null; }
# Waits (about 5 s at most) for the pid file; fails if it never came.
lab_sshd_listens() {
    i=0
    while [ ! -s /run/sshd.pid ]; do
        i=$((i + 1))
        [ $i -lt 500 ] || return 1
        sleep 0.01
    done
}
lab_sshd_wait() {
    lab_sshd_listens || lab_die 1 "Job for ssh.service failed: sshd did not start (see /var/log/lab-sshd.log)."
}
lab_sshd_start() {
    mkdir -p /run/sshd
    lab_sshd_running && return 0
    rm -f /run/sshd.pid
    /usr/sbin/sshd -E /var/log/lab-sshd.log </dev/null >/dev/null 2>&1 ||
        lab_die 1 "Job for ssh.service failed: sshd exited with an error (see /var/log/lab-sshd.log)."
    lab_sshd_wait
}
lab_sshd_stop() {
    if lab_sshd_running; then kill "$(cat /run/sshd.pid)"; fi
    rm -f /run/sshd.pid
}
# As Debian's ssh.service: test the configuration first (a broken one leaves the running
# sshd alone), then SIGHUP, on which sshd re-executes itself with the new configuration;
# sessions survive.
lab_sshd_restart() {
    lab_sshd_running || { lab_sshd_start; return; }
    err=$(/usr/sbin/sshd -t 2>&1) || lab_die 1 "Job for ssh.service failed: $err"
    pid=$(cat /run/sshd.pid)
    rm -f /run/sshd.pid
    kill -HUP "$pid"
    lab_sshd_wait
}

# A reboot, modelled: the command returns, then (detached, a moment later) every
# process of the lab host but PID 1 is killed, SSH sessions included; units come back
# as they are enabled, /run starts empty, the boot id changes and sshd starts again.
lab_reboot() {
    boots=$(cat "$LAB_STATE/boot_count" 2>/dev/null || echo 0)
    echo $((boots + 1)) >"$LAB_STATE/boot_count"
    setsid sh -c '. /usr/local/lib/lab-standins/lib.sh; sleep 0.3; lab_boot' </dev/null >/dev/null 2>&1 &
}
# Whether process $1 still runs (a zombie holds nothing). Builtins only.
lab_pid_running() {
    state=
    while read -r key val _; do
        if [ "$key" = "State:" ]; then
            state=$val
            break
        fi
    done 2>/dev/null <"/proc/$1/status"
    case "$state" in "" | Z | X) return 1 ;; *) return 0 ;; esac
}
lab_boot() {
    old_sshd=$(cat /run/sshd.pid 2>/dev/null)
    kill -KILL -1 2>/dev/null # everything but PID 1 and this process
    # SIGKILL lands asynchronously: until the old sshd is gone it holds the SSH port and the
    # new one cannot bind it (a busy machine made that window seconds long).
    i=0
    while [ -n "$old_sshd" ] && lab_pid_running "$old_sshd" && [ $i -lt 200 ]; do
        i=$((i + 1))
        sleep 0.05
    done
    # A machine that does not come back (LabHost::set_reboot_returns(false)): nothing starts.
    [ ! -e "$LAB_STATE/reboot/stay-down" ] || exit 0
    rm -f "$LAB_STATE"/systemd/*.active
    for f in "$LAB_STATE"/systemd/*.enabled; do
        [ -e "$f" ] && : >"${f%.enabled}.active"
    done
    find /run -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null
    cat /proc/sys/kernel/random/uuid >"$LAB_STATE/boot_id"
    umount /proc/sys/kernel/random/boot_id 2>/dev/null
    mount --bind "$LAB_STATE/boot_id" /proc/sys/kernel/random/boot_id
    lab_boot_sshd
}
# sshd as a booting machine's service manager starts it: again after a failure
# (Restart=on-failure), each try noted in $LAB_STATE/boot.log. sshd forks before it binds
# its port, so its exit status cannot say that the bind failed: only the pid file, written
# once the port is bound, says it listens.
lab_boot_sshd() {
    boot=$(cat "$LAB_STATE/boot_count")
    try=1
    while :; do
        mkdir -p /run/sshd
        rm -f /run/sshd.pid
        /usr/sbin/sshd -E /var/log/lab-sshd.log </dev/null >/dev/null 2>&1
        if lab_sshd_listens; then
            echo "boot $boot: sshd up (try $try)" >>"$LAB_STATE/boot.log"
            return 0
        fi
        echo "boot $boot: try $try: no sshd; its log ends: $(tail -n 2 /var/log/lab-sshd.log 2>/dev/null)" >>"$LAB_STATE/boot.log"
        [ $try -lt 20 ] || return 1
        try=$((try + 1))
        sleep 0.5
    done
}
