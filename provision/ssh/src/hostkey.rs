//! Host-key verification: pinned key, known_hosts, or trust-on-first-use.
//!
//! known_hosts is matched here, as OpenSSH matches it (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT",
//! hostfile.c, match.c), not with russh's `known_hosts` module: russh compares host names
//! exactly (no lowercasing, no `*`/`?`/`!` patterns) and ignores `@revoked` and
//! `@cert-authority` lines, so under `--accept-new` a host recorded in any of those forms looked
//! absent and a man in the middle's key was trusted and appended. ssh-key's `KnownHosts`
//! parses the format but matches nothing, fails the whole file on one bad line and loses line
//! numbers, so it does not do this either.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use russh::keys::ssh_encoding::base64::{Base64, Encoding};
use russh::keys::{Algorithm, HashAlg, PublicKey, PublicKeyOrCertificate};

use crate::SshError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Unknown hosts are refused (the default).
    Strict,
    /// Unknown hosts are trusted and recorded; known hosts must still match.
    AcceptNew,
}

/// `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm().as_str(), key.fingerprint(HashAlg::Sha256))
}

/// Serialises read-decide-append on known_hosts between the connections of this process
/// (forks, many targets behind one bastion). Other minerctl processes are kept out by an
/// advisory `flock` on the file itself, taken while this lock is held.
static KNOWN_HOSTS_LOCK: Mutex<()> = Mutex::new(());

pub(crate) struct Verifier {
    pub host: String,
    pub address: String,
    pub port: u16,
    pub pinned: Option<PublicKey>,
    pub known_hosts: std::path::PathBuf,
    pub policy: HostKeyPolicy,
    /// Why the key was refused, read by `connect` to return a precise error instead of
    /// russh's generic "unknown key".
    pub verdict: Arc<Mutex<Option<SshError>>>,
}

impl Verifier {
    pub fn check(&self, offered: &PublicKeyOrCertificate) -> bool {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // Host certificates are not trusted through a CA here; compare the embedded key.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::new(cert.public_key().clone(), ""),
        };
        match self.decide(&key) {
            Ok(()) => true,
            Err(e) => {
                if let Ok(mut v) = self.verdict.lock() {
                    *v = Some(e);
                }
                false
            }
        }
    }

    fn decide(&self, key: &PublicKey) -> Result<(), SshError> {
        if let Some(pinned) = &self.pinned {
            if pinned.key_data() == key.key_data() {
                return Ok(());
            }
            return Err(SshError::HostKeyMismatch {
                host: self.host.clone(),
                addr: host_port(&self.address, self.port),
                expected: fingerprint(pinned),
                source_of_expected: "pinned in the inventory".into(),
                offered: fingerprint(key),
            });
        }
        let lookup = KnownHostsLookup {
            host: &self.host,
            address: &self.address,
            port: self.port,
            path: &self.known_hosts,
        };
        lookup.verify(key, self.policy)
    }
}

/// How a host is written and looked up in known_hosts: lowercase, `[host]:port` unless port 22.
pub(crate) fn host_port(address: &str, port: u16) -> String {
    let host = address.to_ascii_lowercase();
    if port == 22 { host } else { format!("[{host}]:{port}") }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    CertAuthority,
    Revoked,
}

/// A known_hosts line that names the host (after `!` exclusions).
#[derive(Debug)]
struct Entry {
    /// 1-based line number in the file.
    line: usize,
    marker: Option<Marker>,
    key: PublicKey,
}

/// The lines of `text` that name `host_port` (already lowercase, `[host]:port` form for
/// non-22 ports). Lines that do not parse are skipped, as OpenSSH skips them.
fn entries_for(text: &str, host_port: &str) -> Vec<Entry> {
    let mut found = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let Some(mut hosts) = fields.next() else { continue };
        let mut marker = None;
        if hosts.starts_with('@') {
            marker = match hosts {
                "@cert-authority" => Some(Marker::CertAuthority),
                "@revoked" => Some(Marker::Revoked),
                // OpenSSH ignores lines with a marker it does not know.
                _ => continue,
            };
            let Some(h) = fields.next() else { continue };
            hosts = h;
        }
        if !hosts_match(hosts, host_port) {
            continue;
        }
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else { continue };
        match PublicKey::from_openssh(&format!("{kind} {blob}")) {
            Ok(key) => found.push(Entry { line: i + 1, marker, key }),
            Err(e) => tracing::debug!(line = i + 1, error = %e, "known_hosts: unreadable key skipped"),
        }
    }
    found
}

