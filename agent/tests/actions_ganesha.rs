//! The nfs-ganesha backend against a real ganesha.nfsd on loopback, read back
//! with libnfs' `nfs-cat`: export, read byte-identical, export again (no-op),
//! change (restart), find a ganesha started by an earlier agent, unexport (the
//! port stops answering), and startup failures that carry ganesha's log.
//!
//! Needs root, ganesha and libnfs-utils; without them the tests fail with the
//! command that installs them. Every test has its own directories and port,
//! and kills its ganesha on drop, also after a panic.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use understudy_agent::actions::command::find_executable;
use understudy_agent::actions::nfs::{
    ExportSpec, GaneshaBackend, GaneshaConfig, NfsBackend, NfsConfig,
};
use understudy_agent::actions::ActionError;

const INSTALL: &str = "apt-get install -y nfs-ganesha nfs-ganesha-vfs libnfs-utils";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn require_prerequisites() {
    assert!(
        is_root(),
        "the nfs-ganesha tests must run as root (ganesha binds NFS ports and exports as root)"
    );
    let missing: Vec<&str> = ["ganesha.nfsd", "nfs-cat"]
        .into_iter()
        .filter(|p| find_executable(Path::new(p)).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: install them with `{INSTALL}` (scripts/install-deps.sh does it)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills every ganesha started with this configuration file when dropped.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let conf = self.0.as_os_str().as_encoded_bytes().to_vec();
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmdline.split(|b| *b == 0).any(|a| a == conf.as_slice()) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    export_dir: PathBuf,
    cfg: GaneshaConfig,
    _reaper: Reaper,
}

fn setup() -> Setup {
    require_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let export_dir = dir.path().join("volume");
    std::fs::create_dir(&export_dir).unwrap();
    let mut cfg = GaneshaConfig::new(dir.path().join("ganesha-state"), "us-test-pair");
    cfg.bind_addr = "127.0.0.1".parse().unwrap();
    cfg.port = free_port();
    cfg.lease_lifetime_secs = 2;
    cfg.grace_period_secs = 2;
    let reaper = Reaper(cfg.config_path());
    Setup {
        _dir: dir,
        export_dir,
        cfg,
        _reaper: reaper,
    }
}

fn nfs_url(port: u16, pseudo: &str, file: &str) -> String {
    format!("nfs://127.0.0.1{pseudo}/{file}?version=4&nfsport={port}")
}

/// `nfs-cat URL`, retried for a few seconds (grace period).
fn nfs_cat(url: &str) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("nfs-cat").arg(url).output().unwrap();
        if out.status.success() {
            return Ok(out.stdout);
        }
        if Instant::now() >= deadline {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn ganesha(b: &mut NfsBackend) -> &mut GaneshaBackend {
    match b {
        NfsBackend::Ganesha(g) => g,
        other => panic!("not ganesha: {other:?}"),
    }
}

fn payload() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test]
async fn ganesha_exports_serves_and_unexports() {
    let s = setup();
    let data = payload();
    std::fs::write(s.export_dir.join("hello.bin"), &data).unwrap();
    let spec = ExportSpec::new(&s.export_dir, "/data");
    let mut b = NfsBackend::new(&NfsConfig::Ganesha(s.cfg.clone()), &spec).unwrap();
    assert!(b.exports().await.unwrap().is_empty());
    b.unexport().await.unwrap(); // nothing running: fine

    let t0 = Instant::now();
    b.export(&spec).await.unwrap();
    let started = t0.elapsed();
    let read = nfs_cat(&nfs_url(s.cfg.port, "/data", "hello.bin")).unwrap();
    let first_read = t0.elapsed();
    eprintln!("ganesha: serving after {started:?}, first NFSv4 read after {first_read:?}");
    assert!(
        read == data,
        "read {} bytes, not the {} written",
        read.len(),
        data.len()
    );
    assert_eq!(b.exports().await.unwrap(), ["/data"]);

    // NFSv4 recovery state goes to the volume.
    assert!(s
        .export_dir
        .join(".understudy/nfs-recovery/v4recov")
        .is_dir());
    // Every parameter we write is one ganesha 4.3 knows.
    let log = std::fs::read_to_string(s.cfg.log_path()).unwrap();
    for bad in [
        "Unknown parameter",
        "validation error",
        "Errors processing block",
    ] {
        assert!(!log.contains(bad), "ganesha complained ({bad}):\n{log}");
    }

    // Export again: no-op, same process.
    let pid = ganesha(&mut b).running_pid().unwrap();
    b.export(&spec).await.unwrap();
    assert_eq!(ganesha(&mut b).running_pid(), Some(pid));

    // Another export: ganesha restarts with it.
    let mut other = spec.clone();
    other.pseudo = "/other".into();
    other.export_id = 2;
    b.export(&other).await.unwrap();
    let pid2 = ganesha(&mut b).running_pid().unwrap();
    assert_ne!(pid, pid2);
    assert_eq!(b.exports().await.unwrap(), ["/other"]);
    let t1 = Instant::now();
    assert_eq!(
        nfs_cat(&nfs_url(s.cfg.port, "/other", "hello.bin")).unwrap(),
        data
    );
    // The first read's client record is in the recovery directory, so the
    // restarted ganesha holds new opens until its grace period ends.
    eprintln!(
        "ganesha: first read after a restart took {:?} (grace period {}s)",
        t1.elapsed(),
        s.cfg.grace_period_secs
    );
    let gone = Command::new("nfs-cat")
        .arg(nfs_url(s.cfg.port, "/data", "hello.bin"))
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the old export is still served");

    b.unexport().await.unwrap();
    assert!(!answers(s.cfg.port), "ganesha still answers after unexport");
    assert!(b.exports().await.unwrap().is_empty());
    assert!(ganesha(&mut b).running_pid().is_none());
    b.unexport().await.unwrap();
}

#[tokio::test]
async fn a_restarted_agent_finds_the_running_ganesha() {
    let s = setup();
    std::fs::write(s.export_dir.join("f.txt"), b"still served\n").unwrap();
    let spec = ExportSpec::new(&s.export_dir, "/vol");
    let cfg = NfsConfig::Ganesha(s.cfg.clone());
    let pid = {
        let mut first = NfsBackend::new(&cfg, &spec).unwrap();
        first.export(&spec).await.unwrap();
        ganesha(&mut first).running_pid().unwrap()
        // The agent "exits": ganesha keeps serving (S6).
    };
    assert!(answers(s.cfg.port));
    let mut second = NfsBackend::new(&cfg, &spec).unwrap();
    assert_eq!(ganesha(&mut second).running_pid(), Some(pid));
    assert_eq!(second.exports().await.unwrap(), ["/vol"]);
    second.export(&spec).await.unwrap();
    assert_eq!(
        ganesha(&mut second).running_pid(),
        Some(pid),
        "restarted instead of adopted"
    );
    assert_eq!(
        nfs_cat(&nfs_url(s.cfg.port, "/vol", "f.txt")).unwrap(),
        b"still served\n"
    );
    second.unexport().await.unwrap();
    assert!(!answers(s.cfg.port));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            st.contains(") Z")
        }
    );
}

