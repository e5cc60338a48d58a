//! `drbdadm` command line (the subset an HA agent uses).
//!
//! ```text
//! drbdadm up|down|adjust RES
//! drbdadm primary [--force] RES        drbdadm secondary RES
//! drbdadm connect [--discard-my-data] RES    drbdadm disconnect RES
//! drbdadm outdate RES                  drbdadm create-md [--force] RES
//! drbdadm resume-io RES              drbdadm attach RES
//! drbdadm status [RES] [--verbose] [--statistics]
//! drbdadm role|cstate|dstate RES
//! ```
//!
//! `RES` must be the configured resource (or `all`), otherwise
//! `'RES' not defined in your config (for this host).` / exit 10. Failures
//! print the daemon's ("kernel's") message followed by drbdadm's
//! `Command 'drbdsetup ...' terminated with exit code N`, and exit with N
//! (11 for a refused state change, 10 for an unknown/absent resource).
//! `up`/`adjust` without a running daemon start it first, like the
//! kernel module's autoload on first use (see [`autoload`]); only if that
//! fails: `Could not connect to 'drbd' generic netlink family`, exit 20.
//! `adjust` has the daemon re-read the config file and apply it
//! (`Request::Adjust`: a changed peer is switched to). `create-md` works
//! without a daemon (it writes the metadata directly, like drbdmeta).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ctl::{self, Request};
use crate::daemon::CREATE_MD_OUTPUT;
use crate::drbdsetup::{self, Args};
use crate::format::{self, StatusOpts};
use crate::meta::Meta;

const COMMANDS: &str = "up, down, adjust, attach, primary, secondary, connect, disconnect, outdate, resume-io, create-md, status, role, cstate, dstate";

/// Entry point; returns the exit code.
pub fn main(cfg: Result<Config, String>, args: &[String]) -> i32 {
    let a = Args::parse(args);
    let Some(cmd) = a.pos.first().cloned() else {
        eprintln!("USAGE: drbdadm COMMAND [OPTION...] {{all|RESOURCE...}}\n(drbd-emu emulates: {COMMANDS})");
        return 20;
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 20;
        }
    };
    let res = a.pos.get(1).cloned();
    if let Some(r) = &res {
        if r != &cfg.resource && r != "all" {
            eprintln!("'{r}' not defined in your config (for this host).");
            return 10;
        }
    }
    let r = cfg.resource.clone();
    if cmd == "status" {
        let snap = match drbdsetup::snapshot(&cfg, &r) {
            Ok(s) => s,
            Err(code) => {
                eprintln!("Command 'drbdsetup status {r}' terminated with exit code {code}");
                return code;
            }
        };
        return match snap {
            Some(s) => {
                let o = StatusOpts {
                    verbose: a.has(&["--verbose", "-v"]),
                    statistics: a.has(&["--statistics", "-s"]),
                };
                print!("{}", format::status_text(&s, o));
                0
            }
            None => {
                eprintln!("{r}: No such resource");
                eprintln!("Command 'drbdsetup status {r}' terminated with exit code 10");
                10
            }
        };
    }
    if res.is_none() {
        eprintln!("drbdadm: No resource names specified!");
        return 20;
    }
    if cmd == "up" && ctl::connect(&cfg).is_none() {
        if let Err(code) = autoload(&cfg) {
            return code;
        }
        // a daemon with `auto_up = true` brought the resource up itself
        if matches!(drbdsetup::snapshot(&cfg, &r), Ok(Some(_))) {
            return 0;
        }
    }
    let minor = cfg.minor;
    let peer = cfg.peer.node_id;
    let (req, setup_cmd) = match cmd.as_str() {
        "up" => (Request::Up, format!("drbdsetup new-minor {r} {minor} 0")),
        "down" => (Request::Down, format!("drbdsetup down {r}")),
        "primary" => (
            Request::Primary {
                force: a.has(&["--force", "--overwrite-data-of-peer"]),
            },
            format!("drbdsetup primary {r}"),
        ),
        "secondary" => (Request::Secondary, format!("drbdsetup secondary {r}")),
        "connect" => (
            Request::Connect {
                discard_my_data: a.has(&["--discard-my-data"]),
            },
            format!("drbdsetup connect {r} {peer}"),
        ),
        "disconnect" => (
            Request::Disconnect,
            format!("drbdsetup disconnect {r} {peer}"),
        ),
        "outdate" => (Request::Outdate, format!("drbdsetup outdate {minor}")),
        "resume-io" => (Request::ResumeIo, format!("drbdsetup resume-io {minor}")),
        "attach" => (
            Request::Attach,
            format!(
                "drbdsetup attach {minor} {} {} internal",
                cfg.backing_dev().display(),
                cfg.backing_dev().display()
            ),
        ),
        "create-md" => (Request::CreateMd, String::new()),
        "adjust" => return adjust(&cfg),
        "role" | "cstate" | "dstate" => {
            return match drbdsetup::snapshot(&cfg, &r) {
                Ok(Some(s)) => {
                    match cmd.as_str() {
                        "role" => println!("{}", s.role),
                        "cstate" => println!("{}", s.connection.connection),
                        _ => println!("{}/{}", s.device.disk, s.peer_device.peer_disk),
                    }
                    0
                }
                Ok(None) => drbdsetup::no_such_resource(&r),
                Err(c) => c,
            }
        }
        other => {
            eprintln!("drbdadm: Unknown command '{other}' (drbd-emu emulates: {COMMANDS})");
            return 20;
        }
    };
    match ctl::call(&cfg, &req) {
        Some(resp) => {
            let code = drbdsetup::emit(&resp);
            if code != 0 && !setup_cmd.is_empty() {
                eprintln!("Command '{setup_cmd}' terminated with exit code {code}");
            }
            code
        }
        None => match cmd.as_str() {
            "down" => 0,
            "create-md" => create_md_offline(&cfg),
            "up" => {
                eprintln!("Could not connect to 'drbd' generic netlink family");
                eprintln!(
                    "(drbd-emu: no daemon for {}; start `drbd-emu daemon --config ...`)",
                    cfg.state_dir.display()
                );
                20
            }
            _ => {
                eprintln!("{r}: No such resource");
                eprintln!("Command '{setup_cmd}' terminated with exit code 10");
                10
            }
        },
    }
}

