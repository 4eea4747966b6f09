//! The throwaway servers are real, independent, and leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use lab_hosts::{Postgres, Redis};

fn psql(pg: &Postgres, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(pg.url())
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn postgres_servers_are_real_independent_and_removed_on_drop() {
    let a = Postgres::start().unwrap();
    let b = Postgres::start().unwrap();
    assert_ne!(a.port(), b.port());
    psql(&a, "CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1);");
    assert_eq!(psql(&a, "SELECT sum(x) FROM t"), "42");
    // The same table does not exist on the other server.
    let out = Command::new("psql").arg(b.url()).args(["-X", "-c", "SELECT * FROM t"]).output().unwrap();
    assert!(!out.status.success());

    let url = a.create_database("second").unwrap();
    assert!(url.ends_with("/second"));

    let (port, dir) = (a.port(), a.dir().to_path_buf());
    drop(a);
    assert!(!listening(port), "postgres still listens on {port} after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

fn redis_cmd(port: u16, cmd: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(cmd.as_bytes()).unwrap();
    s.write_all(b"\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn redis_keeps_acknowledged_writes_across_a_kill_and_restart() {
    let mut r = Redis::start().unwrap();
    assert_eq!(redis_cmd(r.port(), "SET event 7"), "+OK\r\n");
    r.kill();
    assert!(!listening(r.port()));
    r.restart().unwrap();
    assert_eq!(redis_cmd(r.port(), "GET event"), "$1\r\n7\r\n");

    let other = Redis::start().unwrap();
    assert_eq!(redis_cmd(other.port(), "GET event"), "$-1\r\n");

    let port = r.port();
    drop(r);
    assert!(!listening(port));
}

#[test]
fn a_killed_test_process_leaves_no_server_running() {
    // Re-run this test binary as a child that starts Redis and then dies by SIGKILL.
    if let Ok(port_file) = std::env::var("HARNESS_CHILD_PORT_FILE") {
        let r = Redis::start().unwrap();
        std::fs::write(&port_file, r.port().to_string()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_killed_test_process_leaves_no_server_running", "--nocapture"])
        .env("HARNESS_CHILD_PORT_FILE", &port_file)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !Path::new(&port_file).exists() || std::fs::read_to_string(&port_file).unwrap().is_empty() {
        assert!(start.elapsed().as_secs() < 30, "child never started redis");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let port: u16 = std::fs::read_to_string(&port_file).unwrap().parse().unwrap();
    assert!(listening(port));
    child.kill().unwrap();
    child.wait().unwrap();
    let start = std::time::Instant::now();
    while listening(port) {
        assert!(start.elapsed().as_secs() < 10, "redis on {port} outlived its killed test process");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
