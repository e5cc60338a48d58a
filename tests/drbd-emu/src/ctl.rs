//! Control protocol between the CLIs and the daemon.
//!
//! A unix stream socket `STATE_DIR/ctl.sock` carries newline-delimited JSON:
//! the CLI sends one [`Request`]; the daemon answers one [`Response`], or for
//! [`Request::Events`] a stream of [`EventMsg`](crate::model::EventMsg) lines
//! (the first one is the current state) until either side goes away.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::model::Snapshot;

/// A command for the daemon ("kernel").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Current state (`status`).
    Snapshot,
    /// Subscribe to state changes (`events2`).
    Events,
    /// `drbdadm up`
    Up,
    /// `drbdadm down`
    Down,
    /// `drbdadm primary [--force]`
    Primary {
        /// `--force`
        force: bool,
    },
    /// `drbdadm secondary`
    Secondary,
    /// `drbdadm connect [--discard-my-data]`
    Connect {
        /// `--discard-my-data`
        discard_my_data: bool,
    },
    /// `drbdadm disconnect`
    Disconnect,
    /// `drbdadm outdate`
    Outdate,
    /// `drbdadm resume-io`
    ResumeIo,
    /// `drbdadm create-md`
    CreateMd,
    /// `drbdadm attach` / `drbdsetup attach`: attach the backing disk of a
    /// Diskless resource (after an I/O error detached it).
    Attach,
    /// `drbdadm adjust`: re-read the config file and apply it (up if
    /// down; a changed `[peer]`/`listen` tears the connection down and
    /// connects to the new peer; connect if StandAlone).
    Adjust,
    /// `drbdsetup show [--show-defaults]`: the running configuration.
    Show {
        /// `--show-defaults`
        show_defaults: bool,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// Process exit code for the CLI.
    pub exit: i32,
    /// Text for stdout.
    pub stdout: String,
    /// Text for stderr.
    pub stderr: String,
    /// State (for `Snapshot`), `None` if the resource is down.
    pub snapshot: Option<Snapshot>,
}

impl Response {
    /// Success without output.
    pub fn ok() -> Response {
        Response::default()
    }

    /// Failure with an exit code and a message for stderr.
    pub fn fail(exit: i32, msg: impl Into<String>) -> Response {
        let mut stderr = msg.into();
        if !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        Response {
            exit,
            stderr,
            ..Response::default()
        }
    }
}

/// Connects to the daemon of `cfg`; `None` if it is not running.
pub fn connect(cfg: &Config) -> Option<UnixStream> {
    UnixStream::connect(cfg.socket_path()).ok()
}

/// Sends one request and reads the response; `None` if the daemon is not
/// running or went away mid-request.
pub fn call(cfg: &Config, req: &Request) -> Option<Response> {
    let mut s = connect(cfg)?;
    let mut line = serde_json::to_string(req).ok()?;
    line.push('\n');
    s.write_all(line.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    r.read_line(&mut resp).ok()?;
    serde_json::from_str(&resp).ok()
}
