//! TLS served by `tuna server` itself, with certificates made by the `openssl` command line:
//! a client holding the CA connects (gRPC through the CLI, the JSON API through curl, the
//! embedded worker), one without it or speaking plain HTTP is refused, and a public address
//! with credentials but without TLS refuses to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tuna_e2e::{free_port, tuna_bin};

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tuna test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(url: &str, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(tuna_bin());
    cmd.args(["--server", url])
        .args(args)
        .env_remove("TUNA_API_KEY")
        .env_remove("TUNA_CA_FILE");
    if let Some(ca) = ca {
        cmd.arg("--ca-file").arg(ca);
    }
    cmd.output().unwrap()
}

#[test]
fn clients_with_the_ca_connect_over_tls_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let _server = Server(
        Command::new(tuna_bin())
            .args([
                "server",
                "--listen",
                &listen,
                "--embedded-worker",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            // The in-process worker verifies its own server like any client.
            .env("TUNA_CA_FILE", &ca)
            .env_remove("TUNA_API_KEY")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let https = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(&https, Some(&ca), &["jobs", "list"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS connection: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without the private CA (system roots only) the certificate is not trusted.
    let out = cli(&https, None, &["jobs", "list"]);
    assert!(!out.status.success());
    // Plain HTTP/2 to a TLS port fails too.
    let out = cli(&format!("http://127.0.0.1:{port}"), None, &["jobs", "list"]);
    assert!(!out.status.success());
    // A CA file for a plain http:// URL is a usage error, not a silent downgrade.
    let out = cli(
        &format!("http://127.0.0.1:{port}"),
        Some(&ca),
        &["jobs", "list"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("https://"));

    // The JSON API and the dashboard share the TLS port: curl with the CA, and without it.
    let curl = |cacert: Option<&Path>, path: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(ca) = cacert {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.arg(format!("{https}{path}")).output().unwrap()
    };
    let out = curl(Some(&ca), "/api/tuna.v1.JobService/ListJobs?pageSize=1");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let out = curl(Some(&ca), "/");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let out = curl(None, "/api/openapi.json");
    assert!(!out.status.success(), "curl trusted an unknown CA");

    // The embedded worker registered over TLS with the CA.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .arg(format!("{https}/api/tuna.v1.FleetService/ListWorkers"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"in-process\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the embedded worker did not register"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_public_address_serves_with_tls_and_credentials_and_refuses_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let server = |tls: bool| {
        let mut cmd = Command::new(tuna_bin());
        cmd.args(["server", "--listen", &listen, "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--api-key", "k3y"])
            .env("TUNA_WORKER_TOKEN", "t0ken")
            .env_remove("TUNA_INSECURE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if tls {
            cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
        }
        cmd
    };
    let out = server(false).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without TLS"), "{stderr}");

    let _server = Server(server(true).stderr(Stdio::null()).spawn().unwrap());
    let https = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(&https, Some(&ca), &["--api-key", "k3y", "jobs", "list"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = cli(&https, Some(&ca), &["jobs", "list"]);
    assert!(!out.status.success(), "no key, yet served");
}
