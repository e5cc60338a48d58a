//! The client-facing IP address: claim it on the serving server, release it
//! elsewhere.
//!
//! Claim = `ip addr add IP/PREFIX dev IFACE` (already there: success), then a
//! gratuitous ARP so neighbours drop the old holder's MAC at once (measured
//! here: without one a client kept the old MAC for ~24 s; with one it moved in
//! ~0.03 s). Release = `ip addr del IP/PREFIX dev IFACE` (absent: success).
//! Presence is read from `ip -o addr show dev IFACE`.
//!
//! Two arping implementations exist with different flags; the flavour is
//! configured or detected from `arping --help`:
//! - Thomas Habets' arping (Debian package `arping`):
//!   `arping -U -c N -W INTERVAL -w DEADLINE -i IFACE -S IP IP`. `-U` broadcasts
//!   an unsolicited ARP request with sender = target = IP, which updates
//!   neighbours' caches (checked: `-U -P`, an ARP reply, did not update a Linux
//!   neighbour's STALE entry). `-w (N-1)*INTERVAL` stops it right after the last
//!   packet instead of waiting a second for replies. It exits 1 when nothing
//!   answers, which is normal here, so success is "N packets transmitted".
//! - iputils arping (package `iputils-arping`, also busybox):
//!   `arping -U -c N -I IFACE IP` (in `-U` mode the source is the target IP;
//!   packets go out one second apart).
//!
//! IPv6 addresses are added with `nodad` and get no ARP (the kernel sends
//! unsolicited neighbour advertisements itself).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::{self, CommandLine, Outcome};
use super::ActionError;

/// Which arping syntax to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArpingFlavor {
    /// Ask `arping --help` once per claim.
    #[default]
    Auto,
    /// Thomas Habets' arping.
    Habets,
    /// iputils (or busybox) arping.
    Iputils,
    /// Send no gratuitous ARP.
    None,
}

/// The client IP of the pair and how to claim it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
    #[serde(default = "default_ip")]
    pub ip: PathBuf,
    /// Found on PATH by default: Habets' arping is /usr/sbin/arping, iputils'
    /// is /usr/bin/arping.
    #[serde(default = "default_arping")]
    pub arping: PathBuf,
    #[serde(default)]
    pub arping_flavor: ArpingFlavor,
    /// Gratuitous ARPs per claim.
    #[serde(default = "default_arp_count")]
    pub arp_count: u32,
    /// Between them (Habets' arping only; iputils sends one per second).
    #[serde(default = "default_arp_interval_ms")]
    pub arp_interval_ms: u64,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_ip() -> PathBuf {
    "/usr/sbin/ip".into()
}
fn default_arping() -> PathBuf {
    "arping".into()
}
fn default_arp_count() -> u32 {
    3
}
fn default_arp_interval_ms() -> u64 {
    100
}
fn default_timeout_secs() -> u64 {
    10
}

impl IpConfig {
    /// A configuration with the default executables and timings.
    pub fn new(address: IpAddr, prefix_len: u8, interface: impl Into<String>) -> Self {
        IpConfig {
            address,
            prefix_len,
            interface: interface.into(),
            ip: default_ip(),
            arping: default_arping(),
            arping_flavor: ArpingFlavor::Auto,
            arp_count: default_arp_count(),
            arp_interval_ms: default_arp_interval_ms(),
            timeout_secs: default_timeout_secs(),
        }
    }

    pub fn validate(&self) -> Result<(), ActionError> {
        let bad = |reason: String| ActionError::Config {
            section: "client_ip",
            reason,
        };
        let max = if self.address.is_ipv4() { 32 } else { 128 };
        if self.prefix_len > max {
            return Err(bad(format!(
                "prefix_len {} is above {max}",
                self.prefix_len
            )));
        }
        if self.interface.is_empty()
            || self.interface.len() > 15
            || self.interface.starts_with('-')
            || self
                .interface
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == ':')
        {
            return Err(bad(format!(
                "interface {:?} is not an interface name",
                self.interface
            )));
        }
        if self.address.is_unspecified() || self.address.is_multicast() {
            return Err(bad(format!("{} cannot be a client address", self.address)));
        }
        if self.arp_count == 0 && self.arping_flavor != ArpingFlavor::None {
            return Err(bad(
                "arp_count must be above 0 (or set arping_flavor = \"none\")".into(),
            ));
        }
        if self.timeout_secs == 0 {
            return Err(bad("timeout_secs must be above 0".into()));
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }
}

