//! Artifacts travel as one uncompressed tar of a directory (an adapter is two files, a
//! checkpoint a few), so one sha256 covers the whole set.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

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

/// Unpacks a tar written by [`pack_dir`] into `dir`, refusing entries that would escape it.
pub fn unpack(archive: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut ar = tar::Archive::new(File::open(archive)?);
    for entry in ar.entries()? {
        let mut entry = entry?;
        // unpack_in refuses absolute paths and `..`.
        if !entry.unpack_in(dir)? {
            return Err(std::io::Error::other(format!(
                "{}: archive entry escapes the target directory",
                archive.display()
            )));
        }
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
}
