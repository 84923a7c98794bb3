//! Artifacts travel as one uncompressed tar of a directory (an adapter is two files, a
//! checkpoint a few), so one sha256 covers the whole set.
//!
//! An artifact is written by a worker, so unpacking treats it as hostile: only flat regular
//! files with plain names are accepted, written 0644 into a fresh folder, within a bounded
//! count and size, and a refused archive leaves nothing behind.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Packs the regular files directly inside `dir` (sorted, so the archive is reproducible)
/// into `out`.
pub fn pack_dir(dir: &Path, out: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let file = BufWriter::new(File::create(out)?);
    let mut builder = tar::Builder::new(file);
    builder.mode(tar::HeaderMode::Deterministic);
    for name in names {
        builder.append_path_with_name(dir.join(&name), &name)?;
    }
    builder.into_inner()?.flush()
}

/// What one unpack may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most files (an adapter has two, a checkpoint three or four).
    pub max_entries: usize,
    /// Most bytes of all files together.
    pub max_total_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_entries: 64,
            // Above the server's default upload cap (10 GiB), with room for a raised one.
            max_total_bytes: 64 << 30,
        }
    }
}

/// Why an artifact was not unpacked. Nothing was written into the target when this is
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: exists and is not an empty folder; artifacts unpack into a fresh folder")]
    TargetExists(String),
    #[error("archive entry {entry:?} refused: {reason}")]
    Refused { entry: String, reason: String },
    #[error("the archive has more than {0} files")]
    TooManyEntries(usize),
    #[error("the archive's files exceed {0} bytes in all")]
    TooLarge(u64),
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A plain file name: 1..=128 ASCII letters, digits, `_`, `-`, `.`, not starting with `.`.
/// This rules out `..`, absolute paths, subfolders, hidden files, control and bidi
/// characters at once.
fn safe_name(raw: &[u8]) -> Result<&str, String> {
    let name = std::str::from_utf8(raw).map_err(|_| "the name is not UTF-8".to_string())?;
    if name.is_empty() || name.len() > 128 {
        return Err("a name is 1 to 128 characters".into());
    }
    if name.starts_with('.') {
        return Err("names may not start with '.'".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err("only plain file names (letters, digits, _ - .) in one flat folder".into());
    }
    Ok(name)
}

/// Unpacks a tar written by [`pack_dir`] into the folder `dir`, which must not exist or be
/// empty, with the default [`UnpackLimits`].
pub fn unpack(archive: &Path, dir: &Path) -> Result<(), UnpackError> {
    unpack_with(archive, dir, UnpackLimits::default())
}

/// [`unpack`] with explicit limits. The files are written into a temporary folder beside
/// `dir` that is renamed to `dir` only once every entry passed, so a refused archive leaves
/// no partial output; no entry can name anything outside that folder.
pub fn unpack_with(archive: &Path, dir: &Path, limits: UnpackLimits) -> Result<(), UnpackError> {
    let existing_empty = match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mut entries = std::fs::read_dir(dir).map_err(io_at(dir))?;
            if entries.next().is_some() {
                return Err(UnpackError::TargetExists(dir.display().to_string()));
            }
            true
        }
        Ok(_) => return Err(UnpackError::TargetExists(dir.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_at(dir)(e)),
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_at(&parent))?;
    // Removed on drop, so every early return below cleans up.
    let staging = tempfile::Builder::new()
        .prefix(".tuna-unpack-")
        .tempdir_in(&parent)
        .map_err(io_at(&parent))?;
    extract(archive, staging.path(), limits)?;
    if existing_empty {
        std::fs::remove_dir(dir).map_err(io_at(dir))?;
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(io_at(dir)(e));
    }
    Ok(())
}