/// `ip addr add IP/PREFIX dev IFACE` (`nodad` for IPv6).
pub fn add_command(cfg: &IpConfig) -> CommandLine {
    let c = CommandLine::new(&cfg.ip)
        .arg("addr")
        .arg("add")
        .arg(cfg.cidr())
        .arg("dev")
        .arg(&cfg.interface);
    if cfg.address.is_ipv6() {
        c.arg("nodad")
    } else {
        c
    }
}

/// `ip addr del IP/PREFIX dev IFACE`.
pub fn del_command(cfg: &IpConfig) -> CommandLine {
    CommandLine::new(&cfg.ip)
        .arg("addr")
        .arg("del")
        .arg(cfg.cidr())
        .arg("dev")
        .arg(&cfg.interface)
}

/// `ip -o addr show dev IFACE`.
pub fn show_command(cfg: &IpConfig) -> CommandLine {
    CommandLine::new(&cfg.ip)
        .arg("-o")
        .arg("addr")
        .arg("show")
        .arg("dev")
        .arg(&cfg.interface)
}

/// The gratuitous ARP for a resolved flavour (`Habets` or `Iputils`); `None`
/// when none is to be sent (flavour `None`, or an IPv6 address).
pub fn arp_command(cfg: &IpConfig, flavor: ArpingFlavor) -> Option<CommandLine> {
    if cfg.address.is_ipv6() {
        return None;
    }
    let ip = cfg.address.to_string();
    let count = cfg.arp_count.max(1);
    match flavor {
        ArpingFlavor::None | ArpingFlavor::Auto => None,
        ArpingFlavor::Habets => {
            let interval = cfg.arp_interval_ms as f64 / 1000.0;
            let deadline = interval * (count - 1) as f64;
            Some(
                CommandLine::new(&cfg.arping)
                    .arg("-U")
                    .arg("-c")
                    .arg(count.to_string())
                    .arg("-W")
                    .arg(format!("{interval:.3}"))
                    .arg("-w")
                    .arg(format!("{deadline:.3}"))
                    .arg("-i")
                    .arg(&cfg.interface)
                    .arg("-S")
                    .arg(&ip)
                    .arg(&ip),
            )
        }
        ArpingFlavor::Iputils => Some(
            CommandLine::new(&cfg.arping)
                .arg("-U")
                .arg("-c")
                .arg(count.to_string())
                .arg("-I")
                .arg(&cfg.interface)
                .arg(&ip),
        ),
    }
}

/// Which arping wrote this `--help` text.
pub fn flavor_from_help(text: &str) -> ArpingFlavor {
    if text.contains("Habets") {
        ArpingFlavor::Habets
    } else {
        ArpingFlavor::Iputils
    }
}

/// Whether an arping run sent its packets. Habets' arping exits 1 when
/// nothing answers (normal for a gratuitous ARP), so its packet count decides;
/// iputils exits 0 in `-U` mode.
pub fn arp_succeeded(flavor: ArpingFlavor, out: &Outcome) -> bool {
    if out.success() {
        return true;
    }
    let sent = |marker: &str| {
        out.stdout.lines().any(|l| {
            l.find(marker)
                .and_then(|i| l[..i].split_whitespace().last()?.parse::<u32>().ok())
                .is_some_and(|n| n > 0)
        })
    };
    match flavor {
        ArpingFlavor::Habets => out.code == Some(1) && sent(" packets transmitted"),
        ArpingFlavor::Iputils => {
            out.code == Some(1) && out.stderr.trim().is_empty() && sent(" probes")
        }
        ArpingFlavor::None | ArpingFlavor::Auto => false,
    }
}

/// The addresses in `ip -o addr show` output, with their prefix lengths.
pub fn parse_addresses(text: &str) -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        for w in tokens.windows(2) {
            if w[0] == "inet" || w[0] == "inet6" {
                let (a, p) = w[1].split_once('/').unwrap_or((w[1], ""));
                if let Ok(a) = a.parse::<IpAddr>() {
                    let p = p.parse().unwrap_or(if a.is_ipv4() { 32 } else { 128 });
                    out.push((a, p));
                }
            }
        }
    }
    out
}

