//! The controller binaries' command-line contract: bad input is refused with a
//! clear message and a non-zero exit code, and changes nothing.
//! (Also makes `cargo test` build these binaries for the cluster tests.)

use std::process::Command;

#[test]
fn controller_refuses_a_bad_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let text = "node_id = 4\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/nonexistent\"\nmembers = [ { id = 1, addr = \"127.0.0.1:1\" } ]\n";
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_understudy-controller"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = run(&format!("{text}[tls]\ninsecure = true\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node_id 4 is not one of the members"), "{err}");
    // No [tls] at all: TLS or insecure must be chosen explicitly.
    let out = run(&text.replace("node_id = 4", "node_id = 1"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no [tls] section") && err.contains("insecure = true"),
        "{err}"
    );
    // Unreadable certificate files are named before anything starts.
    let out = run(&format!(
        "{}[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/c.key\"\n",
        text.replace("node_id = 4", "node_id = 1")
    ));
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the TLS CA certificate /nonexistent/ca.pem"),
        "{err}"
    );
    assert!(!std::path::Path::new("/nonexistent").exists());
}

#[test]
fn ctl_reports_unreachable_controllers_with_exit_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ctl = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_understudyctl"))
            .args([
                "--controllers",
                &format!("127.0.0.1:{port}"),
                "--timeout-ms",
                "500",
            ])
            .args(extra)
            .arg("status")
            .env_remove("UNDERSTUDY_CA")
            .env_remove("UNDERSTUDY_CERT")
            .env_remove("UNDERSTUDY_KEY")
            .env_remove("UNDERSTUDY_INSECURE")
            .output()
            .unwrap()
    };
    let out = ctl(&["--insecure"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no controller answered"), "{err}");
    // With TLS credentials (a fresh CA and operator) too: 1, not 7.
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().display().to_string();
    for args in [
        vec!["certs", "init", "--dir", &pki],
        vec![
            "certs",
            "issue",
            "--dir",
            &pki,
            "--operator",
            "op",
            "--role",
            "viewer",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_understudyctl"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let f = |n: &str| dir.path().join(n).display().to_string();
    let out = ctl(&[
        "--ca",
        &f("ca.pem"),
        "--cert",
        &f("operator-op.pem"),
        "--key",
        &f("operator-op.key"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    // Neither credentials nor --insecure: bad usage, saying what to pass.
    let out = ctl(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pass --ca, --cert and --key"), "{err}");
}

/// A controller process, killed when the test ends, failed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `understudyctl status` reads an answer larger than tonic's default 4 MB:
/// at 10 000 pairs (about 5.5 MB) it used to fail with "decoded message
/// length too large".
#[test]
fn ctl_reads_the_status_of_ten_thousand_pairs() {
    const PAIRS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut text = format!(
        "node_id = 1\nlisten = \"{addr}\"\ndata_dir = \"{}\"\nmembers = [ {{ id = 1, addr = \"{addr}\" }} ]\n[tls]\ninsecure = true\n",
        dir.path().join("data").display()
    );
    for i in 0..PAIRS {
        text.push_str(&format!(
            "\n[[pairs]]\nid = \"p{i:05}\"\nresource = \"r0\"\nclient_ip = \"198.18.{}.{}\"\nzone = \"z\"\nprimary = {{ id = \"p{i:05}-a\", address = \"198.19.{}.{}\", zone = \"z\" }}\nbackup = {{ id = \"p{i:05}-b\", address = \"198.19.{}.{}\", zone = \"z\" }}\n",
            i / 250,
            i % 250 + 1,
            i / 125,
            i % 125 * 2 + 1,
            i / 125,
            i % 125 * 2 + 2,
        ));
    }
    let cfg = dir.path().join("controller.toml");
    std::fs::write(&cfg, text).unwrap();
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let _controller = Killed(
        Command::new(env!("CARGO_BIN_EXE_understudy-controller"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_understudyctl"))
            .args([
                "--controllers",
                &addr,
                "--insecure",
                "--timeout-ms",
                "10000",
            ])
            .args(["--output", "json", "status"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("too large"), "{err}");
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let n = v["pairs"].as_array().map_or(0, |p| p.len());
            if n == PAIRS {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no status of {PAIRS} pairs within 120 s: {err}; log in {}",
            dir.path().display()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
