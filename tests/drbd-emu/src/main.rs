//! `drbd-emu`: a DRBD 9 emulator for two hosts, for tests and demos.
//!
//! ```text
//! drbd-emu daemon --config HOST.toml          # the "kernel" of one host
//! drbd-emu [--emu-config HOST.toml] drbdsetup ARGS...
//! drbd-emu [--emu-config HOST.toml] drbdadm ARGS...
//! ```
//!
//! The CLIs find their host through `--emu-config` or the environment
//! variable `DRBD_EMU_CONFIG`. Invoked through a symlink named `drbdsetup`
//! or `drbdadm`, the binary behaves as that CLI. See README.md for the full
//! contract.

mod block;
mod config;
#[cfg(test)]
mod config_props;
mod ctl;
mod daemon;
mod drbdadm;
mod drbdsetup;
mod fence;
mod format;
#[cfg(test)]
mod format_props;
mod meta;
mod model;
mod repl;
mod tree;

use std::path::{Path, PathBuf};

use config::{Config, CONFIG_ENV};

const USAGE: &str = "usage:
  drbd-emu daemon --config HOST.toml
  drbd-emu [--emu-config HOST.toml] drbdsetup ARGS...
  drbd-emu [--emu-config HOST.toml] drbdadm ARGS...
  (the CLIs also read DRBD_EMU_CONFIG, and run as drbdsetup/drbdadm when
   invoked through a symlink of that name)";

fn cli_config(explicit: Option<PathBuf>) -> Result<Config, String> {
    let path = match explicit {
        Some(p) => p,
        None => match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(format!(
                "drbd-emu: no host config: set {CONFIG_ENV}=/path/HOST.toml or pass --emu-config"
            ))
            }
        },
    };
    Config::load(&path).map_err(|e| format!("drbd-emu: {e}"))
}

fn run(argv: Vec<String>) -> i32 {
    let argv0 = argv
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let mut rest: Vec<String> = argv.into_iter().skip(1).collect();
    let mut explicit = None;
    // `--emu-config PATH` / `--emu-config=PATH` before the subcommand
    loop {
        match rest.first().map(String::as_str) {
            Some("--emu-config") if rest.len() >= 2 => {
                explicit = Some(PathBuf::from(rest[1].clone()));
                rest.drain(..2);
            }
            Some(a) if a.starts_with("--emu-config=") => {
                explicit = Some(PathBuf::from(&a["--emu-config=".len()..]));
                rest.remove(0);
            }
            _ => break,
        }
    }
    match argv0.as_str() {
        "drbdsetup" => return drbdsetup::main(cli_config(explicit), &rest),
        "drbdadm" => return drbdadm::main(cli_config(explicit), &rest),
        _ => {}
    }
    let Some(sub) = rest.first().cloned() else {
        eprintln!("{USAGE}");
        return 20;
    };
    let args = &rest[1..];
    match sub.as_str() {
        "drbdsetup" => drbdsetup::main(cli_config(explicit), args),
        "drbdadm" => drbdadm::main(cli_config(explicit), args),
        "daemon" => {
            let path = match args {
                [flag, p] if flag == "--config" => PathBuf::from(p),
                [p] if p.starts_with("--config=") => PathBuf::from(&p["--config=".len()..]),
                _ => match explicit {
                    Some(p) if args.is_empty() => p,
                    _ => {
                        eprintln!("{USAGE}");
                        return 20;
                    }
                },
            };
            daemon::run(&path)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            0
        }
        other => {
            eprintln!("drbd-emu: unknown subcommand '{other}'\n{USAGE}");
            20
        }
    }
}

fn main() {
    let code = run(std::env::args().collect());
    std::process::exit(code);
}