async fn run_ip(cfg: &IpConfig, cmd: &CommandLine) -> Result<Outcome, ActionError> {
    command::run(cmd, cfg.timeout()).await
}

fn ip_failed(cmd: &CommandLine, out: &Outcome) -> ActionError {
    ActionError::IpFailed {
        command: cmd.to_string(),
        code: out.code,
        stderr: out.message(),
    }
}

/// Whether the client IP is on the interface.
pub async fn is_present(cfg: &IpConfig) -> Result<bool, ActionError> {
    let cmd = show_command(cfg);
    let out = run_ip(cfg, &cmd).await?;
    if !out.success() {
        return Err(ip_failed(&cmd, &out));
    }
    Ok(parse_addresses(&out.stdout)
        .iter()
        .any(|(a, _)| *a == cfg.address))
}

/// The arping flavour to use: configured, or detected from `arping --help`.
pub async fn resolve_flavor(cfg: &IpConfig) -> Result<ArpingFlavor, ActionError> {
    if cfg.arping_flavor != ArpingFlavor::Auto {
        return Ok(cfg.arping_flavor);
    }
    let out = command::run(&CommandLine::new(&cfg.arping).arg("--help"), cfg.timeout()).await?;
    Ok(flavor_from_help(&format!("{}{}", out.stdout, out.stderr)))
}

/// Send the gratuitous ARP for the client IP (nothing for IPv6 or flavour `none`).
pub async fn announce(cfg: &IpConfig) -> Result<(), ActionError> {
    let flavor = resolve_flavor(cfg).await?;
    let Some(cmd) = arp_command(cfg, flavor) else {
        return Ok(());
    };
    let out = run_ip(cfg, &cmd).await?;
    if arp_succeeded(flavor, &out) {
        tracing::debug!(command = %cmd, "gratuitous ARP sent");
        Ok(())
    } else {
        Err(ActionError::ArpFailed {
            command: cmd.to_string(),
            detail: format!("{}: {}", command::fmt_code(out.code), out.message()),
        })
    }
}

/// Put the client IP on the interface (already there: fine) and announce it.
/// The ARP is sent on every claim, so a retried claim announces again.
pub async fn claim(cfg: &IpConfig) -> Result<(), ActionError> {
    cfg.validate()?;
    if !is_present(cfg).await? {
        let cmd = add_command(cfg);
        let out = run_ip(cfg, &cmd).await?;
        if !out.success() && !out.message().contains("File exists") {
            return Err(ip_failed(&cmd, &out));
        }
    }
    announce(cfg).await
}

