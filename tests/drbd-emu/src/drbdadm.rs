//! `drbdadm` command line (the subset an HA agent uses).
//!
//! ```text
//! drbdadm up|down|adjust RES
//! drbdadm primary [--force] RES        drbdadm secondary RES
//! drbdadm connect [--discard-my-data] RES    drbdadm disconnect RES
//! drbdadm outdate RES                  drbdadm create-md [--force] RES
//! drbdadm resume-io RES
//! drbdadm status [RES] [--verbose] [--statistics]
//! drbdadm role|cstate|dstate RES
//! ```
//!
//! `RES` must be the configured resource (or `all`), otherwise
//! `'RES' not defined in your config (for this host).` / exit 10. Failures
//! print the daemon's ("kernel's") message followed by drbdadm's
//! `Command 'drbdsetup ...' terminated with exit code N`, and exit with N
//! (11 for a refused state change, 10 for an unknown/absent resource).
//! `up`/`adjust` without a running daemon: `Could not connect to 'drbd'
//! generic netlink family`, exit 20. `create-md` works without a daemon
//! (it writes the metadata file directly, like drbdmeta).

use std::os::unix::io::AsRawFd;

use crate::config::Config;
use crate::ctl::{self, Request};
use crate::daemon::CREATE_MD_OUTPUT;
use crate::drbdsetup::{self, Args};
use crate::format::{self, StatusOpts};
use crate::meta::Meta;
use crate::model::ConnState;

const COMMANDS: &str = "up, down, adjust, primary, secondary, connect, disconnect, outdate, resume-io, create-md, status, role, cstate, dstate";

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

/// `drbdadm adjust`: bring the resource to its configured state (up and
/// connecting), doing nothing where it already is.
fn adjust(cfg: &Config) -> i32 {
    let snap = match drbdsetup::snapshot(cfg, &cfg.resource) {
        Ok(s) => s,
        Err(_) => {
            eprintln!("Could not connect to 'drbd' generic netlink family");
            return 20;
        }
    };
    let req = match snap {
        None => Request::Up,
        Some(s) if s.connection.connection == ConnState::StandAlone => Request::Connect {
            discard_my_data: false,
        },
        Some(_) => return 0,
    };
    match ctl::call(cfg, &req) {
        Some(r) => drbdsetup::emit(&r),
        None => drbdsetup::no_such_resource(&cfg.resource),
    }
}

/// `create-md` without a daemon: write fresh metadata (like drbdmeta).
fn create_md_offline(cfg: &Config) -> i32 {
    if let Err(e) = std::fs::create_dir_all(&cfg.state_dir) {
        eprintln!("drbdmeta: cannot create {}: {e}", cfg.state_dir.display());
        return 20;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cfg.lock_path());
    let Ok(lock) = lock else {
        eprintln!("drbdmeta: cannot open {}", cfg.lock_path().display());
        return 20;
    };
    // SAFETY: flock on a valid, owned file descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("Device '{}' is configured!", cfg.minor);
        return 20;
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
