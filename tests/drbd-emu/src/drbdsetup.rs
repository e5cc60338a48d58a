//! `drbdsetup` command line (the subset an HA agent uses).
//!
//! ```text
//! drbdsetup events2 [--now] [--statistics] [--timestamps] [--full] [RES|all]
//! drbdsetup status [RES|all] [--verbose] [--statistics] [--json]
//! drbdsetup primary RES [--force]      drbdsetup secondary RES
//! drbdsetup connect RES PEER_ID [--discard-my-data]
//! drbdsetup disconnect RES PEER_ID     drbdsetup outdate RES|MINOR
//! drbdsetup down RES                   drbdsetup role RES
//! drbdsetup resume-io MINOR|RES      drbdsetup attach MINOR|RES [LOWER_DEV META_DEV META_IDX]
//! drbdsetup show [RES|all] [--show-defaults]
//! ```
//!
//! Exit codes: 0 ok; 10 `RES: No such resource` (also when the daemon is
//! not running; `show` of a resource that is not up); 11 state change
//! refused; 20 usage errors and `events2` without a running daemon (`Could not connect to 'drbd' generic netlink
//! family`); 1 when `events2` loses the daemon.

use std::io::{BufRead, BufReader, Write};

use crate::config::Config;
use crate::ctl::{self, Request};
use crate::format::{self, EventOpts, StatusOpts};
use crate::model::{EventMsg, Snapshot};

/// Parsed arguments: flags (`--x`, `-x`) and positionals.
pub struct Args {
    /// Flags as given (`--force`, `-s`, `--color=never`).
    pub flags: Vec<String>,
    /// Everything else, in order.
    pub pos: Vec<String>,
}

impl Args {
    /// Splits `args` into flags and positionals.
    pub fn parse(args: &[String]) -> Args {
        let mut flags = Vec::new();
        let mut pos = Vec::new();
        let mut only_pos = false;
        for a in args {
            if only_pos {
                pos.push(a.clone());
            } else if a == "--" {
                only_pos = true;
            } else if a.starts_with('-') && a.len() > 1 && a.parse::<i64>().is_err() {
                flags.push(a.clone());
            } else {
                pos.push(a.clone());
            }
        }
        Args { flags, pos }
    }

    /// True if any of `names` was given (`--name` or `--name=...`).
    pub fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|f| {
            let base = f.split('=').next().unwrap_or(f);
            names.contains(&base)
        })
    }
}

/// Prints a daemon response and returns its exit code.
pub fn emit(resp: &ctl::Response) -> i32 {
    print!("{}", resp.stdout);
    eprint!("{}", resp.stderr);
    let _ = std::io::stdout().flush();
    resp.exit
}

/// `RES: No such resource`, exit 10.
pub fn no_such_resource(res: &str) -> i32 {
    eprintln!("{res}: No such resource");
    10
}

/// Fetches the current state; `Err(exit)` after printing the error.
pub fn snapshot(cfg: &Config, res: &str) -> Result<Option<Snapshot>, i32> {
    match ctl::call(cfg, &Request::Snapshot) {
        Some(r) => Ok(r.snapshot),
        None => Err(no_such_resource(res)),
    }
}

