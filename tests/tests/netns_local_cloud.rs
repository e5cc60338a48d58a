//! The `local` cloud backend against real network namespaces (the netns harness):
//! moving the client IP, isolation, forced stop and instance states.
//!
//! Needs root, iproute2, iptables, arping and iputils-ping.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use understudy_cloud::local::{LocalCloud, LocalConfig};
use understudy_cloud::{Cloud, CloudError, CloudServer, InstanceState};
use understudy_tests::netns::Net;

const PORT: u16 = 7000;

fn server(net: &Net, host: &str, zone: &str) -> CloudServer {
    let ns = net.ns_name(host);
    CloudServer {
        server_id: host.into(),
        instance_id: ns.clone(),
        interface_id: format!("{ns}:eth0"),
        zone: zone.into(),
    }
}

fn reach(net: &Net, from: &str, ip: Ipv4Addr) -> bool {
    net.tcp_probe(
        from,
        SocketAddr::from((ip, PORT)),
        Duration::from_millis(500),
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_isolate_and_force_stop() {
    let net = Net::new(&["fsa", "fsb", "client"])
        .unwrap_or_else(|e| panic!("cannot build the namespace network: {e}"));
    let cloud = LocalCloud::new(LocalConfig::new(
        format!("{}-", net.prefix()),
        net.subnet_prefix(),
    ));
    assert_eq!(cloud.name(), "local");
    let (fsa, fsb) = (server(&net, "fsa", "zone-a"), server(&net, "fsb", "zone-a"));
    let any: SocketAddr = SocketAddr::from(([0, 0, 0, 0], PORT));
    let _echo_a = net.echo_server("fsa", any).unwrap();
    let _echo_b = net.echo_server("fsb", any).unwrap();

    // The client IP starts on fsa.
    let vip = net.free_addr(0);
    let vip_s = vip.to_string();
    let cidr = format!("{vip}/{}", net.subnet_prefix());
    net.ip_in("fsa", &["addr", "add", &cidr, "dev", "eth0"])
        .unwrap();
    assert_eq!(
        cloud.ip_holders(&vip_s).await.unwrap(),
        vec![fsa.interface_id.clone()]
    );
    assert!(
        reach(&net, "client", vip),
        "client cannot reach {vip} on fsa"
    );

    // A move across zones is refused and changes nothing.
    let elsewhere = server(&net, "fsb", "zone-b");
    let e = cloud
        .move_client_ip(&vip_s, &fsa, &elsewhere)
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::Refused { .. }), "{e}");
    assert_eq!(
        cloud.ip_holders(&vip_s).await.unwrap(),
        vec![fsa.interface_id.clone()]
    );

    // Move to fsb: gone from fsa, not yet on fsb (the backup's agent claims it).
    cloud.move_client_ip(&vip_s, &fsa, &fsb).await.unwrap();
    let on_a = net.ip_in("fsa", &["-o", "-4", "addr", "show"]).unwrap();
    assert!(!on_a.contains(&format!(" {vip}/")), "{on_a}");
    assert!(cloud.ip_holders(&vip_s).await.unwrap().is_empty());
    cloud.move_client_ip(&vip_s, &fsa, &fsb).await.unwrap(); // idempotent

    // The backup claims it and announces it; the client follows.
    net.ip_in("fsb", &["addr", "add", &cidr, "dev", "eth0"])
        .unwrap();
    let garp = net
        .cmd("fsb", "arping")
        .args(["-q", "-U", "-c", "1", "-i", "eth0", "-S", &vip_s, &vip_s])
        .status()
        .unwrap();
    // Habets arping exits 1 when nobody answers, as expected for an unsolicited ARP.
    eprintln!("arping -U: {garp}");
    assert_eq!(
        cloud.ip_holders(&vip_s).await.unwrap(),
        vec![fsb.interface_id.clone()]
    );
    assert!(
        eventually(Duration::from_secs(3), || reach(&net, "client", vip)),
        "client does not reach {vip} on fsb"
    );

    // Isolate fsa: unreachable from the client, fsb still reachable; the host
    // itself cannot undo it (its eth0 stays up, the cut is on the root side).
    assert!(!cloud.is_isolated(&fsa).await.unwrap());
    assert!(reach(&net, "client", net.addr("fsa")));
    cloud.isolate(&fsa).await.unwrap();
    cloud.isolate(&fsa).await.unwrap(); // idempotent
    assert!(cloud.is_isolated(&fsa).await.unwrap());
    assert!(!cloud.is_isolated(&fsb).await.unwrap());
    assert!(
        !reach(&net, "client", net.addr("fsa")),
        "isolated fsa still reachable"
    );
    assert!(reach(&net, "client", net.addr("fsb")), "fsb lost with fsa");
    let _ = net.ip_in("fsa", &["link", "set", "eth0", "up"]);
    assert!(
        !reach(&net, "client", net.addr("fsa")),
        "fsa undid its isolation from inside"
    );

    // Force stop: processes in fsa die, the call does not wait; Running -> Stopped.
    let mut sleeper = net.cmd("fsa", "sleep").arg("1000").spawn().unwrap();
    // `ip netns exec` enters the namespace just after the fork: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cloud.instance_state(&fsa).await.unwrap() != InstanceState::Running {
        assert!(
            Instant::now() < deadline,
            "fsa never Running with a sleep in it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    cloud.force_stop(&fsa).await.unwrap();
    eprintln!("force_stop returned after {:?}", t0.elapsed());
    let st = sleeper.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    let mut state = cloud.instance_state(&fsa).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state != InstanceState::Stopped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        state = cloud.instance_state(&fsa).await.unwrap();
    }
    assert_eq!(state, InstanceState::Stopped);
    cloud.force_stop(&fsa).await.unwrap(); // idempotent on a stopped instance

    // A namespace that does not exist: Terminated, force_stop is a no-op, and the
    // operations that need the interface say what is missing.
    let gone = server(&net, "fsa", "zone-a");
    let gone = CloudServer {
        instance_id: format!("{}-gone", net.prefix()),
        interface_id: format!("{}-gone:eth0", net.prefix()),
        ..gone
    };
    assert_eq!(
        cloud.instance_state(&gone).await.unwrap(),
        InstanceState::Terminated
    );
    cloud.force_stop(&gone).await.unwrap();
    let e = cloud.isolate(&gone).await.unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    eprintln!("isolate of a missing namespace: {e}");
    let e = cloud.move_client_ip(&vip_s, &fsb, &gone).await.unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    assert_eq!(
        cloud.ip_holders(&vip_s).await.unwrap(),
        vec![fsb.interface_id.clone()],
        "a refused move must leave the address where it was"
    );
}
