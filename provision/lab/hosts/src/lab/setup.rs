//! Entering a new lab host: namespaces and root file system, built in the spawned child
//! between fork and exec (a `pre_exec` hook).
//!
//! This does what `unshare --mount --uts --pid --fork --kill-child` followed by some
//! twenty mount/mkdir/mknod/ln/pivot_root commands would, with system calls instead of
//! process starts: a process start costs 3 ms on an idle 2-core machine and 15-20 ms on a
//! loaded one, and a benchmark starts 32 lab hosts at once.
//!
//! Everything here runs in a forked child of a multi-threaded process, so it only makes
//! async-signal-safe system calls: no allocation (all paths are static C strings and the
//! host name is prepared before the fork), no locks. Failures name their step on stderr
//! (the harness collects it) and return the OS error.

use std::ffi::{CStr, CString, c_int};
use std::io;
use std::ptr::null;

/// Character devices of the lab's private /dev: (path, major, minor).
const DEVICES: [(&CStr, u32, u32); 6] = [
    (c"dev/null", 1, 3),
    (c"dev/zero", 1, 5),
    (c"dev/full", 1, 7),
    (c"dev/random", 1, 8),
    (c"dev/urandom", 1, 9),
    (c"dev/tty", 5, 0),
];
/// Symlinks of the lab's /dev: (target, link).
const LINKS: [(&CStr, &CStr); 5] = [
    (c"/proc/self/fd", c"dev/fd"),
    (c"/proc/self/fd/0", c"dev/stdin"),
    (c"/proc/self/fd/1", c"dev/stdout"),
    (c"/proc/self/fd/2", c"dev/stderr"),
    (c"pts/ptmx", c"dev/ptmx"),
];

pub(crate) struct Setup {
    hostname: CString,
}

impl Setup {
    pub(crate) fn new(hostname: &str) -> io::Result<Setup> {
        let hostname = CString::new(hostname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(Setup { hostname })
    }

    /// Called in the spawned child: creates the namespaces and forks. The forked process
    /// becomes PID 1 of the new PID namespace, builds the root and returns to exec the
    /// init script; the spawned child itself stays outside as its parent, like `unshare
    /// --fork`: it waits and exits with PID 1's status, and killing it kills PID 1.
    ///
    /// # Safety
    /// Only in a `pre_exec` hook (after fork, before exec).
    pub(crate) unsafe fn enter(&self) -> io::Result<()> {
        // SAFETY: plain system calls on static C strings; see the module docs.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWPID), b"unshare")?;
            // Nothing mounted from here on propagates back to the machine.
            check(
                libc::mount(null(), c"/".as_ptr(), null(), libc::MS_REC | libc::MS_PRIVATE, null()),
                b"make / private",
            )?;
            let pid = libc::fork();
            if pid < 0 {
                return Err(fail(b"fork"));
            }
            if pid > 0 {
                wait_and_exit(pid);
            }
            // PID 1 dies with its parent (what `unshare --kill-child` does).
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong), b"prctl")?;
            self.build_root()
        }
    }

    /// # Safety
    /// As [`Setup::enter`], in PID 1 of the new namespace.
    unsafe fn build_root(&self) -> io::Result<()> {
        // SAFETY: as above.
        unsafe {
            libc::umask(0);
            // The machine's /proc is still mounted: /proc/self is our PID as the machine
            // sees it, which the harness needs to nsenter later.
            report_host_pid();
            // Upper and work dirs on a tmpfs of their own: overlayfs refuses an upper dir
            // inside its lower dir, and memory makes start-up cheap and teardown total.
            // /tmp is only a mount point here; the mount is invisible outside.
            mount(c"lab-layers", c"/tmp", c"tmpfs", 0, Some(c"mode=700"))?;
            for dir in [c"/tmp/upper", c"/tmp/work", c"/tmp/root"] {
                mkdir(dir)?;
            }
            mount(
                c"lab-root",
                c"/tmp/root",
                c"overlay",
                0,
                Some(c"lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work"),
            )?;
            check(libc::chdir(c"/tmp/root".as_ptr()), b"chdir /tmp/root")?;

            // The lower layer is the machine's root file system without its submounts:
            // /proc, /sys, /dev, /run and /tmp are provided fresh.
            let hidden = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            mount(c"proc", c"proc", c"proc", hidden, None)?;
            check(libc::sethostname(self.hostname.as_ptr(), self.hostname.as_bytes().len()), b"sethostname")?;
            // The kernel is shared: keep sysctl writes (and /sys) from reaching the machine.
            bind_read_only(c"proc/sys", hidden)?;
            if libc::access(c"proc/sysrq-trigger".as_ptr(), libc::F_OK) == 0 {
                bind_read_only(c"proc/sysrq-trigger", hidden)?;
            }
            mount(c"sysfs", c"sys", c"sysfs", hidden | libc::MS_RDONLY, None)?;
            mount(c"lab-run", c"run", c"tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some(c"mode=755"))?;
            mkdir(c"run/sshd")?;
            mount(c"lab-tmp", c"tmp", c"tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some(c"mode=1777"))?;
            // A private /dev with the basic nodes; the machine's device nodes stay untouched.
            mount(c"lab-dev", c"dev", c"tmpfs", libc::MS_NOSUID, Some(c"mode=755"))?;
            mkdir(c"dev/pts")?;
            mkdir(c"dev/shm")?;
            let pts_options = c"newinstance,ptmxmode=0666,mode=620,gid=5";
            mount(c"devpts", c"dev/pts", c"devpts", libc::MS_NOSUID | libc::MS_NOEXEC, Some(pts_options))?;
            mount(c"lab-shm", c"dev/shm", c"tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some(c"mode=1777"))?;
            for (path, major, minor) in DEVICES {
                let dev = libc::makedev(major, minor);
                check(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, dev), b"mknod in /dev")?;
            }
            for (target, link) in LINKS {
                check(libc::symlink(target.as_ptr(), link.as_ptr()), b"symlink in /dev")?;
            }
            // The overlay's upper layer (every byte the host wrote to its root), read-only
            // under /dev, outside the overlay: tests compare it to prove a run changed nothing
            // (`LabHost::UPPER_DIR`).
            mkdir(c"dev/.lab-upper")?;
            let upper = c"/tmp/upper";
            let at = c"dev/.lab-upper";
            check(libc::mount(upper.as_ptr(), at.as_ptr(), null(), libc::MS_BIND, null()), at.to_bytes())?;
            let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | hidden;
            check(libc::mount(null(), at.as_ptr(), null(), ro, null()), at.to_bytes())?;

            // Make the overlay the root and let go of the machine's mount tree
            // (pivot_root(2): new and old root may be the same directory).
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int, b"pivot_root")?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH), b"detach the old root")?;
            check(libc::chdir(c"/".as_ptr()), b"chdir /")?;
            libc::umask(0o022);
        }
        Ok(())
    }
}