/// Entry point; returns the exit code.
pub fn main(cfg: Result<Config, String>, args: &[String]) -> i32 {
    let a = Args::parse(args);
    let Some(cmd) = a.pos.first().cloned() else {
        eprintln!("USAGE: drbdsetup command {{arguments}} [options]\n(drbd-emu: events2, status, show, primary, secondary, connect, disconnect, outdate, resume-io, attach, down, role)");
        return 20;
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 20;
        }
    };
    let res_arg = a.pos.get(1).cloned();
    let ours = |r: &str| r == cfg.resource || r == "all";
    let need_res = || -> Result<String, i32> {
        match &res_arg {
            None => {
                eprintln!("Missing argument 1 to command: {cmd}");
                Err(20)
            }
            Some(r) if r == &cfg.resource => Ok(r.clone()),
            // `drbdsetup outdate` / `resume-io` / `attach` take a minor number
            Some(r)
                if matches!(cmd.as_str(), "outdate" | "resume-io" | "attach")
                    && r == &cfg.minor.to_string() =>
            {
                Ok(cfg.resource.clone())
            }
            Some(r) => Err(no_such_resource(r)),
        }
    };
    match cmd.as_str() {
        "events2" => {
            let other = res_arg.as_deref().is_some_and(|r| !ours(r));
            events2(
                &cfg,
                other,
                a.has(&["--now"]),
                a.has(&["--timestamps"]),
                EventOpts {
                    statistics: a.has(&["--statistics", "-s"]),
                    full: a.has(&["--full", "-f"]),
                },
            )
        }
        "status" => {
            if let Some(r) = &res_arg {
                if !ours(r) {
                    return no_such_resource(r);
                }
            }
            let snap = match snapshot(&cfg, res_arg.as_deref().unwrap_or(&cfg.resource)) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let explicit = res_arg.as_deref().is_some_and(|r| r != "all");
            if a.has(&["--json", "-j"]) {
                if snap.is_none() && explicit {
                    return no_such_resource(&cfg.resource);
                }
                print!("{}", format::status_json(snap.as_ref()));
                return 0;
            }
            match snap {
                Some(s) => {
                    let o = StatusOpts {
                        verbose: a.has(&["--verbose", "-v"]),
                        statistics: a.has(&["--statistics", "-s"]),
                    };
                    print!("{}", format::status_text(&s, o));
                    0
                }
                None if explicit => no_such_resource(&cfg.resource),
                None => 0,
            }
        }
        "show" => {
            if let Some(r) = &res_arg {
                if !ours(r) {
                    return no_such_resource(r);
                }
            }
            if a.has(&["--json", "-j"]) {
                eprintln!("drbdsetup: show --json is not emulated by drbd-emu");
                return 20;
            }
            let explicit = res_arg.as_deref().is_some_and(|r| r != "all");
            let req = Request::Show {
                show_defaults: a.has(&["--show-defaults", "-D"]),
            };
            match ctl::call(&cfg, &req) {
                Some(r) if r.exit == 0 => emit(&r),
                _ if explicit => no_such_resource(&cfg.resource),
                _ => {
                    println!("# No currently configured DRBD found.");
                    0
                }
            }
        }
        "role" => {
            if let Err(c) = need_res() {
                return c;
            }
            match snapshot(&cfg, &cfg.resource) {
                Ok(Some(s)) => {
                    println!("{}", s.role);
                    0
                }
                Ok(None) => no_such_resource(&cfg.resource),
                Err(c) => c,
            }
        }
        "primary" | "secondary" | "connect" | "disconnect" | "outdate" | "resume-io" | "attach"
        | "down" => {
            let res = match need_res() {
                Ok(r) => r,
                Err(c) => return c,
            };
            let req = match cmd.as_str() {
                "primary" => Request::Primary {
                    force: a.has(&["--force", "--overwrite-data-of-peer"]),
                },
                "secondary" => Request::Secondary,
                "connect" => Request::Connect {
                    discard_my_data: a.has(&["--discard-my-data"]),
                },
                "disconnect" => Request::Disconnect,
                "outdate" => Request::Outdate,
                "resume-io" => Request::ResumeIo,
                // the devices given after the minor are the configured ones
                "attach" => Request::Attach,
                _ => Request::Down,
            };
            match ctl::call(&cfg, &req) {
                Some(r) => emit(&r),
                None if cmd == "down" => 0,
                None => no_such_resource(&res),
            }
        }
        other => {
            eprintln!("drbdsetup: unknown command '{other}' (not emulated by drbd-emu)");
            20
        }
    }
}

fn print_lines(out: &mut impl Write, lines: &[String], ts: Option<&str>) -> bool {
    for l in lines {
        let r = match ts {
            Some(t) => writeln!(out, "{t} {l}"),
            None => writeln!(out, "{l}"),
        };
        if r.is_err() {
            return false;
        }
    }
    out.flush().is_ok()
}

/// `drbdsetup events2`.
fn events2(
    cfg: &Config,
    other_resource: bool,
    now: bool,
    timestamps: bool,
    opts: EventOpts,
) -> i32 {
    let Some(mut s) = ctl::connect(cfg) else {
        eprintln!("Could not connect to 'drbd' generic netlink family");
        return 20;
    };
    let req = serde_json::to_string(&Request::Events).unwrap_or_default() + "\n";
    if s.write_all(req.as_bytes()).is_err() {
        eprintln!("Could not connect to 'drbd' generic netlink family");
        return 20;
    }
    let mut r = BufReader::new(s);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut prev: Option<Snapshot> = None;
    let mut first = true;
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).unwrap_or(0);
        if n == 0 {
            eprintln!(
                "drbd-emu: lost the kernel emulation daemon ({})",
                cfg.socket_path().display()
            );
            return 1;
        }
        let msg: EventMsg = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("drbd-emu: bad event from daemon: {e}");
                return 1;
            }
        };
        let snap = if other_resource { None } else { msg.snap };
        let ts = timestamps.then(|| format::timestamp(msg.ts_us));
        let mut lines = if first {
            let mut l = format::exists_lines(snap.as_ref(), opts);
            l.push("exists -".into());
            l
        } else {
            let mut l = format::change_lines(prev.as_ref(), snap.as_ref(), opts);
            if let (Some(h), Some(s)) = (&msg.helper, &snap) {
                l.push(format::helper_line(s, h));
            }
            l
        };
        if !first && lines.is_empty() {
            prev = snap;
            continue;
        }
        if !print_lines(&mut out, &lines, ts.as_deref()) {
            return 0;
        }
        lines.clear();
        if first && now {
            return 0;
        }
        first = false;
        prev = snap;
    }
}
