//! A deterministic ustar writer.
//!
//! Written here rather than taken from the `tar` crate because reproducibility is the
//! whole point: every header field is chosen by us (mtime 0, numeric owners, no user or
//! group names, no PAX records), entries come sorted by path, and the result depends on
//! nothing but the entries given.

use std::collections::BTreeMap;

use crate::ImageError;

/// What a path in the archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One entry. `path` is relative (no leading `/`); directories have no trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind,
}

/// A file tree, kept sorted by path so the archive's order never depends on how it was built.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds (or replaces) an entry and every missing parent directory (root-owned, 0755).
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/').to_string();
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: Kind::Dir,
            });
        }
        self.entries.insert(path, entry);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, Entry { mode, uid: 0, gid: 0, kind: Kind::File(data) });
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) {
        self.insert(path, Entry { mode, uid, gid, kind: Kind::Dir });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry { mode: 0o777, uid: 0, gid: 0, kind: Kind::Symlink(target.to_string()) });
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_matches('/'))
    }

    /// Sum of the regular files' sizes.
    pub fn content_size(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// The ustar archive: entries in path order, then the two zero blocks.
    pub fn to_tar(&self) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::with_capacity(self.content_size() as usize + 512 * (self.entries.len() + 2));
        for (path, entry) in &self.entries {
            let (name, flag, size, link) = match &entry.kind {
                Kind::Dir => (format!("{path}/"), b'5', 0, ""),
                Kind::File(d) => (path.clone(), b'0', d.len() as u64, ""),
                Kind::Symlink(t) => (path.clone(), b'2', 0, t.as_str()),
            };
            out.extend_from_slice(&header(&name, entry, flag, size, link)?);
            if let Kind::File(d) = &entry.kind {
                out.extend_from_slice(d);
                out.resize(out.len().next_multiple_of(512), 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        Ok(out)
    }
}

/// Where each regular file of a ustar archive lies: path -> (data offset, size). Reads the
/// headers only (seeking past the data), so an archive of hundreds of MB costs a few reads.
/// Enough for the archives [`Tree::to_tar`] writes; PAX and GNU long names are not read.
pub fn index(
    file: &mut std::fs::File,
    path: &std::path::Path,
) -> Result<BTreeMap<String, (u64, u64)>, ImageError> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |reason: String| ImageError::Tar { path: path.display().to_string(), reason };
    let mut files = BTreeMap::new();
    let mut offset = 0u64;
    loop {
        let mut h = [0u8; 512];
        file.read_exact(&mut h).map_err(|e| bad(format!("header at byte {offset}: {e}")))?;
        if h.iter().all(|&b| b == 0) {
            return Ok(files);
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]).into_owned()
        };
        let size_text = field(124..136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .map_err(|_| bad(format!("header at byte {offset}: size field `{size_text}` is not octal")))?;
        let (prefix, name) = (field(345..500), field(0..100));
        let name = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if matches!(h[156], b'0' | 0) {
            files.insert(name, (offset + 512, size));
        }
        offset += 512 + size.next_multiple_of(512);
        file.seek(SeekFrom::Start(offset)).map_err(|e| bad(format!("seeking to byte {offset}: {e}")))?;
    }
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}

/// Splits a long name into ustar's prefix (155) and name (100) at a `/`.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    let trimmed = name.trim_end_matches('/');
    for (i, _) in trimmed.match_indices('/') {
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        if prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty() {
            return Some((prefix, rest));
        }
    }
    None
}

fn header(name: &str, e: &Entry, flag: u8, size: u64, link: &str) -> Result<[u8; 512], ImageError> {
    let too_long =
        |what: &str| ImageError::Tar { path: name.to_string(), reason: format!("{what} too long for ustar") };
    let (prefix, short) = split_name(name).ok_or_else(|| too_long("path"))?;
    if link.len() > 100 {
        return Err(too_long("symlink target"));
    }
    if size >= 8 << 30 {
        return Err(ImageError::Tar { path: name.to_string(), reason: "file of 8 GiB or more".into() });
    }
    let mut h = [0u8; 512];
    h[..short.len()].copy_from_slice(short.as_bytes());
    octal(&mut h[100..108], u64::from(e.mode & 0o7777));
    octal(&mut h[108..116], u64::from(e.uid));
    octal(&mut h[116..124], u64::from(e.gid));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime: fixed, so the same files give the same bytes
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is computed with its own field read as eight spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_added_and_order_is_by_path() {
        let mut t = Tree::new();
        t.file("usr/bin/b", 0o755, b"bb".to_vec());
        t.file("etc/passwd", 0o644, b"x".to_vec());
        let tar = t.to_tar().unwrap();
        let names: Vec<String> = tar
            .chunks(512)
            .filter(|b| b[257..262] == *b"ustar")
            .map(|b| String::from_utf8_lossy(&b[..100]).trim_end_matches('\0').to_string())
            .collect();
        assert_eq!(names, ["etc/", "etc/passwd", "usr/", "usr/bin/", "usr/bin/b"]);
        assert_eq!(tar.len() % 512, 0);
    }

    #[test]
    fn long_paths_use_the_prefix_field_and_impossible_ones_are_refused() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        assert_eq!(split_name(&long), Some((&long[..120], &long[121..])));
        let mut t = Tree::new();
        t.file(&"x".repeat(300), 0o644, vec![]);
        let err = t.to_tar().unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
    }
}
