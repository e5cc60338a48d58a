//! The controller binaries' command-line contract: bad input is refused with a
//! clear message and a non-zero exit code, and changes nothing.
//! (Also makes `cargo test` build these binaries for the cluster tests.)

use std::process::Command;

#[test]
fn controller_refuses_a_bad_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "node_id = 4\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/nonexistent\"\nmembers = [ { id = 1, addr = \"127.0.0.1:1\" } ]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_understudy-controller"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node_id 4 is not one of the members"), "{err}");
    assert!(!std::path::Path::new("/nonexistent").exists());
}

#[test]
fn ctl_reports_unreachable_controllers_with_exit_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_understudyctl"))
        .args([
            "--controllers",
            &format!("127.0.0.1:{port}"),
            "--timeout-ms",
            "500",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no controller answered"), "{err}");
}