/// `drbdadm adjust`: the daemon re-reads the config file and brings the
/// resource to it (up if down, a changed peer switched to, connect if
/// StandAlone, else nothing). Starts the daemon first if none runs.
fn adjust(cfg: &Config) -> i32 {
    if ctl::connect(cfg).is_none() {
        if let Err(code) = autoload(cfg) {
            return code;
        }
    }
    match ctl::call(cfg, &Request::Adjust) {
        Some(r) => drbdsetup::emit(&r),
        None => drbdsetup::no_such_resource(&cfg.resource),
    }
}

/// How long [`autoload`] waits for the new daemon's control socket.
const AUTOLOAD_WAIT: Duration = Duration::from_secs(10);

/// "Module autoload": no daemon answers for this host, so start one as
/// `modprobe drbd` would load the module on first use: `drbd-emu daemon
/// --config CONFIG` (this executable), detached in a session of its own,
/// stdin `/dev/null`, stdout and stderr appended to `STATE_DIR/daemon.log`;
/// then wait (at most 10 s) until its control socket answers. A daemon
/// with `auto_up = false` stays down until the command (`up`/`adjust`)
/// brings the resource up. Two CLIs racing here are harmless: the second
/// daemon finds the lock taken and exits, both CLIs talk to the first.
fn autoload(cfg: &Config) -> Result<(), i32> {
    let fail = |msg: String| {
        eprintln!("Could not connect to 'drbd' generic netlink family");
        eprintln!("(drbd-emu: {msg})");
        Err(20)
    };
    let log_path = cfg.daemon_log_path();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return fail(format!(
                "cannot find the drbd-emu executable to start the daemon: {e}"
            ))
        }
    };
    if let Err(e) = std::fs::create_dir_all(&cfg.state_dir) {
        return fail(format!("cannot create {}: {e}", cfg.state_dir.display()));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path);
    let (out, err) = match log.and_then(|l| Ok((l.try_clone()?, l))) {
        Ok(pair) => pair,
        Err(e) => return fail(format!("cannot open {}: {e}", log_path.display())),
    };
    let mut cmd = std::process::Command::new(&exe);
    {
        use std::os::unix::process::CommandExt;
        // argv[0] "drbd-emu": the subcommand decides, whatever the file is named
        cmd.arg0("drbd-emu");
        // SAFETY: setsid(2) is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.arg("daemon")
        .arg("--config")
        .arg(&cfg.path)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {} daemon: {e}", exe.display())),
    };
    let deadline = Instant::now() + AUTOLOAD_WAIT;
    loop {
        if ctl::call(cfg, &Request::Snapshot).is_some() {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            // another CLI's daemon may have won the race for the lock
            if ctl::call(cfg, &Request::Snapshot).is_some() {
                return Ok(());
            }
            return fail(format!(
                "the emulator daemon exited ({st}) before answering; see {}{}",
                log_path.display(),
                log_tail(&log_path)
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return fail(format!(
                "the emulator daemon did not answer within {} s (killed); see {}{}",
                AUTOLOAD_WAIT.as_secs(),
                log_path.display(),
                log_tail(&log_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log, for an error message.
fn log_tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

/// `create-md` without a daemon: write fresh metadata (like drbdmeta).
fn create_md_offline(cfg: &Config) -> i32 {
    let meta_dir = cfg.meta_dir();
    for d in [&cfg.state_dir, &meta_dir] {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!("drbdmeta: cannot create {}: {e}", d.display());
            return 20;
        }
    }
    let mut locks = vec![cfg.lock_path()];
    locks.extend(cfg.meta_lock_path());
    let mut held = Vec::new();
    for l in &locks {
        match crate::daemon::lock_exclusive(l) {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                eprintln!("Device '{}' is configured!", cfg.minor);
                return 20;
            }
            Err(e) => {
                eprintln!("drbdmeta: cannot lock {}: {e}", l.display());
                return 20;
            }
        }
    }
    // "initializing bitmap to all zero": a missing bitmap is an empty one
    match std::fs::remove_file(cfg.bitmap_path()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            eprintln!("drbdmeta: removing {}: {e}", cfg.bitmap_path().display());
            return 20;
        }
    }
    match Meta::fresh().store(&cfg.meta_path()) {
        Ok(()) => {
            print!("{CREATE_MD_OUTPUT}");
            0
        }
        Err(e) => {
            eprintln!("drbdmeta: writing {}: {e}", cfg.meta_path().display());
            20
        }
    }
}