/// OpenSSH's `match_hostname`: a comma-separated list of patterns (`*`, `?`, compared in
/// lowercase), where a matching `!pattern` excludes the line whatever else matches; hashed
/// `|1|salt|hash` names (HMAC-SHA1 of the lowercase name) match exactly.
fn hosts_match(patterns: &str, host_port: &str) -> bool {
    let mut positive = false;
    for pattern in patterns.split(',') {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            positive |= hashed_name_matches(hashed, host_port);
            continue;
        }
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(pattern.to_ascii_lowercase().as_bytes(), host_port.as_bytes()) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

/// `*` matches any run of characters, `?` exactly one; everything else itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// `salt|hash` (base64) of a `|1|` entry against `host_port`.
fn hashed_name_matches(salt_and_hash: &str, host_port: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else { return false };
    let (Ok(salt), Ok(hash)) = (Base64::decode_vec(salt), Base64::decode_vec(hash)) else { return false };
    hmac_sha1(&salt, host_port.as_bytes())[..] == hash[..]
}

/// What known_hosts says about an offered key.
#[derive(Debug)]
enum Judgement<'a> {
    /// A `@revoked` line lists the offered key.
    Revoked(&'a Entry),
    Known,
    /// A plain line holds another key of the same type.
    Changed(&'a Entry),
    /// The host is named only by `@cert-authority` lines (and perhaps keys of other types).
    CertAuthorityOnly(&'a Entry),
    /// Plain lines hold keys of other types only.
    OtherTypes(Vec<&'a Entry>),
    Absent,
}

fn judge<'a>(entries: &'a [Entry], key: &PublicKey) -> Judgement<'a> {
    let same = |e: &&Entry| e.key.key_data() == key.key_data();
    if let Some(e) = entries.iter().filter(|e| e.marker == Some(Marker::Revoked)).find(same) {
        return Judgement::Revoked(e);
    }
    let plain: Vec<&Entry> = entries.iter().filter(|e| e.marker.is_none()).collect();
    if plain.iter().any(same) {
        return Judgement::Known;
    }
    // A recorded key of the same algorithm that differs is a changed host key. Keys of other
    // algorithms alone do not prove a change (the server may have several).
    if let Some(e) = plain.iter().find(|e| e.key.algorithm() == key.algorithm()) {
        return Judgement::Changed(e);
    }
    if let Some(e) = entries.iter().find(|e| e.marker == Some(Marker::CertAuthority)) {
        return Judgement::CertAuthorityOnly(e);
    }
    if !plain.is_empty() {
        return Judgement::OtherTypes(plain);
    }
    Judgement::Absent
}

/// `ssh-keyscan -t` name of a key type.
fn keyscan_type(a: &Algorithm) -> String {
    match a {
        Algorithm::Ed25519 => "ed25519".into(),
        Algorithm::Ecdsa { .. } => "ecdsa".into(),
        Algorithm::Rsa { .. } => "rsa".into(),
        other => other.as_str().to_string(),
    }
}

/// One host's lookup in one known_hosts file.
pub(crate) struct KnownHostsLookup<'a> {
    /// Inventory name, for messages.
    pub host: &'a str,
    pub address: &'a str,
    pub port: u16,
    pub path: &'a Path,
}

impl KnownHostsLookup<'_> {
    fn err_io(&self, what: &str, e: std::io::Error) -> SshError {
        SshError::KnownHosts {
            host: self.host.to_string(),
            path: self.path.display().to_string(),
            reason: format!("{what}: {e}"),
        }
    }

    /// Reads known_hosts, decides on `key`, and under [`HostKeyPolicy::AcceptNew`] records it
    /// when the host is absent: read, decision and append happen under one lock (the
    /// process-wide mutex and an exclusive `flock` on the file), on what the file holds at
    /// that moment, so concurrent first connections record one line, and never two different
    /// keys.
    pub fn verify(&self, key: &PublicKey, policy: HostKeyPolicy) -> Result<(), SshError> {
        let _guard = KNOWN_HOSTS_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut file = match policy {
            HostKeyPolicy::Strict => match File::open(self.path) {
                Ok(f) => {
                    // Only keeps a half-written line of another process out: not worth failing for.
                    if let Err(e) = f.lock_shared() {
                        tracing::debug!(path = %self.path.display(), error = %e, "known_hosts: no shared lock");
                    }
                    Some(f)
                }
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(self.err_io("cannot read", e)),
            },
            HostKeyPolicy::AcceptNew => {
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| self.err_io("cannot create its folder", e))?;
                }
                let f = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(self.path)
                    .map_err(|e| self.err_io("cannot open", e))?;
                match f.lock() {
                    Ok(()) => {}
                    // A file system without locks: the process-wide lock still serialises this run.
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        tracing::warn!(path = %self.path.display(), "known_hosts: file locks unsupported")
                    }
                    Err(e) => return Err(self.err_io("cannot lock", e)),
                }
                Some(f)
            }
        };
        let mut text = String::new();
        if let Some(f) = file.as_mut() {
            f.seek(SeekFrom::Start(0)).map_err(|e| self.err_io("cannot read", e))?;
            f.read_to_string(&mut text).map_err(|e| self.err_io("cannot read", e))?;
        }
        let lookup = host_port(self.address, self.port);
        let entries = entries_for(&text, &lookup);
        let at = |e: &Entry| format!("{}:{}", self.path.display(), e.line);
        let offered = fingerprint(key);
        match judge(&entries, key) {
            Judgement::Known => Ok(()),
            Judgement::Revoked(e) => Err(SshError::HostKeyRevoked {
                host: self.host.to_string(),
                addr: lookup,
                offered,
                recorded_at: at(e),
            }),
            Judgement::Changed(e) => Err(SshError::HostKeyMismatch {
                host: self.host.to_string(),
                addr: lookup,
                expected: fingerprint(&e.key),
                source_of_expected: at(e),
                offered,
            }),
            Judgement::CertAuthorityOnly(e) => Err(SshError::HostKeyCertAuthority {
                host: self.host.to_string(),
                addr: lookup,
                recorded_at: at(e),
                offered,
            }),
            Judgement::OtherTypes(known) => {
                let mut types: Vec<String> =
                    known.iter().map(|e| e.key.algorithm().as_str().to_string()).collect();
                types.sort_unstable();
                types.dedup();
                Err(SshError::HostKeyOtherType {
                    host: self.host.to_string(),
                    known: format!(
                        "{} at {}",
                        types.join(", "),
                        known.first().map(|e| at(e)).unwrap_or_default()
                    ),
                    scan: format!(
                        "ssh-keyscan -p {} -t {} {}",
                        self.port,
                        keyscan_type(&key.algorithm()),
                        self.address.to_ascii_lowercase()
                    ),
                    addr: lookup,
                    offered,
                })
            }
            Judgement::Absent => match (policy, file.as_mut()) {
                (HostKeyPolicy::AcceptNew, Some(f)) => {
                    let public = key.to_openssh().map_err(|e| SshError::KnownHosts {
                        host: self.host.to_string(),
                        path: self.path.display().to_string(),
                        reason: format!("cannot encode the host key: {e}"),
                    })?;
                    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
                    f.write_all(format!("{sep}{lookup} {public}\n").as_bytes())
                        .and_then(|()| f.flush())
                        .map_err(|e| self.err_io("cannot append", e))?;
                    tracing::info!(host = %self.host, fingerprint = %offered, "recorded new host key");
                    Ok(())
                }
                _ => Err(SshError::HostKeyUnknown {
                    host: self.host.to_string(),
                    addr: lookup,
                    known_hosts: self.path.display().to_string(),
                    offered,
                }),
            },
        }
    }
}

