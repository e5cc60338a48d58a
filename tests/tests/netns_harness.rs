//! The network-namespace harness itself: connectivity, cuts, partial partitions,
//! cleanup, and how fast a client follows an address moved between hosts.
//!
//! Needs root, iproute2, iptables, arping and iputils-ping; without them every
//! test fails with the install command.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use understudy_tests::netns::{netns_list, probe, root_links, Net};

const HOSTS: &[&str] = &["fsa", "fsb", "client"];

fn net() -> Net {
    Net::new(HOSTS).unwrap_or_else(|e| panic!("cannot build the namespace network: {e}"))
}

fn sock(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn ping(net: &Net, from: &str, to: std::net::Ipv4Addr) -> bool {
    net.cmd(from, "ping")
        .args(["-c", "1", "-W", "1", &to.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `ping` succeeds within 5 s (retried: the first echo may wait for ARP on a
/// loaded machine).
fn pings(net: &Net, from: &str, to: std::net::Ipv4Addr) -> bool {
    eventually(Duration::from_secs(5), || ping(net, from, to))
}

/// Poll `f` every 50 ms for up to `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawn `sleep 1000` in `host` and wait until it is inside the namespace
/// (`ip netns exec` enters it just after the fork).
fn sleeper(net: &Net, host: &str) -> std::process::Child {
    let child = net
        .cmd(host, "sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    let ns = net.ns_name(host);
    let pid = child.id().to_string();
    assert!(
        eventually(Duration::from_secs(5), || understudy_tests::netns::run(
            "ip",
            &["netns", "pids", &ns]
        )
        .unwrap_or_default()
        .split_whitespace()
        .any(|p| p == pid)),
        "sleep never showed up in {ns}"
    );
    child
}

fn assert_killed(mut child: std::process::Child) {
    use std::os::unix::process::ExitStatusExt;
    let st = child.wait().expect("wait");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
}

fn assert_gone(prefix: &str) {
    let ns: Vec<String> = netns_list()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    let links: Vec<String> = root_links()
        .expect("ip link")
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(ns.is_empty(), "namespaces left behind: {ns:?}");
    assert!(links.is_empty(), "links left behind: {links:?}");
}

#[test]
fn names_and_addresses() {
    let net = net();
    let p = net.prefix().to_string();
    assert_eq!(p.len(), 6);
    assert!(p.starts_with("us"));
    assert_eq!(net.ns_name("fsa"), format!("{p}-fsa"));
    assert_eq!(net.root_veth("client"), format!("{p}v2"));
    assert!(net.root_veth("client").len() <= 15);
    assert_eq!(net.subnet_prefix(), 24);
    let o = net.bridge_addr().octets();
    assert!(o[0] == 198 && (o[1] == 18 || o[1] == 19) && o[3] == 1);
    assert_eq!(net.addr("fsa").octets()[..3], o[..3]);
    assert_eq!(net.addr("fsa").octets()[3], 10);
    assert_eq!(net.addr("client").octets()[3], 12);
    assert_eq!(net.free_addr(3).octets()[3], 103);
    let shown = net.ip_in("fsb", &["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        shown
            .as_deref()
            .unwrap_or("")
            .contains(&format!("{}/24", net.addr("fsb"))),
        "{shown:?}"
    );
}

#[test]
fn ping_and_tcp_echo_between_namespaces() {
    let net = net();
    assert!(pings(&net, "fsa", net.addr("fsb")), "fsa cannot ping fsb");
    assert!(
        pings(&net, "client", net.addr("fsa")),
        "client cannot ping fsa"
    );
    assert!(
        pings(&net, "fsb", net.bridge_addr()),
        "fsb cannot ping the bridge"
    );
    let echo = net
        .echo_server("fsb", sock(net.addr("fsb"), 0))
        .expect("echo server");
    assert!(net.tcp_probe("fsa", echo.addr, Duration::from_secs(2)));
    assert!(net.tcp_probe("client", echo.addr, Duration::from_secs(2)));
    // The listener lives in fsb's namespace only: the root namespace reaches it
    // through the bridge, not through a local socket.
    assert!(probe(echo.addr, Duration::from_secs(2)));
}

#[test]
fn cut_isolates_a_host_and_heal_restores_it() {
    let net = net();
    let echo = net
        .echo_server("fsb", sock(net.addr("fsb"), 0))
        .expect("echo server");
    assert!(net.tcp_probe("client", echo.addr, Duration::from_secs(2)));
    net.cut("fsb");
    assert!(!net.tcp_probe("client", echo.addr, Duration::from_millis(500)));
    assert!(
        !ping(&net, "fsb", net.bridge_addr()),
        "cut fsb still reaches the bridge"
    );
    assert!(!ping(&net, "fsa", net.addr("fsb")));
    // the others are unaffected
    assert!(pings(&net, "fsa", net.addr("client")));
    // the host cannot undo it from inside: its own eth0 is still up
    let link = net.ip_in("fsb", &["-o", "link", "show", "eth0"]).unwrap();
    assert!(
        link.contains("state LOWERLAYERDOWN") || link.contains("NO-CARRIER"),
        "{link}"
    );
    net.heal("fsb");
    assert!(
        eventually(Duration::from_secs(5), || net.tcp_probe(
            "client",
            echo.addr,
            Duration::from_millis(500)
        )),
        "fsb not reachable after heal"
    );
    assert!(pings(&net, "fsb", net.bridge_addr()));
}

#[test]
fn block_cuts_only_the_chosen_peer() {
    let net = net();
    let on_a = net
        .echo_server("fsa", sock(net.addr("fsa"), 0))
        .expect("echo on fsa");
    let on_client = net
        .echo_server("client", sock(net.addr("client"), 0))
        .expect("echo on client");
    let t = Duration::from_millis(700);
    net.block("fsa", net.addr("client"));
    net.block("fsa", net.addr("client")); // idempotent
    assert!(
        !net.tcp_probe("client", on_a.addr, t),
        "client still reaches fsa"
    );
    assert!(
        !net.tcp_probe("fsa", on_client.addr, t),
        "fsa still reaches client"
    );
    assert!(net.tcp_probe("fsb", on_a.addr, t), "fsb lost fsa");
    assert!(net.tcp_probe("fsb", on_client.addr, t), "fsb lost client");
    assert!(pings(&net, "fsa", net.bridge_addr()));

    // fsa cut off from the controllers (root namespace) only
    net.block("fsa", net.bridge_addr());
    assert!(!probe(on_a.addr, t), "the root namespace still reaches fsa");
    assert!(net.tcp_probe("fsb", on_a.addr, t));

    net.unblock("fsa", net.addr("client"));
    net.unblock("fsa", net.bridge_addr());
    net.unblock("fsa", net.bridge_addr()); // idempotent
    assert!(net.tcp_probe("client", on_a.addr, Duration::from_secs(2)));
    assert!(net.tcp_probe("fsa", on_client.addr, Duration::from_secs(2)));
    assert!(probe(on_a.addr, Duration::from_secs(2)));
}

#[test]
fn process_in_namespace_reaches_listener_on_bridge_address() {
    let net = net();
    let l = TcpListener::bind((net.bridge_addr(), 0)).expect("bind on the bridge address");
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().expect("accept");
        s.write_all(b"hello").unwrap();
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        peer
    });
    // bash's /dev/tcp: a real process inside the namespace, no helper needed
    let out = net
        .cmd("fsa", "timeout")
        .args([
            "5",
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/{port}; head -c 5 <&3",
                net.bridge_addr()
            ),
        ])
        .output()
        .expect("run bash in fsa");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip(),
        net.addr("fsa"),
        "connection came from fsa's address"
    );
}

#[test]
fn drop_kills_processes_and_removes_everything() {
    let net = net();
    let prefix = net.prefix().to_string();
    let bridge = net.bridge_addr();
    let sleeping = sleeper(&net, "fsa");
    net.block("fsb", net.addr("fsa"));
    net.cut("client");
    assert!(netns_list().unwrap().iter().any(|n| n.starts_with(&prefix)));
    drop(net);
    assert_gone(&prefix);
    assert_killed(sleeping);
    let addrs = understudy_tests::netns::run("ip", &["-o", "-4", "addr"]).unwrap();
    assert!(!addrs.contains(&format!(" {bridge}/")), "{addrs}");
}

#[test]
fn drop_cleans_up_after_a_panic() {
    let prefix = std::sync::Mutex::new(String::new());
    let child = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let net = net();
        *prefix.lock().unwrap() = net.prefix().to_string();
        *child.lock().unwrap() = Some(sleeper(&net, "fsb"));
        panic!("deliberate panic inside a test network (expected by this test)");
    });
    assert!(r.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_gone(&prefix);
    assert_killed(child.into_inner().unwrap().expect("sleep started"));
}

#[test]
fn cleanup_stale_removes_a_leaked_network() {
    let net = net();
    let prefix = net.prefix().to_string();
    let child = sleeper(&net, "fsa");
    Net::cleanup_stale(&prefix);
    assert_gone(&prefix);
    assert_killed(child);
    drop(net); // nothing left to remove: must not panic
}

/// Move a client address from fsa to fsb and measure how long the client takes to
/// reach it on fsb, without and with a gratuitous ARP (`arping -U`, as Pacemaker's
/// IPaddr2 does). SPEC §8: ~24 s without, ~0.03 s with.
#[test]
fn moved_address_with_and_without_gratuitous_arp() {
    let net = net();
    let port = 7000;
    let _on_a = net
        .echo_server("fsa", sock("0.0.0.0".parse().unwrap(), port))
        .unwrap();
    let _on_b = net
        .echo_server("fsb", sock("0.0.0.0".parse().unwrap(), port))
        .unwrap();
    let mut results = Vec::new();
    for (k, garp) in [(0u8, false), (1u8, true)] {
        let vip = net.free_addr(k);
        let cidr = format!("{vip}/{}", net.subnet_prefix());
        let target = sock(vip, port);
        net.ip_in("fsa", &["addr", "add", &cidr, "dev", "eth0"])
            .unwrap();
        assert!(
            eventually(Duration::from_secs(5), || net.tcp_probe(
                "client",
                target,
                Duration::from_millis(500)
            )),
            "client cannot reach {vip} on fsa"
        );
        let neigh = net
            .ip_in("client", &["neigh", "show", &vip.to_string()])
            .unwrap();
        eprintln!("client's neighbour entry before the move: {}", neigh.trim());

        let t0 = Instant::now();
        net.ip_in("fsa", &["addr", "del", &cidr, "dev", "eth0"])
            .unwrap();
        net.ip_in("fsb", &["addr", "add", &cidr, "dev", "eth0"])
            .unwrap();
        let arping = garp.then(|| {
            net.cmd("fsb", "arping")
                .args(["-q", "-U", "-c", "1", "-i", "eth0", "-S"])
                .arg(vip.to_string())
                .arg(vip.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("arping")
        });
        // UNDERSTUDY_GARP_CAP_S=40 waits long enough to see the ~24 s of SPEC §8.
        let cap = Duration::from_secs_f64(
            std::env::var("UNDERSTUDY_GARP_CAP_S")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3.0),
        );
        let took = net
            .run_in("client", move || loop {
                if probe(target, Duration::from_millis(20)) {
                    return Some(t0.elapsed());
                }
                if t0.elapsed() > cap {
                    return None;
                }
            })
            .unwrap();
        if let Some(mut a) = arping {
            let _ = a.kill();
            let _ = a.wait();
        }
        let neigh = net
            .ip_in("client", &["neigh", "show", &vip.to_string()])
            .unwrap();
        let label = if garp {
            "with arping -U"
        } else {
            "without gratuitous ARP"
        };
        match took {
            Some(d) => eprintln!("moved address {vip}, {label}: client connected after {d:?}"),
            None => eprintln!(
                "moved address {vip}, {label}: client not connected within {cap:?} (gave up)"
            ),
        }
        eprintln!("client's neighbour entry after: {}", neigh.trim());
        results.push((garp, took));
    }
    let with = results[1].1;
    assert!(
        with.is_some_and(|d| d < Duration::from_secs(2)),
        "with a gratuitous ARP the client should follow the address at once, took {with:?}"
    );
}