#[tokio::test]
async fn startup_failures_carry_ganesha_log() {
    let s = setup();
    let spec = ExportSpec::new(&s.export_dir, "/data");

    // The port is taken by someone else.
    let squatter = TcpListener::bind(("127.0.0.1", s.cfg.port)).unwrap();
    let mut b = NfsBackend::new(&NfsConfig::Ganesha(s.cfg.clone()), &spec).unwrap();
    let e = b.export(&spec).await.unwrap_err();
    assert!(matches!(e, ActionError::GaneshaStart { .. }), "{e}");
    assert!(e.to_string().contains("already listens"), "{e}");
    drop(squatter);

    // An address this host does not have: ganesha cannot bind and exits.
    let mut cfg = s.cfg.clone();
    cfg.bind_addr = "198.18.255.254".parse().unwrap();
    let mut b = NfsBackend::new(&NfsConfig::Ganesha(cfg), &spec).unwrap();
    let t0 = Instant::now();
    let e = b.export(&spec).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ActionError::GaneshaStart { .. }), "{msg}");
    eprintln!("startup failure as reported:\n{msg}");
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(
        msg.contains("Cannot continue") || msg.contains("bind"),
        "no log tail in: {msg}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    assert!(b.exports().await.unwrap().is_empty());

    // A missing export directory (volume not mounted) is refused before ganesha runs.
    let missing = ExportSpec::new(s.export_dir.join("not-mounted"), "/data");
    let e = b.export(&missing).await.unwrap_err();
    assert!(matches!(e, ActionError::NotADirectory { .. }), "{e}");
}