/// The child that `Command` spawned, left outside the new PID namespace: waits for PID 1
/// and exits with its status. It never returns into `Command`'s exec path.
unsafe fn wait_and_exit(pid: libc::pid_t) -> ! {
    // SAFETY: system calls only. Closing fds >= 3 releases `Command`'s error-report
    // pipe, so that `spawn` returns once PID 1 has exec'd (or reported its error), and
    // drops the copies of other lab hosts' lifeline write ends that the fork duplicated:
    // this process lives as long as its host and must not keep any other host alive.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let mut status: c_int = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(1);
            }
        }
        let code =
            if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
        libc::_exit(code)
    }
}

unsafe fn report_host_pid() {
    let mut buf = [0u8; 24];
    // SAFETY: readlink into a stack buffer of the given size; write(2) of stack bytes.
    unsafe {
        let n = libc::readlink(c"/proc/self".as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        if n > 0 {
            write_all(1, b"pid ");
            write_all(1, &buf[..n as usize]);
            write_all(1, b"\n");
        }
    }
}

unsafe fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let data = data.map_or(null(), |d| d.as_ptr().cast());
    // SAFETY: valid C strings (or null data).
    let ret = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data) };
    check(ret, target.to_bytes())
}

unsafe fn bind_read_only(path: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    // SAFETY: valid C strings; a bind mount, then its read-only remount.
    unsafe {
        check(libc::mount(path.as_ptr(), path.as_ptr(), null(), libc::MS_BIND, null()), path.to_bytes())?;
        let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags;
        check(libc::mount(null(), path.as_ptr(), null(), ro, null()), path.to_bytes())
    }
}

unsafe fn mkdir(path: &CStr) -> io::Result<()> {
    // SAFETY: a valid C string.
    check(unsafe { libc::mkdir(path.as_ptr(), 0o755) }, path.to_bytes())
}

/// On failure: the OS error (no allocation), and the step on stderr for the harness.
fn check(ret: c_int, step: &[u8]) -> io::Result<()> {
    if ret >= 0 {
        return Ok(());
    }
    Err(fail(step))
}

fn fail(step: &[u8]) -> io::Error {
    let err = io::Error::last_os_error();
    // SAFETY: write(2) of byte slices.
    unsafe {
        write_all(2, b"lab host set-up failed at: ");
        write_all(2, step);
        write_all(2, b"\n");
    }
    err
}

unsafe fn write_all(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}