/// Take the client IP off the interface (absent: fine).
pub async fn release(cfg: &IpConfig) -> Result<(), ActionError> {
    cfg.validate()?;
    if !is_present(cfg).await? {
        return Ok(());
    }
    let cmd = del_command(cfg);
    let out = run_ip(cfg, &cmd).await?;
    if !out.success() && !out.message().contains("Cannot assign requested address") {
        return Err(ip_failed(&cmd, &out));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> IpConfig {
        IpConfig::new("198.18.0.10".parse().unwrap(), 24, "eth1")
    }

    #[test]
    fn ip_command_lines() {
        assert_eq!(
            add_command(&cfg()).argv(),
            [
                "/usr/sbin/ip",
                "addr",
                "add",
                "198.18.0.10/24",
                "dev",
                "eth1"
            ]
        );
        assert_eq!(
            del_command(&cfg()).argv(),
            [
                "/usr/sbin/ip",
                "addr",
                "del",
                "198.18.0.10/24",
                "dev",
                "eth1"
            ]
        );
        assert_eq!(
            show_command(&cfg()).argv(),
            ["/usr/sbin/ip", "-o", "addr", "show", "dev", "eth1"]
        );
        let v6 = IpConfig::new("2001:db8::10".parse().unwrap(), 64, "eth1");
        assert_eq!(
            add_command(&v6).argv(),
            [
                "/usr/sbin/ip",
                "addr",
                "add",
                "2001:db8::10/64",
                "dev",
                "eth1",
                "nodad"
            ]
        );
        assert_eq!(arp_command(&v6, ArpingFlavor::Habets), None);
    }

    #[test]
    fn arping_command_lines() {
        assert_eq!(
            arp_command(&cfg(), ArpingFlavor::Habets).unwrap().argv(),
            [
                "arping",
                "-U",
                "-c",
                "3",
                "-W",
                "0.100",
                "-w",
                "0.200",
                "-i",
                "eth1",
                "-S",
                "198.18.0.10",
                "198.18.0.10"
            ]
        );
        let mut one = cfg();
        one.arp_count = 1;
        one.arping = "/usr/sbin/arping".into();
        let c = arp_command(&one, ArpingFlavor::Habets).unwrap().argv();
        assert_eq!(c[0], "/usr/sbin/arping");
        assert_eq!(c[5..8], ["0.100", "-w", "0.000"]);
        assert_eq!(
            arp_command(&cfg(), ArpingFlavor::Iputils).unwrap().argv(),
            ["arping", "-U", "-c", "3", "-I", "eth1", "198.18.0.10"]
        );
        assert_eq!(arp_command(&cfg(), ArpingFlavor::None), None);
    }

    #[test]
    fn detects_flavor_and_success() {
        assert_eq!(
            flavor_from_help("ARPing 2.23, by Thomas Habets <thomas@habets.se>\nusage: arping [ -0aAbdDeFpPqrRuUvzZ ]"),
            ArpingFlavor::Habets
        );
        assert_eq!(
            flavor_from_help("Usage:\n  arping [options] <destination>\n\nOptions:\n  -f            quit on first reply\n  -U            unsolicited ARP mode, update your neighbours\n  -I <device>   which ethernet device to use\n"),
            ArpingFlavor::Iputils
        );
        let habets_unanswered = Outcome {
            code: Some(1),
            stdout: "ARPING 198.18.0.1\n\n--- 198.18.0.1 statistics ---\n3 packets transmitted, 0 packets received, 100% unanswered (0 extra)\n".into(),
            stderr: String::new(),
        };
        assert!(arp_succeeded(ArpingFlavor::Habets, &habets_unanswered));
        let habets_error = Outcome {
            code: Some(1),
            stdout: String::new(),
            stderr: "arping: libnet_init(LIBNET_LINK, nosuch): libnet_check_iface() ioctl: No such device".into(),
        };
        assert!(!arp_succeeded(ArpingFlavor::Habets, &habets_error));
        let iputils_ok = Outcome {
            code: Some(0),
            stdout: "ARPING 198.18.0.1 from 198.18.0.1 eth1\nSent 3 probes (3 broadcast(s))\nReceived 0 response(s)\n".into(),
            stderr: String::new(),
        };
        assert!(arp_succeeded(ArpingFlavor::Iputils, &iputils_ok));
    }

    #[test]
    fn parses_ip_o_addr() {
        let text = "2: eth1    inet 198.18.0.2/24 brd 198.18.0.255 scope global eth1\\       valid_lft forever preferred_lft forever\n\
2: eth1    inet 198.18.0.10/24 scope global secondary eth1\\       valid_lft forever preferred_lft forever\n\
2: eth1    inet6 fe80::1c2b:3aff:fe4d:5e6f/64 scope link \\       valid_lft forever preferred_lft forever\n";
        let a = parse_addresses(text);
        assert_eq!(a.len(), 3);
        assert_eq!(a[1], ("198.18.0.10".parse().unwrap(), 24));
        assert_eq!(a[2].1, 64);
        assert!(parse_addresses("").is_empty());
    }

    #[test]
    fn config_parses_and_validates() {
        let c: IpConfig =
            toml::from_str("address = \"198.18.0.10\"\nprefix_len = 24\ninterface = \"eth1\"")
                .unwrap();
        assert_eq!(c, cfg());
        c.validate().unwrap();
        let c: IpConfig = toml::from_str(
            "address = \"198.18.0.10\"\nprefix_len = 24\ninterface = \"eth1\"\narping_flavor = \"iputils\"",
        )
        .unwrap();
        assert_eq!(c.arping_flavor, ArpingFlavor::Iputils);
        assert!(toml::from_str::<IpConfig>(
            "address = \"198.18.0.10\"\nprefix_len = 24\ninterface = \"eth1\"\niface = \"x\""
        )
        .is_err());
        let mut bad = cfg();
        bad.prefix_len = 33;
        assert!(bad.validate().is_err());
        let mut bad = cfg();
        bad.interface = "eth 1".into();
        assert!(bad.validate().is_err());
    }
}
