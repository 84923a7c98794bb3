//! `tuna-bench upload`: the server's memory while a large file streams into the blob store.
//!
//! A release `tuna server` process (the binary beside this one) with its blob store on a real
//! S3-compatible server (moto's standalone server from PyPI, started here) receives one
//! `--size-mib` file through `tuna files upload`; its resident set is sampled every 50 ms from
//! `/proc`. The baseline, in the same run, is the same upload into the local-directory store.
//! The target is a peak under 200 MiB for a 2 GiB file: an upload holds a few multipart parts,
//! never the file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type E = String;

fn err(e: impl std::fmt::Display) -> E {
    e.to_string()
}

#[derive(clap::Args)]
pub struct UploadArgs {
    /// Size of the uploaded file.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
}

/// Kills the child when dropped, so a failed run leaves no process behind.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> Result<u16, E> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
    Ok(l.local_addr().map_err(err)?.port())
}

pub(crate) fn wait_port(port: u16, what: &str) -> Result<(), E> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// moto's S3 server with one bucket; its AWS variables.
fn start_s3() -> Result<(Proc, Vec<(String, String)>), E> {
    let port = free_port()?;
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("python3 -m moto.server: {e} (pip install 'moto[server]')"))?;
    let proc = Proc(child);
    wait_port(port, "the S3 server")?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(err)?;
    write!(
        s,
        "PUT /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).map_err(err)?;
    if !reply.starts_with("HTTP/1.1 200") {
        return Err(format!("creating the bucket failed: {reply}"));
    }
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret"),
        ("AWS_REGION", "us-east-1"),
        ("TUNA_BLOB_URL", "s3://bench/blobs"),
    ];
    Ok((
        proc,
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    ))
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A file of `mib` MiB of incompressible bytes (xorshift; deterministic).
fn make_file(path: &Path, mib: u64) -> Result<(), E> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block).map_err(err)?;
    }
    f.flush().map_err(err)
}

struct Measured {
    peak_mib: f64,
    idle_mib: f64,
    mib_per_s: f64,
}

/// One server with `env`, one upload of `file`; the server's RSS before and at its peak.
fn measure(tuna: &Path, dir: &Path, file: &Path, env: &[(String, String)]) -> Result<Measured, E> {
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("server.log")).map_err(err)?;
    let server = Proc(
        Command::new(tuna)
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(err)?,
    );
    wait_port(port, "tuna server")?;
    let pid = server.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid).unwrap_or(0);
    let started = Instant::now();
    let mut upload = Proc(
        Command::new(tuna)
            .args(["files", "upload", "--purpose", "model", "--output", "json"])
            .arg(file)
            .env("TUNA_SERVER", format!("http://127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?,
    );
    let mut peak = idle;
    loop {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        if let Some(status) = upload.0.try_wait().map_err(err)? {
            if !status.success() {
                let mut text = String::new();
                if let Some(mut e) = upload.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut text);
                }
                return Err(format!("the upload failed: {text}"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(file).map_err(err)?.len() as f64 / (1 << 20) as f64;
    drop(server);
    Ok(Measured {
        peak_mib: peak as f64 / 1024.0,
        idle_mib: idle as f64 / 1024.0,
        mib_per_s: size / secs,
    })
}

pub async fn run(a: UploadArgs) -> Result<(), E> {
    let exe = std::env::current_exe().map_err(err)?;
    let tuna: PathBuf = exe
        .parent()
        .map(|d| d.join("tuna"))
        .ok_or("no directory of tuna-bench")?;
    if !tuna.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p tuna",
            tuna.display()
        ));
    }
    let dir = tempfile::tempdir().map_err(err)?;
    let file = dir.path().join("big.bin");
    println!("writing a {} MiB file ...", a.size_mib);
    make_file(&file, a.size_mib)?;
    let (_s3, s3_env) = start_s3()?;
    let s3_dir = dir.path().join("s3");
    let local_dir = dir.path().join("local");
    std::fs::create_dir_all(&s3_dir).map_err(err)?;
    std::fs::create_dir_all(&local_dir).map_err(err)?;
    let s3 = tokio::task::block_in_place(|| measure(&tuna, &s3_dir, &file, &s3_env))?;
    let local = tokio::task::block_in_place(|| measure(&tuna, &local_dir, &file, &[]))?;
    for (name, m) in [("s3", &s3), ("local", &local)] {
        println!(
            "{name:>5}: server RSS idle {:.0} MiB, peak {:.0} MiB during the upload, {:.0} MiB/s",
            m.idle_mib, m.peak_mib, m.mib_per_s
        );
    }
    println!(
        "upload {} MiB: s3 peak RSS {:.0} MiB, local peak RSS {:.0} MiB (target < 200 MiB)",
        a.size_mib, s3.peak_mib, local.peak_mib
    );
    Ok(())
}
