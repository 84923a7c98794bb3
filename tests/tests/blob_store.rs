//! One suite over every blob backend: the local directory and a real S3-compatible server
//! (moto's standalone server, started by the test). Blobs become visible only once verified
//! and complete; a half-written upload leaves nothing a reader can see; the leader's collector
//! removes blobs no row names and keeps the ones that are owned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use tuna_e2e::S3Server;
use tuna_server::blobs::Blobs;
use tuna_server::domain::FilePurpose;
use tuna_server::retention::{Retention, RetentionPolicy};
use tuna_server::store::{FileRecord, QueuePolicy, Store, SystemClock};

/// Each backend under test; the S3 server lives as long as the returned guard.
fn backends(dir: &std::path::Path) -> Vec<(&'static str, Blobs, Option<S3Server>)> {
    let mut all = vec![("local", Blobs::local(&dir.join("blobs")).unwrap(), None)];
    if let Some(s3) = S3Server::start() {
        let blobs = Blobs::s3_with_env(&s3.url("tuna/blobs"), s3.env()).unwrap();
        all.push(("s3", blobs, Some(s3)));
    }
    all
}

async fn read_all(blobs: &Blobs, key: &str) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = blobs.read(key).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

#[tokio::test]
async fn a_blob_is_invisible_until_it_is_finished_and_an_abort_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, blobs, _guard) in backends(dir.path()) {
        // 12 MiB: several multipart parts are sent before the end.
        let data: Vec<u8> = (0..12 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut w = blobs.begin("files/file_a").await.unwrap();
        for chunk in data.chunks(1 << 20) {
            w.write(chunk).await.unwrap();
        }
        assert!(
            !blobs.exists("files/file_a").await.unwrap(),
            "{name}: visible before finish"
        );
        assert_eq!(blobs.count("files").await.unwrap(), 0, "{name}");
        let done = w.finish().await.unwrap();
        assert_eq!(done.size, data.len() as u64);
        assert_eq!(
            done.sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
        );
        assert_eq!(read_all(&blobs, "files/file_a").await, data, "{name}");

        // Aborted after parts were uploaded: nothing at the key, nothing listed.
        let mut w = blobs.begin("files/file_b").await.unwrap();
        for chunk in data.chunks(1 << 20) {
            w.write(chunk).await.unwrap();
        }
        w.abort().await;
        assert!(!blobs.exists("files/file_b").await.unwrap(), "{name}");
        // Dropped without finish or abort (the process died): still nothing visible.
        let mut w = blobs.begin("files/file_c").await.unwrap();
        w.write(&data).await.unwrap();
        drop(w);
        assert!(!blobs.exists("files/file_c").await.unwrap(), "{name}");
        let keys: Vec<String> = blobs
            .list("files")
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.key)
            .collect();
        assert_eq!(keys, ["files/file_a"], "{name}");

        blobs.delete("files/file_a").await.unwrap();
        blobs.delete("files/never-existed").await.unwrap();
        assert_eq!(blobs.count("files").await.unwrap(), 0, "{name}");
        blobs.ping().await.unwrap();
    }
}

#[tokio::test]
async fn orphaned_blobs_are_collected_and_owned_ones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    for (name, blobs, _guard) in backends(dir.path()) {
        let db = dir.path().join(format!("{name}.db"));
        let store: Arc<dyn Store> = tuna_server::store::open(
            &format!("sqlite://{}", db.display()),
            QueuePolicy::default(),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        for key in [
            "files/file_owned",
            "files/file_orphan",
            "artifacts/job_x/art_orphan",
        ] {
            let mut w = blobs.begin(key).await.unwrap();
            w.write(b"bytes").await.unwrap();
            w.finish().await.unwrap();
        }
        store
            .insert_file(&FileRecord {
                tenant: "default".into(),
                id: "file_owned".into(),
                name: "owned.bin".into(),
                purpose: FilePurpose::Model,
                format: None,
                size_bytes: 5,
                sha256: "0".repeat(64),
                line_count: 0,
                blob_key: "files/file_owned".into(),
                created_at: 0,
            })
            .await
            .unwrap();
        let policy = |grace| RetentionPolicy {
            job_history_max_age: None,
            prune_batch_jobs: 10,
            orphan_blob_grace: grace,
            interval: Duration::from_secs(60),
        };
        // Within the grace period nothing is touched: an upload's row may still be coming.
        let swept = Retention::new(
            store.clone(),
            blobs.clone(),
            policy(Duration::from_secs(3600)),
        )
        .sweep()
        .await
        .unwrap();
        assert_eq!(swept.orphan_blobs, 0, "{name}");
        assert_eq!(blobs.count("").await.unwrap(), 3, "{name}");
        // S3 keeps whole seconds: let the blobs age past a zero grace.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let retention = Retention::new(store.clone(), blobs.clone(), policy(Duration::ZERO));
        assert!(
            retention.round().await.unwrap().is_some(),
            "{name}: the only replica leads"
        );
        let keys: Vec<String> = blobs
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.key)
            .collect();
        assert_eq!(keys, ["files/file_owned"], "{name}");
    }
}

#[tokio::test]
async fn staging_files_of_a_crashed_local_upload_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(&dir.path().join("blobs")).unwrap();
    let mut w = blobs.begin("files/file_crash").await.unwrap();
    w.write(&vec![7u8; 6 << 20]).await.unwrap();
    // The process "dies": the writer is forgotten, its staging file stays on disk.
    std::mem::forget(w);
    let staged: Vec<_> = std::fs::read_dir(dir.path().join("blobs/files"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(staged.iter().any(|n| n.contains('#')), "{staged:?}");
    assert_eq!(blobs.count("files").await.unwrap(), 0);
    assert_eq!(
        blobs
            .remove_stale_staging(Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(blobs.remove_stale_staging(Duration::ZERO).unwrap(), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/files"))
            .unwrap()
            .count(),
        0
    );
}