/// HMAC-SHA1, for hashed known_hosts names only (OpenSSH's `|1|` format fixes the
/// algorithm); russh keeps its own matcher private.
fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(key) else { return [0; 20] };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7HfzkvoXWahWrJbFkrj7unxm++pV01nBy/6TbxjN2z";
    const K2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPnlV61/4uSjobA//e1wXa9siHS0cCm/S1ly6nmxxN1B";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBCuKbKlGU6kYpjfet58Hy2fsswukOPQEpNR8z0eHFbfOx8Dg7BYVj7IFlSIH+BNIl6eHDWa/HX814nYY5ABbl7Q=";
    /// `ssh-keygen -H` of `[gpu1.example.com]:2222 K1`.
    const HASHED: &str = "|1|vRHNnxf45Jp3bX8ci93d9B6syRs=|jf4poL8epwH3mxtxb3aBcFPefQs=";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha1_and_hmac_sha1_match_the_published_test_vectors() {
        use sha1::Digest;
        let sha1 = |d: &[u8]| sha1::Sha1::digest(d);
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex(&sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex(&sha1(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        // RFC 2202, cases 1, 2 and 6 (a key longer than a block).
        assert_eq!(hex(&hmac_sha1(&[0x0b; 20], b"Hi There")), "b617318655057264e28bc0b6fb378c8ef146be00");
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(&hmac_sha1(&[0xaa; 80], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    #[test]
    fn host_patterns_match_as_openssh_matches_them() {
        let h = host_port("GPU1.Example.COM", 2222);
        assert_eq!(h, "[gpu1.example.com]:2222");
        assert!(hosts_match("[GPU1.example.com]:2222", &h));
        assert!(hosts_match("other,[*.example.com]:*", &h));
        assert!(hosts_match("[gpu?.example.com]:2222", &h));
        assert!(!hosts_match("[gpu?.example.com]:22", &h));
        assert!(!hosts_match("gpu1.example.com", &h), "port 2222 is only matched in [host]:port form");
        assert!(hosts_match("gpu1.example.com", &host_port("gpu1.EXAMPLE.com", 22)));
        // A matching negation excludes the line, wherever it stands in the list.
        assert!(!hosts_match("*,![gpu1.example.com]:2222", &h));
        assert!(!hosts_match("![gpu1.*]:*,*", &h));
        assert!(hosts_match("*,![gpu2.example.com]:2222", &h));
        assert!(!hosts_match("![gpu2.example.com]:2222", &h), "a negation alone matches nothing");
        // Hashed names: HMAC-SHA1 of the lowercase name.
        assert!(hosts_match(HASHED, &h));
        assert!(hosts_match(HASHED, &host_port("GPU1.EXAMPLE.COM", 2222)));
        assert!(!hosts_match(HASHED, &host_port("gpu1.example.com", 22)));
        assert!(!hosts_match("|1|not-base64|x", &h));
    }

    #[test]
    fn glob_handles_stars_and_question_marks() {
        for (p, t, m) in [
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*.example.com", "gpu1.example.com", true),
            ("*.example.com", "example.com", false),
            ("??", "ab", true),
            ("??", "abc", false),
            ("a**", "a", true),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), m, "{p} vs {t}");
        }
    }

    #[test]
    fn entries_keep_line_numbers_markers_and_skip_what_does_not_parse() {
        let text = format!(
            "# comment\n\n@revoked * {K2}\n@cert-authority *.example.com {K1}\n@bogus * {K1}\n\
             gpu1.example.com not-a-key\n  gpu1.example.com\t{K1} comment\n{HASHED} {K2}\n"
        );
        let found = entries_for(&text, "gpu1.example.com");
        let summary: Vec<(usize, Option<Marker>)> = found.iter().map(|e| (e.line, e.marker)).collect();
        assert_eq!(summary, vec![(3, Some(Marker::Revoked)), (4, Some(Marker::CertAuthority)), (7, None)]);
    }

    fn judged(text: &str, offered: &str) -> String {
        let entries = entries_for(text, "[gpu1.example.com]:2222");
        match judge(&entries, &key(offered)) {
            Judgement::Revoked(e) => format!("revoked:{}", e.line),
            Judgement::Known => "known".into(),
            Judgement::Changed(e) => format!("changed:{}", e.line),
            Judgement::CertAuthorityOnly(e) => format!("ca:{}", e.line),
            Judgement::OtherTypes(v) => format!("other:{}", v.len()),
            Judgement::Absent => "absent".into(),
        }
    }

    #[test]
    fn judgement_revoked_first_then_known_changed_ca_other_types_absent() {
        let h = "[gpu1.example.com]:2222";
        assert_eq!(judged(&format!("{h} {K1}\n@revoked {h} {K1}\n"), K1), "revoked:2");
        assert_eq!(judged(&format!("@revoked {h} {K2}\n{h} {K1}\n"), K1), "known");
        assert_eq!(judged(&format!("{h} {ECDSA}\n{HASHED} {K2}\n"), K1), "changed:2");
        assert_eq!(judged(&format!("@cert-authority * {K2}\n{h} {ECDSA}\n"), K1), "ca:1");
        assert_eq!(judged(&format!("@cert-authority * {K1}\n"), K1), "ca:1", "a CA key is not a host key");
        assert_eq!(judged(&format!("{h} {ECDSA}\n"), K1), "other:1");
        assert_eq!(judged(&format!("*,!{h} {K2}\nother {K2}\n"), K1), "absent");
    }

    fn lookup(path: &Path) -> KnownHostsLookup<'_> {
        KnownHostsLookup { host: "gpu1", address: "GPU1.example.com", port: 2222, path }
    }

    #[test]
    fn accept_new_decides_on_the_file_as_it_is_when_the_lock_is_taken() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ssh/known_hosts");
        let l = lookup(&path);
        // First use: recorded once, in lowercase; a second call finds it and appends nothing.
        l.verify(&key(K1), HostKeyPolicy::AcceptNew).unwrap();
        l.verify(&key(K1), HostKeyPolicy::AcceptNew).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("[gpu1.example.com]:2222 {K1}\n"));
        // Another process records another key between two calls (a file without a final
        // newline): the next call reads it under the lock and refuses instead of appending.
        let path2 = d.path().join("known_hosts2");
        std::fs::write(&path2, format!("[gpu1.example.com]:2222 {K2}")).unwrap();
        let err = lookup(&path2).verify(&key(K1), HostKeyPolicy::AcceptNew).unwrap_err();
        assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path2).unwrap(), format!("[gpu1.example.com]:2222 {K2}"));
        // Strict never writes, not even a missing file.
        let path3 = d.path().join("absent");
        let err = lookup(&path3).verify(&key(K1), HostKeyPolicy::Strict).unwrap_err();
        assert!(matches!(err, SshError::HostKeyUnknown { .. }), "{err}");
        assert!(!path3.exists());
        // An appended line goes after a missing final newline, on its own line.
        let path4 = d.path().join("known_hosts4");
        std::fs::write(&path4, format!("other.example.com {K2}")).unwrap();
        lookup(&path4).verify(&key(K1), HostKeyPolicy::AcceptNew).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path4).unwrap(),
            format!("other.example.com {K2}\n[gpu1.example.com]:2222 {K1}\n")
        );
    }

    #[test]
    fn concurrent_first_uses_record_one_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("known_hosts");
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    lookup(&path).verify(&key(K1), HostKeyPolicy::AcceptNew).unwrap();
                });
            }
        });
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn another_key_type_error_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("known_hosts");
        std::fs::write(&path, format!("[gpu1.example.com]:2222 {ECDSA}\n")).unwrap();
        let msg = lookup(&path).verify(&key(K1), HostKeyPolicy::AcceptNew).unwrap_err().to_string();
        assert!(msg.contains("another key type (ecdsa-sha2-nistp256 at"), "{msg}");
        assert!(msg.contains("ssh-keyscan -p 2222 -t ed25519 gpu1.example.com"), "{msg}");
    }
}
