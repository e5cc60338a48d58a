//! The HTTP API of a real loopback cluster: JSON status from the leader (a
//! follower redirects), a pair and 404, history, health checks that a load
//! balancer can use, and the server-sent event stream following a command.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use understudy_tests::{http_get as get, pair, Cluster};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn the_http_api_serves_the_leaders_view_and_health_checks() {
    let c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let s = c.wait_status("pair healthy", Duration::from_secs(60), |s| {
        pair(s, "fs1")["state"] == "Healthy"
    });
    let leader = Cluster::leader_index(&s).unwrap();
    let follower = (leader + 1) % 3;
    let (l, f) = (&c.http[leader], &c.http[follower]);

    // Every node answers /health; only the leader /health/leader.
    for (i, h) in c.http.iter().enumerate() {
        let (code, head, body) = get(h, "/health");
        assert_eq!(code, 200, "{body}");
        let role = if i == leader { "leader" } else { "follower" };
        assert_eq!(json(&body)["role"], role);
        assert!(
            head.contains(&format!("x-understudy-role: {role}")),
            "{head}"
        );
        let (code, _, _) = get(h, "/health/leader");
        assert_eq!(code, if i == leader { 200 } else { 503 });
    }

    // The status as JSON, from the leader; a follower redirects to it.
    let (code, _, body) = get(l, "/api/v1/status");
    assert_eq!(code, 200, "{body}");
    let st = json(&body);
    assert_eq!(st["pairs"][0]["id"], "fs1");
    assert_eq!(st["pairs"][0]["state"], "Healthy");
    assert_eq!(st["pairs"][0]["servers"].as_array().unwrap().len(), 2);
    let (code, head, _) = get(f, "/api/v1/status");
    assert_eq!(code, 307);
    assert!(
        head.contains(&format!("location: http://{l}/api/v1/status")),
        "{head}"
    );
    assert!(head.contains("x-understudy-role: follower"), "{head}");

    // One pair, an unknown one, the history.
    let (code, _, body) = get(l, "/api/v1/pairs/fs1");
    assert_eq!(code, 200);
    assert_eq!(json(&body)["serving"], "fs1-a");
    let (code, _, _) = get(l, "/api/v1/pairs/nope");
    assert_eq!(code, 404);
    let (code, _, body) = get(l, "/api/v1/history");
    assert_eq!(code, 200);
    assert!(json(&body)["pairs"][0]["lines"].as_array().unwrap().len() > 1);

    // The pair check a load balancer polls: 200 while Healthy.
    let (code, _, body) = get(l, "/health/pair/fs1");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["state"], "Healthy");
    let (code, _, _) = get(l, "/health/pair/nope");
    assert_eq!(code, 404);

    // The event stream carries what is committed from now on: pause the pair.
    let mut sse = TcpStream::connect(l.as_str()).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        sse,
        "GET /api/v1/events HTTP/1.1\r\nHost: {l}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(sse);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    let out = c.controllers.ctl().args(["pause", "fs1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = String::new();
    while !got.contains("operator") {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with("data:") {
            got.push_str(&line);
        }
    }
    assert!(
        got.contains("pause: accepted") && got.contains("\"state\":\"Paused\""),
        "{got}"
    );
    // Paused: serving but not failing over automatically: not 200.
    let (code, _, _) = get(l, "/health/pair/fs1");
    assert_eq!(code, 429);
}
