//! A throwaway OCI registry: Debian's `docker-registry` (distribution 2.8) on a free port
//! of 127.0.0.1, serving TLS with a certificate of its own throwaway CA and asking for
//! credentials as a private registry does: htpasswd (Basic, [`Registry::start`]) or
//! Bearer tokens from a token service ([`Registry::start_with_tokens`], `token.rs`), as
//! Docker Hub, GHCR, GitLab and Harbor do.
//!
//! The password reaches `htpasswd` on its stdin, never a command line. Deleting manifests
//! is enabled, so a test can remove an image and push it again over blobs that stay.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{self, free_port, tail, wait_until};
use crate::{HarnessError, io};

mod token;

pub struct Registry {
    child: Option<Child>,
    port: u16,
    /// Bearer mode's token service (stopped after the registry).
    tokens: Option<token::TokenService>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("host", &self.host()).finish()
    }
}

fn need(binary: &str, package: &str) -> Result<(), HarnessError> {
    if Path::new("/usr/bin").join(binary).exists() {
        return Ok(());
    }
    Err(HarnessError::Missing { what: binary.into(), hint: format!("apt-get install {package}") })
}

/// Runs `cmd` to completion, feeding it `stdin`; an error carries its stderr.
fn run(mut cmd: Command, what: &str, stdin: &[u8]) -> Result<Vec<u8>, HarnessError> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io(format!("run {what}")))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).map_err(io(format!("write to {what}")))?;
    }
    let out = child.wait_with_output().map_err(io(format!("run {what}")))?;
    if !out.status.success() {
        return Err(HarnessError::Failed {
            what: what.into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), HarnessError> {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    run(cmd, &format!("openssl {}", args[0]), b"").map(drop)
}

/// A CA (`ca.crt`) and a server certificate for 127.0.0.1 that it signed (`server.crt`).
fn certificates(dir: &Path) -> Result<(), HarnessError> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=lab registry CA"]);
    openssl(dir, &ca)?;
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    openssl(dir, &req)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(io("write server.ext"))?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )?;
    // skopeo's --cert-dir reads every *.crt as a CA and pairs *.key with a client *.cert.
    std::fs::create_dir_all(dir.join("trust")).map_err(io("create trust/"))?;
    std::fs::copy(dir.join("ca.crt"), dir.join("trust/ca.crt")).map(drop).map_err(io("copy ca.crt"))
}

impl Registry {
    /// Starts a registry that accepts `user` with `password` (and nobody else), as
    /// htpasswd (Basic) credentials on every request.
    pub fn start(user: &str, password: &str) -> Result<Registry, HarnessError> {
        Self::start_with(user, password, false)
    }

    /// Starts a registry that wants a Bearer token on every request, from a token
    /// service that hands them to `user` with `password` (and nobody else).
    pub fn start_with_tokens(user: &str, password: &str) -> Result<Registry, HarnessError> {
        Self::start_with(user, password, true)
    }

    fn start_with(user: &str, password: &str, bearer: bool) -> Result<Registry, HarnessError> {
        need("docker-registry", "docker-registry")?;
        need("htpasswd", "apache2-utils")?;
        need("openssl", "openssl")?;
        let dir = process::temp_dir("registry")?;
        let d = dir.path();
        certificates(d)?;
        let (tokens, auth) = if bearer {
            let service = token::TokenService::start(d, user, password)?;
            let auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}/token.crt\n",
                service.realm(),
                token::SERVICE,
                token::ISSUER,
                d.display()
            );
            (Some(service), auth)
        } else {
            let mut htpasswd = Command::new("htpasswd");
            // -n: print, -i: password from stdin, -B: bcrypt (the only hash distribution reads).
            htpasswd.args(["-niB", user]);
            let line = run(htpasswd, "htpasswd", password.as_bytes())?;
            std::fs::write(d.join("htpasswd"), line).map_err(io("write htpasswd"))?;
            (
                None,
                format!("auth:\n  htpasswd:\n    realm: lab-registry\n    path: {}/htpasswd\n", d.display()),
            )
        };
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match launch(d, port, &auth) {
                Ok(child) => return Ok(Registry { child: Some(child), port, tokens, dir }),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Failed {
            what: "docker-registry".into(),
            detail: "no attempt to start it was made".into(),
        }))
    }

    /// Tokens the token service handed out so far (0 for a Basic registry).
    pub fn tokens_issued(&self) -> usize {
        self.tokens.as_ref().map_or(0, token::TokenService::issued)
    }

    /// `127.0.0.1:PORT`: the registry's host, as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) that signed the registry's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A directory holding the CA as `ca.crt` and nothing else, as skopeo's `--cert-dir`
    /// wants it.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("trust")
    }

    /// Everything the registry logged so far, one line per request among others.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry stores blobs and repositories.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
}

/// Starts `docker-registry` on `port` with `auth`, the config's `auth:` section.
fn launch(dir: &Path, port: u16, auth: &str) -> Result<Child, HarnessError> {
    let config = dir.join(format!("config-{port}.yml"));
    let d = dir.display();
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
             rootdirectory: {d}/storage\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  \
             tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n{auth}"
        ),
    )
    .map_err(io("write the registry config"))?;
    let log = dir.join("registry.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io("create the registry log"))?;
    let mut cmd = Command::new("/usr/bin/docker-registry");
    cmd.arg("serve")
        .arg(&config)
        // Without a secret it makes one up and says so on every start.
        .env("REGISTRY_HTTP_SECRET", "lab")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(io("dup the registry log"))?)
        .stderr(log_file);
    let mut child = process::spawn(cmd, "docker-registry")?;
    let ready = wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_))) || TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if ready && matches!(child.try_wait(), Ok(None)) {
        return Ok(child);
    }
    process::stop(&mut child, libc::SIGKILL, Duration::from_secs(1));
    Err(HarnessError::NotReady { what: "docker-registry".into(), secs: 30, tail: tail(&log), log })
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }
}
