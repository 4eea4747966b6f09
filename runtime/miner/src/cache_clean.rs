//! `chutes-miner cache-clean`: the chute Job's init container (reference §12.1, §17).
//!
//! Every chute keeps its model cache in its own directory, `/var/snap/cache/<chute_id>`,
//! which the chute sees as `/cache`; the init container sees the whole of
//! `/var/snap/cache`. The original ran a Python script from a ConfigMap that scanned only
//! the shared `hub/` at the top (so per-chute directories were never aged out) and
//! compared the starting chute's id with Hugging Face repo ids. This one works on the
//! per-chute directories, as the original's successor does:
//!
//! 1. the starting chute's directory and its `hub/` and `civitai/` exist and are
//!    writable by the chute's user (mode 0777, as the original's `chmod -R 777`);
//! 2. every other chute's directory not used for `max_age` goes;
//! 3. while the node's cache is over its budget, the least recently used of the others
//!    goes (the original removed the largest first, which throws away the models that
//!    are dearest to fetch again, however hot they are).
//!
//! "Used" is the newest access or modification time of anything in the directory. The
//! starting chute's directory counts against the budget but is never removed. Nothing
//! here stops the chute from starting: errors are reported and the container exits 0.
//! Symbolic links are never followed (one at the top is not a chute and stays; one
//! inside a removed directory goes as a link). Sizes are disk blocks; a GB is 2^30 bytes.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What to clean and how far.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node's cache root (`/var/snap/cache`, mounted at `/cache`).
    pub root: PathBuf,
    /// The chute about to start: its directory is prepared and kept.
    pub chute_id: String,
    pub max_age: Duration,
    pub max_bytes: u64,
    /// The clock, so a run can be replayed.
    pub now: SystemTime,
}

/// Why a directory went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unused,
    OverBudget,
}

/// One directory removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    pub bytes: u64,
    pub idle: Duration,
    pub reason: Reason,
}

/// The outcome of a run: what went, what is left, what could not be done.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<Removed>,
    /// Bytes left in the cache (every chute's directory, the starting one included).
    pub kept_bytes: u64,
    pub errors: Vec<String>,
}

/// A chute id names a directory directly under the root: nothing else is accepted.
fn valid_chute_id(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains('/') && !id.contains('\0')
}

/// Disk bytes and the newest access/modification time of everything under `path`
/// (itself included), without following links.
fn usage(path: &Path) -> io::Result<(u64, SystemTime)> {
    let mut bytes = 0u64;
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)?;
        bytes += meta.blocks() * 512;
        for t in [meta.accessed(), meta.modified()].into_iter().flatten() {
            newest = newest.max(t);
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok((bytes, newest))
}

/// Makes `dir` exist with mode 0777, and the same for everything below it that exists.
fn open_up(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

pub fn clean(opts: &Options) -> Report {
    let mut report = Report::default();
    if !valid_chute_id(&opts.chute_id) {
        report
            .errors
            .push(format!("chute id {:?} does not name a directory; nothing prepared", opts.chute_id));
    } else {
        let own = opts.root.join(&opts.chute_id);
        for dir in [own.join("hub"), own.join("civitai")] {
            if let Err(e) = fs::create_dir_all(&dir) {
                report.errors.push(format!("creating {}: {e}", dir.display()));
            }
        }
        if let Err(e) = open_up(&own) {
            report.errors.push(format!("opening {} to the chute's user: {e}", own.display()));
        }
    }
    let entries = match fs::read_dir(&opts.root) {
        Ok(e) => e,
        Err(e) => {
            report.errors.push(format!("reading {}: {e}", opts.root.display()));
            return report;
        }
    };
    // (name, bytes, last used) of every other chute's directory.
    let mut others: Vec<(String, u64, SystemTime)> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report.errors.push(format!("reading {}: {e}", opts.root.display()));
                continue;
            }
        };
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        match usage(&path) {
            Ok((bytes, _)) if name == opts.chute_id || !is_dir => report.kept_bytes += bytes,
            Ok((bytes, used)) => others.push((name, bytes, used)),
            Err(e) => report.errors.push(format!("measuring {}: {e}", path.display())),
        }
    }
    let idle = |used: SystemTime| opts.now.duration_since(used).unwrap_or_default();
    let remove = |name: &str, bytes: u64, used: SystemTime, reason: Reason, report: &mut Report| -> bool {
        let path = opts.root.join(name);
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                report.removed.push(Removed { name: name.to_owned(), bytes, idle: idle(used), reason });
                true
            }
            Err(e) => {
                report.errors.push(format!("removing {}: {e}", path.display()));
                false
            }
        }
    };
    let mut left = Vec::new();
    for (name, bytes, used) in others {
        if idle(used) > opts.max_age && remove(&name, bytes, used, Reason::Unused, &mut report) {
            continue;
        }
        left.push((name, bytes, used));
    }
    // Least recently used first; the name breaks ties so a run is reproducible.
    left.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
    let mut total = report.kept_bytes + left.iter().map(|l| l.1).sum::<u64>();
    let mut kept_others = 0u64;
    for (name, bytes, used) in left {
        if total > opts.max_bytes && remove(&name, bytes, used, Reason::OverBudget, &mut report) {
            total -= bytes;
            continue;
        }
        kept_others += bytes;
    }
    report.kept_bytes += kept_others;
    report
}

