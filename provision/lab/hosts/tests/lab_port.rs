//! Lab hosts on another SSH port, as when the machine's own sshd listens on *:22:
//! the harness never touches that sshd; the hosts move, and carry their port.
//! (Its own test binary: the port is chosen once per process.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use lab_hosts::lab::LabHost;

#[test]
fn lab_hosts_carry_a_port_other_than_22_in_their_connection_info() {
    // SAFETY: set before any thread of this test binary reads the environment; this is
    // the binary's only test.
    unsafe { std::env::set_var("LAB_SSH_PORT", "2222") };
    let host = LabHost::start("port-a").unwrap();
    assert_eq!(host.port(), 2222);
    assert_eq!(host.ssh_addr(), SocketAddr::new(host.addr(), 2222));
    assert!(host.known_hosts_line().starts_with(&format!("[{}]:2222 ssh-ed25519 ", host.addr())));
    // Nothing of the lab listens on port 22 of its address.
    let on_22 = TcpStream::connect_timeout(&SocketAddr::new(host.addr(), 22), Duration::from_secs(5));
    assert!(on_22.is_err(), "the lab host listens on 22 too");

    // A client that uses the carried connection info logs in.
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, host.known_hosts_line() + "\n").unwrap();
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(host.client_key_path())
        .arg("-p")
        .arg(host.port().to_string())
        .arg(format!("root@{}", host.addr()))
        .arg("hostname")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "port-a\n");
}
