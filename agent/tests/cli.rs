//! The agent binary's command-line contract: a bad configuration is refused with a
//! clear message and exit code 2. (Also makes `cargo test` build the binary for
//! the cluster tests.)

use std::process::Command;

#[test]
fn agent_refuses_a_bad_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(&cfg, "server_id = \"x\"\npair_id = \"p\"\nrole = \"primary\"\ncontrollers = []\nstate_dir = \"/tmp/x\"\n[drbd]\nresource = \"r0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_understudy-agent"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("controllers is empty"), "{err}");
}

#[test]
fn agent_refuses_a_config_without_tls_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(&cfg, "server_id = \"x\"\npair_id = \"p\"\nrole = \"primary\"\ncontrollers = [\"127.0.0.1:1\"]\nstate_dir = \"/nonexistent/x\"\n[drbd]\nresource = \"r0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_understudy-agent"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no [tls] section") && err.contains("insecure = true"),
        "{err}"
    );
    assert!(!std::path::Path::new("/nonexistent").exists());
}
