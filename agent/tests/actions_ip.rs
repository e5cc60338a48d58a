//! Claiming and releasing the client IP for real, in two throwaway network
//! namespaces joined by a veth pair: the "server" claims an address from
//! 198.18.0.0/15, the "client" sees the gratuitous ARP replace a stale MAC.
//! `ip` and `arping` are configured as wrappers that run them inside the server
//! namespace (the agent runs them as given). Needs root, iproute2 and arping;
//! fails with the install command otherwise. Namespaces are deleted on drop.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use understudy_agent::actions::command::find_executable;
use understudy_agent::actions::ip::{self, ArpingFlavor, IpConfig};

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
        "the client-IP tests must run as root (network namespaces)"
    );
    let missing: Vec<&str> = ["ip", "arping", "ping"]
        .into_iter()
        .filter(|p| find_executable(Path::new(p)).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: install them with `apt-get install -y iproute2 arping iputils-ping`"
    );
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces `<name>-s` (server, interface `usv-s`, 198.18.77.1/24) and
/// `<name>-c` (client, `usv-c`, 198.18.77.2/24), deleted on drop.
struct Pair {
    server: String,
    client: String,
    dir: tempfile::TempDir,
}

static N: AtomicU32 = AtomicU32::new(0);

impl Pair {
    fn new() -> Pair {
        require_prerequisites();
        let name = format!(
            "us-ipt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let p = Pair {
            server: format!("{name}-s"),
            client: format!("{name}-c"),
            dir: tempfile::tempdir().unwrap(),
        };
        sh(&["ip", "netns", "add", &p.server]);
        sh(&["ip", "netns", "add", &p.client]);
        sh(&[
            "ip", "link", "add", "usv-s", "netns", &p.server, "type", "veth", "peer", "name",
            "usv-c", "netns", &p.client,
        ]);
        for (ns, dev, addr) in [
            (&p.server, "usv-s", "198.18.77.1/24"),
            (&p.client, "usv-c", "198.18.77.2/24"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        p
    }

    /// A script running `program` inside the server namespace.
    fn wrapper(&self, program: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(format!("{program}-in-ns"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {program} \"$@\"\n",
                self.server
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn config(&self, addr: &str) -> IpConfig {
        let mut c = IpConfig::new(addr.parse::<IpAddr>().unwrap(), 24, "usv-s");
        c.ip = self.wrapper("ip");
        c.arping = self.wrapper("arping");
        c
    }

    fn server_mac(&self) -> String {
        let out = sh(&["ip", "-n", &self.server, "-o", "link", "show", "usv-s"]);
        let i = out.find("link/ether ").unwrap() + "link/ether ".len();
        out[i..i + 17].to_string()
    }

    fn client_neigh(&self, addr: &str) -> String {
        sh(&["ip", "-n", &self.client, "neigh", "show", addr])
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[tokio::test]
async fn claim_and_release_the_client_ip() {
    let pair = Pair::new();
    let addr = "198.18.77.10";
    let cfg = pair.config(addr);
    assert_eq!(
        ip::resolve_flavor(&cfg).await.unwrap(),
        ArpingFlavor::Habets
    );
    assert!(!ip::is_present(&cfg).await.unwrap());
    ip::release(&cfg).await.unwrap(); // absent: fine

    // The client still believes the address is at some other MAC.
    sh(&[
        "ip",
        "-n",
        &pair.client,
        "neigh",
        "replace",
        addr,
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "usv-c",
        "nud",
        "stale",
    ]);
    let t0 = std::time::Instant::now();
    ip::claim(&cfg).await.unwrap();
    eprintln!("claim with gratuitous ARP took {:?}", t0.elapsed());
    assert!(ip::is_present(&cfg).await.unwrap());
    let neigh = pair.client_neigh(addr);
    assert!(
        neigh.contains(&pair.server_mac()),
        "the client's neighbour entry was not updated by the gratuitous ARP: {neigh}"
    );

    ip::claim(&cfg).await.unwrap(); // again: fine, announces again
    assert!(ip::is_present(&cfg).await.unwrap());

    // The client reaches the claimed address.
    sh(&[
        "ip",
        "netns",
        "exec",
        &pair.client,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        addr,
    ]);

    ip::release(&cfg).await.unwrap();
    assert!(!ip::is_present(&cfg).await.unwrap());
    ip::release(&cfg).await.unwrap();
    // The namespace's own address is untouched.
    let base = pair.config("198.18.77.1");
    assert!(ip::is_present(&base).await.unwrap());
}

#[tokio::test]
async fn a_missing_interface_is_a_clear_error() {
    let pair = Pair::new();
    let mut cfg = pair.config("198.18.77.11");
    cfg.interface = "usv-nope".into();
    let e = ip::claim(&cfg).await.unwrap_err().to_string();
    assert!(
        e.contains("usv-nope") && e.contains("does not exist"),
        "{e}"
    );
    // No arping: the address is still claimed, and no ARP is attempted.
    let mut cfg = pair.config("198.18.77.12");
    cfg.arping_flavor = ArpingFlavor::None;
    cfg.arping = "/nonexistent/arping".into();
    ip::claim(&cfg).await.unwrap();
    assert!(ip::is_present(&cfg).await.unwrap());
    // A broken arping is reported, after the address is on the interface.
    let mut cfg = pair.config("198.18.77.13");
    cfg.arping = "/nonexistent/arping".into();
    cfg.arping_flavor = ArpingFlavor::Habets;
    let e = ip::claim(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("/nonexistent/arping"), "{e}");
    assert!(ip::is_present(&cfg).await.unwrap());
}
