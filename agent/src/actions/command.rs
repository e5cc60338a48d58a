//! Running the host's executables: a command line as plain data (so every
//! builder can be unit-tested without running anything), a bounded runner that
//! kills what hangs, and small helpers shared by the actions (octal unescaping
//! of kernel tables, executable lookup).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::ActionError;

/// One command line: the configured executable and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl CommandLine {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        CommandLine {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// Append one argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Program and arguments as strings (lossy), for assertions and logs.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(|a| a.as_os_str()))
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }
}

impl fmt::Display for CommandLine {
    /// Shell-like rendering: arguments with spaces or quotes are single-quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.argv().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !a.is_empty()
                && a.chars().all(|c| {
                    c.is_ascii_alphanumeric() || "-_./=:,@%+[]".contains(c) || !c.is_ascii()
                });
            if plain {
                f.write_str(a)?;
            } else {
                write!(f, "'{}'", a.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// What a finished command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stderr, or stdout when stderr is empty, trimmed: the text to show an operator.
    pub fn message(&self) -> String {
        let e = self.stderr.trim();
        if e.is_empty() {
            self.stdout.trim().to_string()
        } else {
            e.to_string()
        }
    }
}

/// Render an exit code for messages.
pub(crate) fn fmt_code(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// Run `cmd` with stdin closed and the C locale (so messages can be matched),
/// killing it if it runs longer than `timeout`.
pub async fn run(cmd: &CommandLine, timeout: Duration) -> Result<Outcome, ActionError> {
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // ETXTBSY: a script written a moment ago may still be open for writing in
    // a child forked by another thread; that passes within milliseconds.
    let mut attempts = 0;
    let child = loop {
        match c.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(26) && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(source) => {
                return Err(ActionError::Spawn {
                    program: cmd.program.clone(),
                    source,
                })
            }
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let outcome = Outcome {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            tracing::debug!(command = %cmd, code = ?outcome.code, "ran");
            Ok(outcome)
        }
        Ok(Err(source)) => Err(ActionError::Io {
            context: format!("waiting for `{cmd}`"),
            source,
        }),
        Err(_) => Err(ActionError::Timeout {
            command: cmd.to_string(),
            timeout,
        }),
    }
}

/// Undo the octal escapes the kernel and nfs-utils use in their tables
/// (`\040` space, `\011` tab, `\012` newline, `\134` backslash). Anything that is
/// not a backslash followed by three octal digits is kept as it is.
pub fn unescape_octal(s: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// Where `program` would be executed from: itself if it contains a `/`, else
/// the first match on `PATH`; `None` when that is not an executable file.
pub fn find_executable(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.as_os_str().is_empty() {
        return None;
    }
    if program.components().count() > 1 || program.is_absolute() {
        return is_exec(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let c = CommandLine::new("/usr/bin/mount")
            .arg("-o")
            .arg("rw,noatime")
            .arg("/srv/my dir")
            .arg("it's");
        assert_eq!(
            c.to_string(),
            r"/usr/bin/mount -o rw,noatime '/srv/my dir' 'it'\''s'"
        );
        assert_eq!(c.argv()[3], "/srv/my dir");
    }

    #[test]
    fn unescapes_kernel_octal() {
        assert_eq!(unescape_octal(r"/mnt/a\040b"), OsString::from("/mnt/a b"));
        assert_eq!(
            unescape_octal(r"a\011b\012c\134d"),
            OsString::from("a\tb\nc\\d")
        );
        // Not an escape: kept.
        assert_eq!(unescape_octal(r"a\09b\"), OsString::from(r"a\09b\"));
        assert_eq!(unescape_octal(r"x\04"), OsString::from(r"x\04"));
    }

    #[test]
    fn finds_executables() {
        assert!(find_executable(Path::new("sh")).is_some());
        assert!(find_executable(Path::new("/bin/sh")).is_some());
        assert!(find_executable(Path::new("/nonexistent/understudy")).is_none());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        assert!(find_executable(&plain).is_none());
        assert!(find_executable(dir.path()).is_none());
    }

    #[tokio::test]
    async fn run_reports_output_timeouts_and_missing_programs() {
        let ok = run(
            &CommandLine::new("sh")
                .arg("-c")
                .arg("echo out; echo err >&2; exit 3"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(ok.code, Some(3));
        assert_eq!(ok.stdout, "out\n");
        assert_eq!(ok.message(), "err");
        let t = run(
            &CommandLine::new("sleep").arg("5"),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(matches!(t, ActionError::Timeout { .. }), "{t}");
        let m = run(&CommandLine::new("/nonexistent/x"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(m.to_string().contains("/nonexistent/x"), "{m}");
    }
}
