//! The dashboards against a running demo cluster (root, namespaces): the JSON
//! and Prometheus endpoints before and after a failover (counters and
//! histograms move, read with a real text-format parser), and the web dashboard
//! in a headless Chromium, which follows the file server's death live, without
//! a reload. Screenshots are saved as test artifacts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value as PromValue};
use serde_json::Value;
use understudy_tests::nscluster::{Invariants, NsCluster, NsOptions, PAIR};
use understudy_tests::webdriver::Browser;
use understudy_tests::{http_get, pair};

/// Where the screenshots go: `$UNDERSTUDY_ARTIFACTS` or `target/test-artifacts`.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("UNDERSTUDY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
        });
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// The leader's HTTP address (following a follower's redirect).
fn leader_http(c: &NsCluster) -> String {
    for h in &c.http {
        let (code, _, _) = http_get(h, "/health/leader");
        if code == 200 {
            return h.clone();
        }
    }
    panic!("no controller answers 200 on /health/leader: {:?}", c.http);
}

/// Scrape and parse `/metrics`; every line must be understood by the parser.
fn scrape(addr: &str) -> Scrape {
    let (code, head, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for l in body.lines() {
        assert!(
            !matches!(
                prometheus_parse::LineInfo::parse(l),
                prometheus_parse::LineInfo::Ignored
            ),
            "a line the Prometheus text-format parser cannot read: {l:?}"
        );
    }
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

fn labels_match(s: &prometheus_parse::Sample, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
}

/// The value of the one gauge or counter sample `name{want...}`.
fn value(sc: &Scrape, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    sc.samples
        .iter()
        .find(|s| s.metric == name && labels_match(s, want))
        .map(|s| match &s.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
}

/// `step -> +Inf count` of the step-duration histogram for `kind`.
fn step_counts(sc: &Scrape, kind: &str) -> BTreeMap<String, f64> {
    sc.samples
        .iter()
        .filter(|s| s.metric == "understudy_step_duration_seconds")
        .filter(|s| s.labels.get("kind") == Some(kind))
        .map(|s| {
            let PromValue::Histogram(b) = &s.value else {
                panic!("not a histogram: {s:?}")
            };
            assert!(
                b.windows(2).all(|w| w[0].count <= w[1].count),
                "cumulative buckets decrease: {b:?}"
            );
            let inf = b
                .iter()
                .find(|x| x.less_than.is_infinite())
                .expect("+Inf bucket");
            (s.labels.get("step").unwrap().to_string(), inf.count)
        })
        .collect()
}

fn get_json(addr: &str, path: &str) -> Value {
    let (code, _, body) = http_get(addr, path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

#[test]
fn json_and_metrics_endpoints_move_with_a_failover() {
    let mut c = NsCluster::start_with(NsOptions {
        json_logs: true,
        ..Default::default()
    });
    let _logs = c.keep_logs_on_panic();
    let l = leader_http(&c);

    // Before: Healthy, no plan finished, both agents connected, per-server DRBD.
    let before = scrape(&l);
    let fs = |s: &str| s.to_string();
    assert_eq!(
        value(
            &before,
            "understudy_pair_state",
            &[("pair", PAIR), ("state", "Healthy")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&before, "understudy_raft_is_leader", &[]), Some(1.0));
    assert_eq!(value(&before, "understudy_raft_voters", &[]), Some(3.0));
    assert_eq!(value(&before, "understudy_agent_sessions", &[]), Some(2.0));
    assert_eq!(
        value(&before, "understudy_raft_apply_lag_entries", &[]),
        Some(0.0)
    );
    for (server, role, disk) in [
        ("fs1-fsa", "Primary", "UpToDate"),
        ("fs1-fsb", "Secondary", "UpToDate"),
    ] {
        assert_eq!(
            value(
                &before,
                "understudy_drbd_role",
                &[("server", server), ("role", role)]
            ),
            Some(1.0),
            "{server}"
        );
        assert_eq!(
            value(
                &before,
                "understudy_drbd_disk_state",
                &[("server", server), ("disk", disk)]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &before,
                "understudy_drbd_out_of_sync_bytes",
                &[("server", server)]
            ),
            Some(0.0)
        );
        let age = value(
            &before,
            "understudy_server_report_age_seconds",
            &[("server", server)],
        )
        .expect("report age");
        assert!(age < 5.0, "{server}'s report is {age} s old");
    }
    assert_eq!(
        value(
            &before,
            "understudy_server_client_ip",
            &[("server", "fs1-fsa")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &before,
            "understudy_failovers_total",
            &[
                ("pair", PAIR),
                ("kind", "failover"),
                ("outcome", "succeeded")
            ]
        ),
        None,
        "no failover yet"
    );
    assert!(step_counts(&before, "failover").is_empty());
    // A follower answers for itself: its Raft figures and the replicated pair
    // state, not the leader-only per-server figures.
    let f = c.http.iter().find(|h| **h != l).unwrap();
    let fol = scrape(f);
    assert_eq!(value(&fol, "understudy_raft_is_leader", &[]), Some(0.0));
    assert_eq!(
        value(
            &fol,
            "understudy_pair_state",
            &[("pair", PAIR), ("state", "Healthy")]
        ),
        Some(1.0)
    );
    assert!(value(&fol, "understudy_drbd_role", &[]).is_none());

    // The file server dies; the backup takes over.
    c.kill_host(0);
    let s = c.wait_status("failover to fsb", Duration::from_secs(60), |s| {
        pair(s, PAIR)["state"] == "Degraded" && pair(s, PAIR)["serving"] == "fs1-fsb"
    });
    let epoch = pair(&s, PAIR)["epoch"].as_u64().unwrap();
    let l = leader_http(&c);
    let after = scrape(&l);
    assert_eq!(
        value(
            &after,
            "understudy_pair_state",
            &[("pair", PAIR), ("state", "Degraded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "understudy_pair_state",
            &[("pair", PAIR), ("state", "Healthy")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&after, "understudy_pair_epoch", &[("pair", PAIR)]),
        Some(epoch as f64)
    );
    assert_eq!(
        value(
            &after,
            "understudy_failovers_total",
            &[
                ("pair", PAIR),
                ("kind", "failover"),
                ("outcome", "succeeded")
            ]
        ),
        Some(1.0)
    );
    let steps = step_counts(&after, "failover");
    for step in [
        "Confirm", "Fence", "Promote", "Mount", "Export", "ClaimIp", "Verify",
    ] {
        assert_eq!(steps.get(step), Some(&1.0), "step {step} in {steps:?}");
    }
    let took = value(
        &after,
        "understudy_last_failover_duration_seconds",
        &[("pair", PAIR), ("kind", "failover")],
    )
    .expect("last failover duration");
    assert!(took > 0.0 && took < 30.0, "{took}");
    assert_eq!(
        value(
            &after,
            "understudy_pair_serving",
            &[("pair", PAIR), ("server", "fs1-fsb")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "understudy_drbd_role",
            &[("server", "fs1-fsb"), ("role", "Primary")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "understudy_server_client_ip",
            &[("server", "fs1-fsb")]
        ),
        Some(1.0)
    );
    // The dead server: not connected, its report ageing.
    assert_eq!(
        value(
            &after,
            "understudy_server_connected",
            &[("server", "fs1-fsa")]
        ),
        Some(0.0)
    );

    // The JSON of the pair: the last failover with every step and its timing.
    let p = get_json(&l, &format!("/api/v1/pairs/{PAIR}"));
    assert_eq!(p["state"], "Degraded");
    let last = &p["last_failover"];
    assert_eq!(last["kind"], "failover", "{p}");
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["from"], fs("fs1-fsa"));
    assert_eq!(last["to"], fs("fs1-fsb"));
    assert!(
        last["finished_unix_ms"].as_i64().unwrap() >= last["started_unix_ms"].as_i64().unwrap()
    );
    let st = last["steps"].as_array().unwrap();
    assert_eq!(st.len(), 7);
    assert!(
        st.iter()
            .all(|x| x["status"] == "done" && x["duration_ms"].is_u64()),
        "{last}"
    );
    // The health check a load balancer reads: serving without a backup.
    let (code, _, _) = http_get(&l, &format!("/health/pair/{PAIR}"));
    assert_eq!(code, 429);
    // The history has the failover.
    let h = get_json(&l, "/api/v1/history");
    let lines = h["pairs"][0]["lines"].as_array().unwrap();
    assert!(lines.iter().any(|x| x["event"]
        .as_str()
        .unwrap()
        .contains("FailingOver -> Degraded")));
    // The counters are replicated: a follower says the same.
    let f = c.http.iter().find(|h| **h != l).unwrap();
    let fol = scrape(f);
    assert_eq!(
        value(
            &fol,
            "understudy_failovers_total",
            &[
                ("pair", PAIR),
                ("kind", "failover"),
                ("outcome", "succeeded")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(step_counts(&fol, "failover"), steps);

    // The leader's log: JSON lines; each failover step a span with the pair,
    // the epoch, the step, its outcome and duration.
    let leader = understudy_tests::Cluster::leader_index(&s).expect("leader");
    let log =
        c.controllers.configs[leader].with_file_name(format!("controller-{}.log", leader + 1));
    let text = std::fs::read_to_string(&log).expect("leader log");
    let mut done = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        if v["fields"]["message"] != "step done" {
            continue;
        }
        let spans = v["spans"].as_array().expect("span list");
        let Some(plan) = spans.iter().find(|x| x["name"] == "failover") else {
            continue;
        };
        assert_eq!(plan["pair"], PAIR, "{line}");
        assert_eq!(plan["epoch"], epoch, "{line}");
        assert_eq!(plan["kind"], "failover", "{line}");
        let step = &v["span"];
        assert_eq!(step["name"], "step", "{line}");
        assert_eq!(step["outcome"], "done", "{line}");
        assert!(step["duration_ms"].is_u64(), "{line}");
        done.insert(
            step["step"].as_str().unwrap().to_string(),
            step["duration_ms"].clone(),
        );
    }
    for step in [
        "Confirm", "Fence", "Promote", "Mount", "Export", "ClaimIp", "Verify",
    ] {
        assert!(
            done.contains_key(step),
            "no JSON log line for step {step}: {done:?}"
        );
    }
}

/// The states the pair's row showed, in order, recorded by the page itself on
/// every render (a MutationObserver), plus whether the page was reloaded.
const RECORDER: &str = r#"
if (!window.__rec) {
  window.__rec = { states: [], staleAgeText: null, loadMark: Math.random() };
  const seen = () => {
    const row = document.querySelector('.pair[data-pair="fs1"]');
    if (!row) return;
    const s = row.dataset.state;
    const a = window.__rec.states;
    if (a[a.length - 1] !== s) a.push(s);
    const fsa = row.querySelector('tr.server[data-server="fs1-fsa"]');
    const age = fsa ? fsa.querySelector('td.age').textContent : '';
    if (fsa && fsa.dataset.stale === 'true' && age.includes('(stale)') && !window.__rec.staleAgeText) {
      window.__rec.staleAgeText = age;
      window.__rec.staleColor = getComputedStyle(fsa.querySelector('td')).color;
    }
  };
  new MutationObserver(seen).observe(document.getElementById('pairs'), { childList: true, subtree: true, attributes: true });
  seen();
}
return { states: window.__rec.states, staleAgeText: window.__rec.staleAgeText,
         staleColor: window.__rec.staleColor, loadMark: window.__rec.loadMark, navigations: performance.getEntriesByType('navigation').length,
         live: document.getElementById('conn').dataset.live,
         timelineSteps: [...document.querySelectorAll('.pair[data-pair="fs1"] .timeline .seg[data-step]')].map(e => e.dataset.step) };
"#;

#[test]
fn the_web_dashboard_follows_a_failover_live_in_a_real_browser() {
    let mut c = NsCluster::start_with(NsOptions {
        // A short pause before each step, so FailingOver lasts long enough to
        // be seen and photographed mid-flight.
        step_pause_ms: 300,
        ..Default::default()
    });
    let _logs = c.keep_logs_on_panic();
    let dir = artifacts();
    let b = Browser::start(1400, 1000, &c.dir.path().join("chromedriver.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    // Any controller serves the page; a follower's event stream redirects to
    // the leader. Open a follower's address on purpose when there is one.
    let l = leader_http(&c);
    let page = c.http.iter().find(|h| **h != l).unwrap();
    b.open(&format!("http://{page}/"))
        .expect("open the dashboard");
    let t0 = Instant::now();
    let first = loop {
        let r = b.eval(RECORDER).expect("script");
        if r["states"].as_array().unwrap().last() == Some(&Value::from("Healthy"))
            && r["live"] == "true"
        {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the dashboard never showed fs1 Healthy and live: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    b.screenshot(&dir.join("dashboard-healthy.png")).unwrap();
    let mark = first["loadMark"].clone();

    let inv = Invariants::watch(&c);
    c.kill_host(0);
    let t0 = Instant::now();
    let mut mid_flight = false;
    let seen = loop {
        let r = b.eval(RECORDER).expect("script");
        let states: Vec<&str> = r["states"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        if !mid_flight && states.last() == Some(&"FailingOver") {
            // The README's picture: the timeline growing step by step.
            std::thread::sleep(Duration::from_millis(900));
            b.screenshot(&dir.join("dashboard-failover.png")).unwrap();
            mid_flight = true;
        }
        if states.last() == Some(&"Degraded") && r["staleAgeText"].is_string() {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the dashboard did not follow the failover: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    b.screenshot(&dir.join("dashboard-degraded.png")).unwrap();
    inv.check();
    eprintln!("dashboard states: {}", seen["states"]);
    eprintln!(
        "screenshots: {}",
        dir.join("dashboard-{healthy,failover,degraded}.png")
            .display()
    );

    // Healthy, then FailingOver, then Degraded, seen by the page without a
    // reload (the same page object, one navigation).
    let states: Vec<&str> = seen["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    let pos = |s: &str| {
        states
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("the row never showed {s}: {states:?}"))
    };
    assert!(pos("Healthy") < pos("FailingOver"), "{states:?}");
    assert!(pos("FailingOver") < pos("Degraded"), "{states:?}");
    assert!(mid_flight);
    assert_eq!(seen["loadMark"], mark, "the page was reloaded");
    assert_eq!(seen["navigations"], 1);
    // The dead server's row is greyed with the age of its last report.
    let age = seen["staleAgeText"].as_str().unwrap();
    assert!(age.contains("ago (stale)"), "{age}");
    // Greyed: the stale row's text is the grey of `tr.server.stale td`.
    assert_eq!(seen["staleColor"], "rgb(154, 163, 174)", "{seen}");
    // The last failover's timeline has a bar per step.
    let bars: Vec<&str> = seen["timelineSteps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for step in [
        "Confirm", "Fence", "Promote", "Mount", "Export", "ClaimIp", "Verify",
    ] {
        assert!(bars.contains(&step), "no bar for {step}: {bars:?}");
    }
}
