//! A headless Chromium driven over the W3C WebDriver protocol (Debian's
//! `chromium` and `chromedriver`), for the dashboard's browser test: open a
//! page, run a script in it, take a screenshot. A small blocking client over
//! plain HTTP to a `chromedriver` this process starts on loopback and kills on
//! drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session; the driver and the browser end when it is dropped.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// Fails with the command that installs them when Chromium or ChromeDriver is
/// missing (a test never skips silently).
pub fn check_prerequisites() -> Result<(), String> {
    for p in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(p).exists() {
            return Err(format!(
                "{p} is missing: install it with `apt-get install -y chromium chromium-driver` (or run ./scripts/install-deps.sh)"
            ));
        }
    }
    Ok(())
}

fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.map_err(|e| format!("chromedriver {addr}: {e}"))?,
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open: read the head, then exactly
    // Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.map_err(|e| format!("chromedriver: {e}"))?,
        };
        if n == 0 {
            return Err("chromedriver closed the connection before answering".into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("chromedriver: no Content-Length in {head:?}"))?;
    while raw.len() < head_end + len {
        let n = match s.read(&mut buf) {
            // A signal to this process (a child's exit) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.map_err(|e| format!("chromedriver: {e}"))?,
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..]);
    let v: Value =
        serde_json::from_str(&body).map_err(|e| format!("chromedriver: not JSON ({e}): {body}"))?;
    if let Some(err) = v["value"]["error"].as_str() {
        return Err(format!(
            "chromedriver {method} {path}: {err}: {}",
            v["value"]["message"].as_str().unwrap_or("")
        ));
    }
    Ok(v)
}

impl Browser {
    /// Start `chromedriver` on a free loopback port and a headless Chromium of
    /// `width`×`height` with an empty profile and no background networking (this
    /// machine has no network but the package registries).
    pub fn start(width: u32, height: u32, log: &Path) -> Result<Browser, String> {
        check_prerequisites()?;
        let port = crate::free_port();
        let addr = format!("127.0.0.1:{port}");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {CHROMEDRIVER}: {e}"))?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let t0 = Instant::now();
        while request(&b.addr, "GET", "/status", None).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "chromedriver did not answer on {} within 20 s",
                    b.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "eager",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage",
                        format!("--window-size={width},{height}"),
                        format!("--user-data-dir={}", b._profile.path().display()),
                    ],
                },
            }},
        });
        let v = request(&b.addr, "POST", "/session", Some(&caps))?;
        b.session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {v}"))?
            .to_string();
        Ok(b)
    }

    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> Result<Value, String> {
        request(
            &self.addr,
            method,
            &format!("/session/{}{what}", self.session),
            body,
        )
        .map(|v| v["value"].clone())
    }

    /// Navigate to `url`.
    pub fn open(&self, url: &str) -> Result<(), String> {
        self.call("POST", "/url", Some(&json!({ "url": url })))
            .map(|_| ())
    }

    /// Run `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> Result<Value, String> {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None)?;
        let b64 = v.as_str().ok_or("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("screenshot: {e}"))?;
        std::fs::write(path, png).map_err(|e| format!("write {}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
