//! The client's safe artifact unpacker (`tuna_client::pack::unpack`) on arbitrary bytes as
//! a tar file.
//!
//! Checks: no panic; whatever the archive holds, nothing is created outside the target
//! folder (its parent ends up holding the archive and, on success only, the target); a
//! refused archive leaves no target behind; an accepted one produced only regular files
//! with plain names (no folders, no symlinks, no hard links, no modes beyond 0644).
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("tempdir");
    let archive = root.path().join("in.tar");
    std::fs::write(&archive, data).expect("write archive");
    let target = root.path().join("out");
    let result = tuna_client::pack::unpack(&archive, &target);
    match &result {
        Ok(()) => assert_eq!(names(root.path()), ["in.tar", "out"], "left behind"),
        Err(_) => assert_eq!(names(root.path()), ["in.tar"], "a refused archive left output"),
    }
    if result.is_ok() {
        let mut count = 0;
        for e in std::fs::read_dir(&target).expect("read target") {
            let e = e.expect("entry");
            let meta = std::fs::symlink_metadata(e.path()).expect("metadata");
            assert!(meta.file_type().is_file(), "{:?} is not a regular file", e.path());
            assert_eq!(meta.nlink(), 1, "{:?} is hard-linked", e.path());
            assert_eq!(meta.mode() & 0o7133, 0, "{:?} has mode {:o}", e.path(), meta.mode());
            let name = e.file_name();
            let name = name.to_str().expect("UTF-8 name");
            assert!(
                !name.starts_with('.')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
                "unsafe name {name:?}"
            );
            count += 1;
        }
        assert!(count <= tuna_client::pack::UnpackLimits::default().max_entries);
    }
    let meta = std::fs::symlink_metadata(&archive).expect("archive still there");
    assert!(meta.file_type().is_file(), "the archive was replaced");
});