/// Writes every entry of `archive` into the empty folder `into`, checking each.
fn extract(archive: &Path, into: &Path, limits: UnpackLimits) -> Result<(), UnpackError> {
    let file = File::open(archive).map_err(io_at(archive))?;
    let mut ar = tar::Archive::new(file);
    let mut count = 0usize;
    let mut total = 0u64;
    for entry in ar.entries().map_err(io_at(archive))? {
        let mut entry = entry.map_err(io_at(archive))?;
        let raw = entry.path_bytes().into_owned();
        let shown: String = String::from_utf8_lossy(&raw).chars().take(128).collect();
        let refused = |reason: &str| UnpackError::Refused {
            entry: shown.clone(),
            reason: reason.to_string(),
        };
        let kind = entry.header().entry_type();
        if !matches!(kind, tar::EntryType::Regular) {
            return Err(refused(&format!(
                "only regular files are accepted, not {kind:?}"
            )));
        }
        let name = safe_name(&raw).map_err(|r| refused(&r))?;
        count += 1;
        if count > limits.max_entries {
            return Err(UnpackError::TooManyEntries(limits.max_entries));
        }
        let size = entry.header().size().map_err(io_at(archive))?;
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(UnpackError::TooLarge(limits.max_total_bytes));
        }
        let path = into.join(name);
        let mut options = std::fs::OpenOptions::new();
        // create_new: a second entry of the same name is refused, never an overwrite.
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let out = options.open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                refused("the name appears twice")
            } else {
                io_at(&path)(e)
            }
        })?;
        let mut out = BufWriter::new(out);
        // Never more than the header declared, whatever the reader yields.
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(io_at(&path))?;
        if copied != size {
            return Err(refused("the archive ends inside this file"));
        }
        out.flush().map_err(io_at(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_round_trips_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("adapter");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("adapter_config.json"), b"{\"r\": 8}").unwrap();
        std::fs::write(src.join("adapter_model.safetensors"), vec![7u8; 10_000]).unwrap();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        pack_dir(&src, &a).unwrap();
        pack_dir(&src, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let out = dir.path().join("out");
        unpack(&a, &out).unwrap();
        assert_eq!(
            std::fs::read(out.join("adapter_config.json")).unwrap(),
            b"{\"r\": 8}"
        );
        assert_eq!(
            std::fs::read(out.join("adapter_model.safetensors"))
                .unwrap()
                .len(),
            10_000
        );
    }

    /// One crafted tar entry: any raw name (no validation), type, mode and body.
    #[derive(Clone, Copy)]
    struct Raw<'a> {
        name: &'a [u8],
        kind: tar::EntryType,
        mode: u32,
        link: &'a [u8],
        body: &'a [u8],
    }

    fn file(name: &[u8]) -> Raw<'_> {
        Raw {
            name,
            kind: tar::EntryType::Regular,
            mode: 0o644,
            link: b"",
            body: b"pwned",
        }
    }

    /// Writes `entries` as a tar the way an attacker would: names and link targets go into
    /// the header bytes unchecked.
    fn craft(path: &Path, entries: &[Raw<'_>]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..e.name.len()].copy_from_slice(e.name);
                gnu.linkname[..e.link.len()].copy_from_slice(e.link);
            }
            h.set_entry_type(e.kind);
            h.set_mode(e.mode);
            h.set_size(e.body.len() as u64);
            h.set_cksum();
            b.append(&h, e.body).unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
    }

    /// Every file below `root`, relative, sorted (what an unpack left anywhere).
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn artifact_unpack_accepts_only_flat_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, b"keep").unwrap();
        let abs = format!("{}/abs.txt", dir.path().display());
        let good = file(b"adapter_config.json");
        let bidi = "evil\u{202e}txt.sh";
        let cases: Vec<(&str, Vec<Raw<'_>>)> = vec![
            ("parent escape", vec![file(b"../outside.txt")]),
            ("nested parent escape", vec![file(b"x/../../planted")]),
            ("absolute path", vec![file(abs.as_bytes())]),
            ("subfolder", vec![file(b"sub/run.sh")]),
            ("hidden file", vec![file(b".bashrc")]),
            ("dot", vec![file(b".")]),
            ("bidi control", vec![file(bidi.as_bytes())]),
            ("backslash", vec![file(b"a\\b")]),
            ("empty name", vec![file(b"")]),
            (
                "symlink out",
                vec![Raw {
                    kind: tar::EntryType::Symlink,
                    link: abs.as_bytes(),
                    body: b"",
                    ..file(b"link")
                }],
            ),
            (
                "hardlink",
                vec![
                    file(b"a"),
                    Raw {
                        kind: tar::EntryType::Link,
                        link: b"a",
                        body: b"",
                        ..file(b"b")
                    },
                ],
            ),
            (
                "directory",
                vec![Raw {
                    kind: tar::EntryType::Directory,
                    body: b"",
                    ..file(b"sub")
                }],
            ),
            (
                "char device",
                vec![Raw {
                    kind: tar::EntryType::Char,
                    body: b"",
                    ..file(b"tty")
                }],
            ),
            (
                "fifo",
                vec![Raw {
                    kind: tar::EntryType::Fifo,
                    body: b"",
                    ..file(b"pipe")
                }],
            ),
            (
                "sparse",
                vec![Raw {
                    kind: tar::EntryType::GNUSparse,
                    ..file(b"sparse")
                }],
            ),
            ("duplicate name", vec![file(b"a"), file(b"a")]),
        ];
        for (what, entries) in cases {
            // A good file first, so a refusal after some output is exercised too.
            let mut all = vec![good];
            all.extend(entries);
            let tar = dir.path().join("crafted.tar");
            craft(&tar, &all);
            let target = dir.path().join("target");
            let err = unpack(&tar, &target).expect_err(what);
            assert!(
                matches!(err, UnpackError::Refused { .. } | UnpackError::Io { .. }),
                "{what}: {err}"
            );
            assert_eq!(
                tree(dir.path()),
                ["crafted.tar", "outside.txt"],
                "{what}: something was left behind"
            );
            assert_eq!(std::fs::read(&outside).unwrap(), b"keep", "{what}");
            std::fs::remove_file(&tar).unwrap();
        }
    }

    #[test]
    fn artifact_files_are_written_0644_whatever_the_archive_says() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("a.tar");
        craft(
            &tar,
            &[Raw {
                mode: 0o6777,
                ..file(b"run.sh")
            }],
        );
        let out = dir.path().join("out");
        unpack(&tar, &out).unwrap();
        assert_eq!(std::fs::read(out.join("run.sh")).unwrap(), b"pwned");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("run.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o7133,
                0,
                "no exec, setuid, setgid or group/other write: {mode:o}"
            );
        }
    }

    #[test]
    fn artifact_unpack_never_writes_into_an_existing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("adapter_config.json"), b"new").unwrap();
        let tar = dir.path().join("a.tar");
        pack_dir(&src, &tar).unwrap();
        // A folder with files in it is refused and left as it was.
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join("adapter_config.json"), b"old").unwrap();
        let err = unpack(&tar, &home).unwrap_err();
        assert!(matches!(err, UnpackError::TargetExists(_)), "{err}");
        assert_eq!(
            std::fs::read(home.join("adapter_config.json")).unwrap(),
            b"old"
        );
        // So is a file, and a symlink to a folder.
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            unpack(&tar, &f).unwrap_err(),
            UnpackError::TargetExists(_)
        ));
        #[cfg(unix)]
        {
            let empty = dir.path().join("empty-elsewhere");
            std::fs::create_dir(&empty).unwrap();
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&empty, &link).unwrap();
            assert!(matches!(
                unpack(&tar, &link).unwrap_err(),
                UnpackError::TargetExists(_)
            ));
            assert!(tree(&empty).is_empty());
        }
        // An empty folder is fine (and a missing one is created).
        let empty = dir.path().join("fresh");
        std::fs::create_dir(&empty).unwrap();
        unpack(&tar, &empty).unwrap();
        assert_eq!(
            std::fs::read(empty.join("adapter_config.json")).unwrap(),
            b"new"
        );
        unpack(&tar, &dir.path().join("a/b/c")).unwrap();
        assert!(dir.path().join("a/b/c/adapter_config.json").is_file());
    }

    #[test]
    fn artifact_unpack_bounds_entry_count_and_total_size() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        let entries: Vec<Raw<'_>> = names.iter().map(|n| file(n.as_bytes())).collect();
        let tar = dir.path().join("many.tar");
        craft(&tar, &entries);
        let limits = UnpackLimits {
            max_entries: 4,
            max_total_bytes: 1 << 20,
        };
        let err = unpack_with(&tar, &dir.path().join("out"), limits).unwrap_err();
        assert!(matches!(err, UnpackError::TooManyEntries(4)), "{err}");
        let limits = UnpackLimits {
            max_entries: 64,
            max_total_bytes: 24,
        };
        // 5 files of 5 bytes: 25 > 24.
        let err = unpack_with(&tar, &dir.path().join("out"), limits).unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge(24)), "{err}");
        assert_eq!(tree(dir.path()), ["many.tar"]);
        let limits = UnpackLimits {
            max_entries: 5,
            max_total_bytes: 25,
        };
        unpack_with(&tar, &dir.path().join("out"), limits).unwrap();
        assert_eq!(tree(&dir.path().join("out")).len(), 5);
    }
}
