#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! The SSH transport against a real OpenSSH server: a throwaway `sshd -D` on 127.0.0.1 with
//! its own host key, authorized key and config, started per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use provision_ssh::{HostKeyPolicy, Options, Session, SshError, Target};

struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let st =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().unwrap();
    assert!(st.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sshd {
    fn start() -> Sshd {
        Sshd::start_with("MaxSessions 50\n")
    }

    /// An sshd with `extra` appended to its config (say "MaxSessions 50\n"; nothing = OpenSSH's defaults).
    fn start_with(extra: &str) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPidFile none\nAllowTcpForwarding yes\nMaxStartups 100\n{extra}",
                d = d.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let why = match child.try_wait().unwrap() {
                Some(status) => Some(format!("sshd exited ({status})")),
                None if std::time::Instant::now() > deadline => Some("sshd not listening after 30 s".into()),
                None => None,
            };
            if let Some(why) = why {
                let _ = child.kill();
                panic!("{why}: {}", std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd { dir, port, child }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn host_pub(&self) -> String {
        std::fs::read_to_string(self.path("host_key.pub")).unwrap().trim().to_string()
    }

    fn target(&self) -> Target {
        Target {
            name: "lab-1".into(),
            address: "127.0.0.1".into(),
            port: self.port,
            user: "root".into(),
            key: Some(self.path("client_key")),
            pinned_host_key: None,
            jump: None,
        }
    }

    /// Options with a known_hosts file of our own, holding `lines`.
    fn options(&self, lines: &str, policy: HostKeyPolicy) -> Options {
        let kh = self.path("known_hosts");
        std::fs::write(&kh, lines).unwrap();
        Options { known_hosts: kh, policy, ..Options::new() }
    }

    fn known_line(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, key_only(&self.host_pub()))
    }
}

fn other_key() -> String {
    let d = tempfile::tempdir().unwrap();
    keygen(&d.path().join("k"));
    std::fs::read_to_string(d.path().join("k.pub")).unwrap().trim().to_string()
}

/// `<algorithm> <base64>` of a `.pub` line, without its comment.
fn key_only(public: &str) -> String {
    public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_captures_status_stdout_stderr_completely_and_reuses_the_connection() {
    let sshd = Sshd::start();
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let s = Session::connect(&sshd.target(), &opts).await.unwrap();
    let out = s.exec("echo out; echo err >&2; exit 3", None, T).await.unwrap();
    assert_eq!(
        (out.status, out.stdout_str().as_str(), out.stderr_str().as_str()),
        (Some(3), "out\n", "err\n")
    );
    // 4 MiB on stdout and stderr together: nothing lost, whatever the order of exit status and data.
    let out = s.exec("head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2", None, T).await.unwrap();
    assert_eq!((out.stdout.len(), out.stderr.len()), (2097152, 2097152));
    // stdin reaches the command.
    let out = s.exec("tr a-z A-Z", Some(b"hello"), T).await.unwrap();
    assert_eq!(out.stdout_str(), "HELLO");
    // Many commands at once over the same connection.
    let outs = futures_join(&s).await;
    assert!(outs.iter().enumerate().all(|(i, o)| o.stdout_str() == format!("{i}\n")));
    // A killed process reports its signal instead of a status.
    let out = s.exec("kill -9 $$", None, T).await.unwrap();
    assert_eq!(out.status, None);
    assert!(out.signal.is_some());
}

async fn futures_join(s: &Session) -> Vec<provision_ssh::Output> {
    let (a, b, c, d) = tokio::join!(
        s.exec("sleep 0.2; echo 0", None, T),
        s.exec("sleep 0.2; echo 1", None, T),
        s.exec("sleep 0.2; echo 2", None, T),
        s.exec("sleep 0.2; echo 3", None, T),
    );
    vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_timeout_is_reported_and_session_stays_usable() {
    let sshd = Sshd::start();
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let s = Session::connect(&sshd.target(), &opts).await.unwrap();
    let err = s.exec("sleep 30", None, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, SshError::CommandTimeout { .. }), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(s.exec("true", None, T).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_refused_by_default_and_recorded_with_accept_new() {
    let sshd = Sshd::start();
    let opts = sshd.options("", HostKeyPolicy::Strict);
    let err = Session::connect(&sshd.target(), &opts).await.err().unwrap();
    assert!(matches!(err, SshError::HostKeyUnknown { .. }), "{err}");
    assert!(err.to_string().contains("--accept-new"), "{err}");

    let opts = Options { policy: HostKeyPolicy::AcceptNew, ..opts };
    Session::connect(&sshd.target(), &opts).await.unwrap();
    let recorded = std::fs::read_to_string(&opts.known_hosts).unwrap();
    assert!(
        recorded.trim_start().starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{recorded}"
    );
    // Now strict mode accepts it.
    let opts = Options { policy: HostKeyPolicy::Strict, ..opts };
    Session::connect(&sshd.target(), &opts).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_with_both_fingerprints_even_with_accept_new() {
    let sshd = Sshd::start();
    let wrong = other_key();
    let mut parts = wrong.split_whitespace();
    let line = format!("[127.0.0.1]:{} {} {}\n", sshd.port, parts.next().unwrap(), parts.next().unwrap());
    let opts = sshd.options(&line, HostKeyPolicy::AcceptNew);
    // Refused in the handshake, before authentication: no command can have run.
    let err = Session::connect(&sshd.target(), &opts).await.err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{msg}");
    let fp = |k: &str| {
        let out = Command::new("ssh-keygen").args(["-l", "-f", "-"]).stdin_bytes(k);
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    assert!(msg.contains(&fp(&wrong)), "expected fingerprint missing: {msg}");
    assert!(msg.contains(&fp(&sshd.host_pub())), "offered fingerprint missing: {msg}");
    assert!(msg.contains("known_hosts:1"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_known_hosts_entry_is_accepted() {
    let sshd = Sshd::start();
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let st = Command::new("ssh-keygen").arg("-H").arg("-f").arg(&opts.known_hosts).output().unwrap();
    assert!(st.status.success());
    let hashed = std::fs::read_to_string(&opts.known_hosts).unwrap();
    assert!(hashed.starts_with("|1|"), "{hashed}");
    Session::connect(&sshd.target(), &opts).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_host_key_overrides_known_hosts() {
    let sshd = Sshd::start();
    let opts = sshd.options("", HostKeyPolicy::Strict);
    let mut t = sshd.target();
    t.pinned_host_key = Some(sshd.host_pub());
    Session::connect(&t, &opts).await.unwrap();
    t.pinned_host_key = Some(other_key());
    let err = Session::connect(&t, &opts).await.err().unwrap();
    assert!(err.to_string().contains("pinned in the inventory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_sets_content_mode_and_owner() {
    let sshd = Sshd::start();
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let s = Session::connect(&sshd.target(), &opts).await.unwrap();
    let path = sshd.path("uploaded.conf");
    let out = s.upload(path.to_str().unwrap(), b"a = 1\n", 0o640, "root:root").await.unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 1\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_host_reaches_the_target_through_direct_tcpip() {
    let jump = Sshd::start();
    let target_sshd = Sshd::start();
    let lines = format!("{}{}", jump.known_line(), target_sshd.known_line());
    let opts = jump.options(&lines, HostKeyPolicy::Strict);
    let mut t = target_sshd.target();
    t.jump = Some(Box::new(Target { name: "bastion".into(), ..jump.target() }));
    let s = Session::connect(&t, &opts).await.unwrap();
    // The command runs on the target: its sshd config is visible from the session's parent.
    let out = s.exec("echo via-jump", None, T).await.unwrap();
    assert_eq!(out.stdout_str(), "via-jump\n");
    // A jump host whose key is wrong stops the connection, named as the jump's problem.
    let opts = jump.options(&target_sshd.known_line(), HostKeyPolicy::Strict);
    let err = Session::connect(&t, &opts).await.err().unwrap();
    assert!(err.to_string().contains("jump host"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_key_fails_authentication_with_what_was_tried() {
    let sshd = Sshd::start();
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let d = tempfile::tempdir().unwrap();
    keygen(&d.path().join("k"));
    let t = Target { key: Some(d.path().join("k")), ..sshd.target() };
    let err = Session::connect(&t, &opts).await.err().unwrap();
    assert!(matches!(err, SshError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("key file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_unreachable() {
    let opts = Options { known_hosts: PathBuf::from("/nonexistent/known_hosts"), ..Options::new() };
    let t = Target {
        name: "gone".into(),
        address: "127.0.0.1".into(),
        port: free_port(),
        user: "root".into(),
        key: None,
        pinned_host_key: None,
        jump: None,
    };
    let err = Session::connect(&t, &opts).await.err().unwrap();
    assert!(err.is_unreachable(), "{err}");
}

trait StdinBytes {
    fn stdin_bytes(&mut self, input: &str) -> String;
}

impl StdinBytes for Command {
    fn stdin_bytes(&mut self, input: &str) -> String {
        use std::io::Write;
        let mut child =
            self.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_agent_keys_are_used_when_no_key_file_is_set() {
    let sshd = Sshd::start();
    let _env = AGENT_ENV.lock().await;
    let (mut agent, sock) = start_agent(&sshd, &sshd.path("client_key"));
    unsafe { std::env::set_var("SSH_AUTH_SOCK", &sock) };
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let t = Target { key: None, ..sshd.target() };
    let s = Session::connect(&t, &opts).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let s = s.unwrap();
    assert_eq!(s.exec("echo agent", None, T).await.unwrap().stdout_str(), "agent\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lock_keeps_a_second_run_out_until_the_first_connection_ends() {
    let sshd = Sshd::start();
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    // The lock lives in /run of the machine here; use a unique owner text to recognise ours.
    let mut first = Session::connect(&sshd.target(), &opts).await.unwrap();
    first.lock("alice@laptop pid 1").await.unwrap();
    let mut second = Session::connect(&sshd.target(), &opts).await.unwrap();
    let err = second.lock("bob@desk pid 2").await.unwrap_err();
    assert!(matches!(err, SshError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("alice@laptop pid 1"), "{err}");
    first.close().await;
    // The host releases the lock when the holder's connection ends.
    let mut ok = false;
    for _ in 0..50 {
        let mut s = Session::connect(&sshd.target(), &opts).await.unwrap();
        if s.lock("bob@desk pid 2").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "lock not released after the holder disconnected");
}

// ---- known_hosts matching as OpenSSH does it ----

fn err_of(r: Result<Session, SshError>) -> SshError {
    match r {
        Ok(_) => panic!("connected, but the connection should have been refused"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_match_known_hosts_case_insensitively_under_accept_new() {
    let sshd = Sshd::start();
    // OpenSSH lowercases host names: `LOCALHOST` is the host recorded as `localhost`.
    let line = format!("[localhost]:{} {}\n", sshd.port, key_only(&other_key()));
    let opts = sshd.options(&line, HostKeyPolicy::AcceptNew);
    let t = Target { address: "LOCALHOST".into(), ..sshd.target() };
    let err = err_of(Session::connect(&t, &opts).await);
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&opts.known_hosts).unwrap(), line, "known_hosts must not change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_known_hosts_line_with_another_key_is_a_mismatch() {
    let sshd = Sshd::start();
    let line = format!("*.example.org,* {}\n", key_only(&other_key()));
    let opts = sshd.options(&line, HostKeyPolicy::AcceptNew);
    let err = err_of(Session::connect(&sshd.target(), &opts).await);
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("known_hosts:1"), "{err}");
    // `?` matches one character.
    let line = format!("[127.0.0.?]:{} {}\n", sshd.port, key_only(&other_key()));
    let opts = sshd.options(&line, HostKeyPolicy::AcceptNew);
    let err = err_of(Session::connect(&sshd.target(), &opts).await);
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negated_pattern_excludes_the_line() {
    let sshd = Sshd::start();
    // Line 1 would be a mismatch, but it excludes this host; line 2 (a wildcard) holds the real key.
    let lines = format!(
        "*,![127.0.0.1]:{p} {other}\n[127.0.0.?]:{p} {real}\n",
        p = sshd.port,
        other = key_only(&other_key()),
        real = key_only(&sshd.host_pub())
    );
    let opts = sshd.options(&lines, HostKeyPolicy::Strict);
    Session::connect(&sshd.target(), &opts).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_host_key_is_refused_even_when_also_listed_as_known() {
    let sshd = Sshd::start();
    let lines = format!("{}@revoked * {}\n", sshd.known_line(), key_only(&sshd.host_pub()));
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let opts = sshd.options(&lines, policy);
        let err = err_of(Session::connect(&sshd.target(), &opts).await);
        let msg = err.to_string();
        assert!(msg.contains("REVOKED") && msg.contains("known_hosts:2"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_known_only_through_a_cert_authority_is_not_trusted_on_first_use() {
    let sshd = Sshd::start();
    let line = format!("@cert-authority [127.0.0.1]:{} {}\n", sshd.port, key_only(&other_key()));
    let opts = sshd.options(&line, HostKeyPolicy::AcceptNew);
    let err = err_of(Session::connect(&sshd.target(), &opts).await);
    assert!(err.to_string().contains("@cert-authority"), "{err}");
    assert_eq!(std::fs::read_to_string(&opts.known_hosts).unwrap(), line, "known_hosts must not change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_known_only_with_another_key_type_says_so() {
    let sshd = Sshd::start();
    let d = tempfile::tempdir().unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(d.path().join("k"))
        .status()
        .unwrap();
    assert!(st.success());
    let ecdsa = std::fs::read_to_string(d.path().join("k.pub")).unwrap();
    let line = format!("[127.0.0.1]:{} {}\n", sshd.port, key_only(&ecdsa));
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let opts = sshd.options(&line, policy);
        let msg = err_of(Session::connect(&sshd.target(), &opts).await).to_string();
        assert!(msg.contains("another key type") && msg.contains("ecdsa-sha2-nistp256"), "{msg}");
        assert!(msg.contains("ssh-keyscan") && msg.contains("-t ed25519"), "{msg}");
        assert!(!msg.contains("run with --accept-new"), "{msg}");
    }
}

// ---- trust on first use under concurrency ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_connections_record_the_host_key_once() {
    let sshd = Sshd::start();
    let opts = sshd.options("", HostKeyPolicy::AcceptNew);
    let t = sshd.target();
    let mut tasks = vec![];
    for _ in 0..8 {
        let (t, opts) = (t.clone(), opts.clone());
        tasks.push(tokio::spawn(async move { Session::connect(&t, &opts).await.map(|_| ()) }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let recorded = std::fs::read_to_string(&opts.known_hosts).unwrap();
    assert_eq!(recorded.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{recorded}");
}

// ---- jump host ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_root_jump_user_without_sudo_only_forwards() {
    // `nobody` has no sudo and a nologin shell: it can forward, it cannot run anything.
    let out = Command::new("getent").args(["passwd", "nobody"]).output().unwrap();
    assert!(out.status.success(), "this test needs the system user `nobody`");
    let jump = Sshd::start();
    let target_sshd = Sshd::start();
    // sshd reads authorized_keys as the logging-in user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(jump.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(jump.path("authorized_keys"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let lines = format!("{}{}", jump.known_line(), target_sshd.known_line());
    let opts = jump.options(&lines, HostKeyPolicy::Strict);
    let mut t = target_sshd.target();
    t.jump = Some(Box::new(Target { name: "bastion".into(), user: "nobody".into(), ..jump.target() }));
    let s = Session::connect(&t, &opts).await.unwrap();
    assert_eq!(s.exec("echo via-jump", None, T).await.unwrap().stdout_str(), "via-jump\n");
}

// ---- command timeout ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_commands_are_stopped_and_free_their_session_slots() {
    // OpenSSH's default MaxSessions (10): a command left running holds one of them.
    let sshd = Sshd::start_with("");
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let s = Session::connect(&sshd.target(), &opts).await.unwrap();
    for _ in 0..10 {
        let err = s.exec("sleep 60", None, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, SshError::CommandTimeout { .. }), "{err}");
    }
    let out = s.exec("true", None, T).await.unwrap();
    assert!(out.success());
}

// ---- authentication ----

/// SSH_AUTH_SOCK is process-wide: tests that set it take turns.
static AGENT_ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_with_a_passphrase_falls_back_to_ssh_agent() {
    let sshd = Sshd::start();
    let key = sshd.path("client_key");
    // The same key, with a passphrase, is the configured ssh.key; the agent holds it unlocked.
    let locked = sshd.path("client_key_locked");
    std::fs::copy(&key, &locked).unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "s3cret-passphrase", "-f"])
        .arg(&locked)
        .status()
        .unwrap();
    assert!(st.success());
    let opts = sshd.options(&sshd.known_line(), HostKeyPolicy::Strict);
    let t = Target { key: Some(locked.clone()), ..sshd.target() };
    let _env = AGENT_ENV.lock().await;
    // Without an agent: a clear error naming the file and what to do.
    unsafe { std::env::set_var("SSH_AUTH_SOCK", sshd.path("no-agent.sock")) };
    let msg = err_of(Session::connect(&t, &opts).await).to_string();
    assert!(msg.contains("passphrase") && msg.contains("ssh-add"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    let (mut agent, sock) = start_agent(&sshd, &key);
    unsafe { std::env::set_var("SSH_AUTH_SOCK", &sock) };
    let s = Session::connect(&t, &opts).await;
    let _ = agent.kill();
    let _ = agent.wait();
    s.unwrap();
}

fn start_agent(sshd: &Sshd, key: &Path) -> (Child, PathBuf) {
    let sock = sshd.path("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "ssh-agent made no socket in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = Command::new("ssh-add").arg(key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(added.status.success(), "{added:?}");
    (agent, sock)
}

// ---- a connection lost after the exit status ----

/// A russh server whose `exec` answers with part of the output and exit status 0, then drops
/// the connection without closing the channel.
struct CutShort;

impl russh::server::Handler for CutShort {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<russh::server::Auth, Self::Error> {
        Ok(russh::server::Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        _data: &[u8],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.data(channel, b"first half".to_vec())?;
        session.exit_status_request(channel, 0)?;
        session.disconnect(russh::Disconnect::ByApplication, "gone", "en")?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_cut_short_by_a_lost_connection_is_not_a_success() {
    let d = tempfile::tempdir().unwrap();
    keygen(&d.path().join("host_key"));
    keygen(&d.path().join("client_key"));
    let host_key = russh::keys::load_secret_key(d.path().join("host_key"), None).unwrap();
    let config = std::sync::Arc::new(russh::server::Config { keys: vec![host_key], ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        if let Ok(running) = russh::server::run_stream(config, stream, CutShort).await {
            let _ = running.await;
        }
    });
    let host_pub = std::fs::read_to_string(d.path().join("host_key.pub")).unwrap();
    let t = Target {
        name: "cut".into(),
        address: "127.0.0.1".into(),
        port,
        user: "root".into(),
        key: Some(d.path().join("client_key")),
        pinned_host_key: Some(key_only(&host_pub)),
        jump: None,
    };
    let opts = Options { known_hosts: d.path().join("known_hosts"), ..Options::new() };
    let s = Session::connect(&t, &opts).await.unwrap();
    let r = s.exec("cat big-file", None, T).await;
    server.abort();
    let err = r.expect_err("a cut-short output was reported as the command's result");
    assert!(matches!(err, SshError::Disconnected { .. }), "{err}");
    assert!(err.is_unreachable());
}
