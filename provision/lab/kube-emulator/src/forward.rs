//! Userspace TCP forwarding between the host and the network namespaces of the podman
//! runner's containers (see README, "Workloads in podman").
//!
//! Every container runs with `--network none`: a namespace of its own with only a loopback,
//! so two pods may listen on the same port. The runner reaches into a namespace by opening
//! sockets on a short-lived thread that `setns`-es into it (a socket stays in the namespace
//! it was created in); everything else happens on ordinary threads of the host namespace.
//! Plain threads rather than the emulator's tokio runtime: a runtime worker must never
//! change namespace, and the lab's traffic is a handful of connections.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a connect (into a namespace or to the host) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A container's network namespace (`/proc/<pid>/ns/net`, held open).
#[derive(Debug, Clone)]
pub struct Netns(Arc<File>);

impl Netns {
    pub fn of_pid(pid: i64) -> io::Result<Netns> {
        Ok(Netns(Arc::new(File::open(format!("/proc/{pid}/ns/net"))?)))
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens live there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid, open namespace fd changes only this thread's
                // network namespace; the thread ends with the scope.
                if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a namespace thread panicked")))
        })
    }

    /// A connection to `127.0.0.1:port` inside the namespace (the pod's own loopback).
    pub fn connect(&self, port: u16) -> io::Result<TcpStream> {
        self.enter(|| {
            TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), CONNECT_TIMEOUT)
        })
    }
}

/// Where a forwarder sends its connections.
#[derive(Debug, Clone)]
pub enum Dest {
    /// An address of the host's namespace.
    Host(SocketAddr),
    /// A port on a container's loopback.
    Pod(Netns, u16),
}

impl Dest {
    fn connect(&self) -> io::Result<TcpStream> {
        match self {
            Dest::Host(addr) => TcpStream::connect_timeout(addr, CONNECT_TIMEOUT),
            Dest::Pod(ns, port) => ns.connect(*port),
        }
    }
}

/// The destination of a forwarder; swapped in place when its pod restarts.
pub type Target = Arc<Mutex<Option<Dest>>>;

/// A listening forwarder; dropping it stops accepting (open connections run out).
#[derive(Debug)]
pub struct Forwarder {
    target: Target,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `addr` (inside `bind_in` when given, else on the host) and forwards every
    /// connection to the current target.
    pub fn listen(addr: SocketAddr, bind_in: Option<&Netns>, dest: Dest) -> io::Result<Forwarder> {
        let listener = match bind_in {
            Some(ns) => ns.enter(|| TcpListener::bind(addr))?,
            None => TcpListener::bind(addr)?,
        };
        listener.set_nonblocking(true)?;
        let target: Target = Arc::new(Mutex::new(Some(dest)));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (target.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("fwd {addr}"))
            .spawn(move || accept_loop(&listener, &t, &s))?;
        Ok(Forwarder { target, stop, thread: Some(thread) })
    }

    pub fn retarget(&self, dest: Dest) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(dest);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: &Target, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let dest = target.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let _ = std::thread::Builder::new().name("fwd conn".into()).spawn(move || {
                    if let (Some(dest), Ok(())) = (dest, client.set_nonblocking(false)) {
                        // Nothing to connect to: the client sees the connection close.
                        if let Ok(upstream) = dest.connect() {
                            pipe(client, upstream);
                        }
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Copies both ways until each side has closed its half.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    let up = std::thread::spawn(move || copy_half(a2, b2));
    copy_half(b, a);
    let _ = up.join();
}

fn copy_half(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