/// Sizes for people: `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, FileTimes};

    const DAY: Duration = Duration::from_secs(86_400);

    /// A chute directory holding `kib` KiB of data, last used `days_ago` before `now`.
    fn chute_dir(root: &Path, name: &str, kib: usize, now: SystemTime, days_ago: u64) {
        let dir = root.join(name).join("hub");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("model.safetensors"), vec![7u8; kib * 1024]).unwrap();
        let t = now - DAY * days_ago as u32;
        let times = FileTimes::new().set_accessed(t).set_modified(t);
        for p in [dir.join("model.safetensors"), dir.clone(), root.join(name)] {
            File::open(&p).unwrap().set_times(times).unwrap();
        }
    }

    fn names(report: &Report) -> Vec<(&str, Reason)> {
        report.removed.iter().map(|r| (r.name.as_str(), r.reason)).collect()
    }

    fn options(root: &Path, chute: &str, now: SystemTime, max_bytes: u64) -> Options {
        Options { root: root.to_owned(), chute_id: chute.into(), max_age: DAY * 7, max_bytes, now }
    }

    #[test]
    fn unused_chutes_go_and_the_starting_one_is_prepared_and_kept_however_old() {
        let root = tempfile::tempdir().unwrap();
        let now = SystemTime::now() + DAY * 365;
        chute_dir(root.path(), "old", 16, now, 30);
        chute_dir(root.path(), "recent", 16, now, 1);
        chute_dir(root.path(), "starting", 16, now, 90);
        fs::write(root.path().join("README"), "not a chute").unwrap();

        let report = clean(&options(root.path(), "starting", now, u64::MAX));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(names(&report), [("old", Reason::Unused)]);
        assert!(report.removed[0].idle >= DAY * 30);
        assert!(!root.path().join("old").exists());
        assert!(root.path().join("recent/hub/model.safetensors").exists());
        assert!(root.path().join("starting/hub/model.safetensors").exists(), "its data is kept");
        assert!(root.path().join("README").exists(), "files at the top are not chutes");
        for d in ["starting", "starting/hub", "starting/civitai", "starting/hub/model.safetensors"] {
            let mode = fs::metadata(root.path().join(d)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o777, "{d} is open to the chute's user");
        }
    }

    #[test]
    fn over_budget_the_least_recently_used_go_first_never_the_starting_chute() {
        let root = tempfile::tempdir().unwrap();
        let now = SystemTime::now() + DAY * 365;
        // Large but recently used, small but stale: the stale ones go first.
        chute_dir(root.path(), "big-hot", 512, now, 1);
        chute_dir(root.path(), "small-cold", 128, now, 5);
        chute_dir(root.path(), "mid-warm", 256, now, 3);
        chute_dir(root.path(), "starting", 256, now, 6);
        let measured = |n: &str| usage(&root.path().join(n)).unwrap().0;
        let (big, mid, start) = (measured("big-hot"), measured("mid-warm"), measured("starting"));
        // Room for the starting chute (plus the civitai/ it gets), big-hot and mid-warm,
        // not for small-cold as well.
        let budget = start + big + mid + 64 * 1024;

        let report = clean(&options(root.path(), "starting", now, budget));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(names(&report), [("small-cold", Reason::OverBudget)]);
        assert!(report.kept_bytes <= budget);
        for kept in ["big-hot", "mid-warm", "starting"] {
            assert!(root.path().join(kept).exists(), "{kept}");
        }

        // A budget below the starting chute alone: every other one goes, it stays.
        let report = clean(&options(root.path(), "starting", now, 1));
        assert_eq!(names(&report), [("mid-warm", Reason::OverBudget), ("big-hot", Reason::OverBudget)]);
        assert!(root.path().join("starting/hub/model.safetensors").exists());
    }

    #[test]
    fn a_link_in_the_cache_is_removed_as_a_link_and_its_target_survives() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), "keep me").unwrap();
        let now = SystemTime::now() + DAY * 365;
        let link = root.path().join("linked");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        chute_dir(root.path(), "stale", 4, now, 30);

        let report = clean(&options(root.path(), "starting", now, u64::MAX));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(names(&report), [("stale", Reason::Unused)]);
        assert!(outside.path().join("precious").exists(), "links are never followed");
    }

    #[test]
    fn a_chute_id_that_is_not_a_directory_name_prepares_nothing_and_says_so() {
        let root = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for bad in ["", "..", "a/b"] {
            let report = clean(&options(root.path(), bad, now, u64::MAX));
            assert!(report.errors.iter().any(|e| e.contains("does not name a directory")), "{bad:?}");
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "nothing was created");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