#[tokio::test]
async fn a_frozen_ganesha_is_not_counted_as_exporting_and_export_restarts_it() {
    let s = setup();
    std::fs::write(s.export_dir.join("hello.bin"), payload()).unwrap();
    let spec = ExportSpec::new(&s.export_dir, "/data");
    let mut b = NfsBackend::new(&NfsConfig::Ganesha(s.cfg.clone()), &spec).unwrap();
    b.export(&spec).await.unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", s.cfg.port).parse().unwrap();
    understudy_agent::actions::nfs::nfs_null(addr, Duration::from_secs(2))
        .await
        .expect("a running ganesha answers the NFS NULL call");
    assert_eq!(b.exports().await.unwrap(), ["/data"]);
    let pid = ganesha(&mut b).running_pid().unwrap();
    // Frozen: the kernel still completes TCP handshakes, so a port check passes.
    let st = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // Wait until every thread is stopped (state T in /proc/PID/task/*/stat).
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .map(|st| {
                            st.rsplit(')')
                                .next()
                                .unwrap_or("")
                                .trim_start()
                                .starts_with('T')
                        })
                        .unwrap_or(true)
                })
            })
            .unwrap_or(false)
    };
    let t0 = Instant::now();
    while !stopped() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "ganesha did not stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(answers(s.cfg.port), "the kernel accepts connections for it");
    let t0 = Instant::now();
    assert!(
        b.exports().await.unwrap().is_empty(),
        "frozen ganesha counted as exporting"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let checks = ganesha(&mut b).self_checks().await;
    let c = checks.iter().find(|c| c.name == "ganesha_answers").unwrap();
    assert!(!c.ok && c.detail.contains("frozen"), "{c:?}");
    // Exporting again replaces the frozen process with one that answers.
    b.export(&spec).await.unwrap();
    let new = ganesha(&mut b).running_pid().unwrap();
    assert_ne!(new, pid);
    assert_eq!(b.exports().await.unwrap(), ["/data"]);
    assert_eq!(
        nfs_cat(&nfs_url(s.cfg.port, "/data", "hello.bin")).unwrap(),
        payload()
    );
    b.unexport().await.unwrap();
}

#[tokio::test]
async fn an_export_cut_short_mid_start_is_resumed_not_restarted() {
    // On an overloaded server ganesha has needed 12 s to open its port. The
    // controller stops waiting for an Export step after its bound and retries;
    // the retry must wait for the ganesha already starting, not take it for a
    // frozen one (it does not answer yet) and kill it: that loop never ends.
    let mut s = setup();
    let real = find_executable(Path::new("ganesha.nfsd")).unwrap();
    let slow = s.export_dir.parent().unwrap().join("slow-ganesha.nfsd");
    std::fs::write(
        &slow,
        format!("#!/bin/sh\nsleep 2\nexec {} \"$@\"\n", real.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.cfg.ganesha_nfsd = slow;
    std::fs::write(s.export_dir.join("hello.bin"), payload()).unwrap();
    let spec = ExportSpec::new(&s.export_dir, "/data");
    let mut b = NfsBackend::new(&NfsConfig::Ganesha(s.cfg.clone()), &spec).unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(700), b.export(&spec)).await;
    assert!(
        cut.is_err(),
        "the slow start finished within 700 ms: {cut:?}"
    );
    let starting = ganesha(&mut b)
        .running_pid()
        .expect("the ganesha being started is still running");
    assert!(!answers(s.cfg.port), "its port is not open yet");
    let t0 = Instant::now();
    b.export(&spec).await.unwrap();
    assert_eq!(
        ganesha(&mut b).running_pid(),
        Some(starting),
        "the ganesha that was starting was replaced"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the resumed start took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        nfs_cat(&nfs_url(s.cfg.port, "/data", "hello.bin")).unwrap(),
        payload()
    );
    // Once serving, the next export is the usual no-op.
    b.export(&spec).await.unwrap();
    assert_eq!(ganesha(&mut b).running_pid(), Some(starting));
    b.unexport().await.unwrap();
    assert!(!answers(s.cfg.port));
}
