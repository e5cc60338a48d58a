//! The demo: a whole Understudy cluster on this machine, shown live.
//!
//! Starts (as root) 3 controllers, a file server `fsa` and its backup `fsb` on the
//! DRBD emulator (block mode: ext4 on a replicated device, protocol C) with
//! nfs-ganesha, and a client, each host a network namespace on a bridge, then
//! plays a scenario while redrawing `understudyctl status`: a file written
//! through NFS on the client IP; a client writing files back to back; the file
//! server killed in the middle of the writes (processes SIGKILLed, cable cut);
//! the controller fences it, promotes fsb, exports NFS there and moves the client
//! IP, step by step with timings; the client reads the file back through the
//! same IP, and every write that was acknowledged (none lost). Meanwhile a spare
//! server, launched by the controller when fsa turned Suspect (the local cloud
//! boots a new namespace host after a launch delay), gets a fresh volume,
//! becomes fsb's backup and resyncs (progress and ETA shown) until the pair is
//! Healthy again; the dead fsa is then terminated, its volume kept. Ctrl-C ends
//! it and removes everything. Every link runs over mutual TLS with certificates
//! from `understudyctl certs` (the spare issues its own at boot).
//!
//! It prints the address of the live web dashboard (every controller serves
//! it) and, unless `--no-wait`, waits 10 s before the kill so it can be opened.
//!
//! `--no-wait` exits after the scenario instead of watching until Ctrl-C.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use understudy_tests::nscluster::{NsCluster, NsOptions, SpareOptions, Writer, PAIR, PSEUDO};
use understudy_tests::{ctl, pair, Creds};

struct Screen {
    started: Instant,
    events: Mutex<Vec<String>>,
    /// The web dashboard's address, once the cluster is up.
    dashboard: Mutex<String>,
}

impl Screen {
    fn event(&self, s: impl Into<String>) {
        let line = format!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            s.into()
        );
        self.events.lock().unwrap().push(line);
    }

    fn draw(&self, addrs: &[String], creds: &Creds) {
        let out = ctl(addrs, creds)
            .args(["--timeout-ms", "800", "status"])
            .output();
        let body = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        let events = self.events.lock().unwrap();
        let tail: Vec<&String> = events.iter().rev().take(22).collect();
        let mut s = String::from("\x1b[H\x1b[2J");
        s.push_str(
            "Understudy demo: 3 controllers, file server fsa + backup fsb (DRBD emulator, nfs-ganesha), a client\n",
        );
        let dash = self.dashboard.lock().unwrap().clone();
        if !dash.is_empty() {
            s.push_str(&format!(
                "live web dashboard: {dash} (any controller's address serves it)\n"
            ));
        }
        s.push_str("Ctrl-C to stop\n\n$ understudyctl status\n");
        s.push_str(&body);
        s.push_str("\nwhat happened:\n");
        for e in tail.into_iter().rev() {
            s.push_str(&format!("  {e}\n"));
        }
        print!("{s}");
        let _ = std::io::stdout().flush();
    }
}

fn main() {
    let no_wait = std::env::args().any(|a| a == "--no-wait");
    let stop = Arc::new(AtomicBool::new(false));
    // Block SIGINT in every thread (spawned threads inherit the mask) so that the
    // waiting thread below receives it and the cluster is cleaned up on Ctrl-C.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGINT);
                let mut sig = 0;
                libc::sigwait(&set, &mut sig);
            }
            stop.store(true, Ordering::SeqCst);
        });
    }

    let screen = Arc::new(Screen {
        started: Instant::now(),
        events: Mutex::new(Vec::new()),
        dashboard: Mutex::new(String::new()),
    });
    println!("starting: 3 controllers, file server fsa + backup fsb (DRBD emulator, nfs-ganesha) and a client, each host a network namespace ...");
    screen.event("starting 3 controllers and hosts fsa, fsb, client (network namespaces)");
    // A short pause before each failover step, so the steps can be watched.
    // Spares launch in 3 s (a cloud's launch time, shortened); the resync of the
    // 64 MiB disk is held to 8 MiB/s so its progress can be watched.
    let mut c = NsCluster::start_with(NsOptions {
        step_pause_ms: 300,
        spares: Some(SpareOptions {
            boot_delay_ms: 3000,
            ..SpareOptions::default()
        }),
        resync_rate_kib: Some(8 * 1024),
        ..Default::default()
    });
    let addrs = c.controllers.addrs.clone();
    let creds = c.controllers.creds.clone();
    let dashboard = format!("http://{}/", c.http[0]);
    *screen.dashboard.lock().unwrap() = dashboard.clone();
    println!("live web dashboard: {dashboard}");
    screen.event(format!(
        "web dashboard at {dashboard} (also http://{}/, http://{}/); Prometheus metrics at {dashboard}metrics",
        c.http[1], c.http[2]
    ));
    screen.event(format!(
        "fsa serves NFS on client IP {} (ganesha, {PSEUDO}); files and logs in {}",
        c.client_ip,
        c.dir.path().display()
    ));
    if let Some(pki) = &c.pki {
        screen.event(format!(
            "mutual TLS everywhere: CA and certificates in {} (understudyctl runs as operator test-admin, role admin)",
            pki.dir.display()
        ));
    }

    let drawing = Arc::new(AtomicBool::new(true));
    let painter = {
        let (screen, addrs, creds, drawing, stop) = (
            screen.clone(),
            addrs.clone(),
            creds.clone(),
            drawing.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while drawing.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                screen.draw(&addrs, &creds);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let pause = |secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let content = format!(
        "written through NFS by the demo, {:?} after start\n",
        screen.started.elapsed()
    );
    let mut scenario = || -> Result<(), String> {
        pause(2);
        c.nfs_write("hello.txt", content.as_bytes())?;
        screen.event(format!(
            "client wrote hello.txt through nfs://{}{PSEUDO}",
            c.client_ip
        ));
        screen.event(
            "(DRBD protocol C: the write was on fsb's disk before the client got its answer)",
        );
        let writer = c.start_writer("demo");
        screen.event("a client writes numbered files back to back through the client IP");
        pause(2);
        if !no_wait {
            screen.event(format!(
                "open {dashboard} in a browser to watch: fsa dies in 10 s"
            ));
            pause(10);
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        screen.event(format!(
            "KILL the file server fsa in the middle of the writes ({} acknowledged so far): SIGKILL agent, ganesha, DRBD; cable cut",
            writer.acked()
        ));
        let t0 = Instant::now();
        c.kill_host(0);
        let read = loop {
            if let Ok(d) = c.nfs_read("hello.txt") {
                break d;
            }
            if t0.elapsed() > Duration::from_secs(60) || stop.load(Ordering::SeqCst) {
                return Err("no NFS read within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        screen.event(format!(
            "client read hello.txt through the client IP {} ms after the kill: {}",
            t0.elapsed().as_millis(),
            if read == content.as_bytes() {
                "byte-identical"
            } else {
                "DIFFERENT"
            }
        ));
        // The writing client goes on through the new server, then stops; every
        // write it got an answer for is read back.
        let more = writer.acked() + 3;
        let until = Instant::now() + Duration::from_secs(30);
        while writer.acked() < more && Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let client = writer.client();
        let writes = writer.stop();
        let check = Writer::verify(&client, &writes, Duration::from_secs(30));
        screen.event(format!(
            "writing client: {} writes acknowledged, {} not (server dead or in its grace period); acknowledged writes lost: {}",
            check.acked,
            check.attempted - check.acked,
            check.lost.len()
        ));
        for (name, why) in &check.lost {
            screen.event(format!("  LOST {name}: {why}"));
        }
        if let Ok(s) = c.try_status() {
            for l in pair(&s, PAIR)["history"].as_array().into_iter().flatten() {
                let ev = l["event"].as_str().unwrap_or_default();
                if ev.starts_with("spare ")
                    || l["epoch"] == 1
                        && (ev.contains(" done in ")
                            || ev.contains("-> FailingOver")
                            || ev.contains("-> Degraded"))
                {
                    screen.event(format!("  history: {ev}"));
                }
            }
        }
        // Redundancy comes back by itself: the spare launched when fsa turned
        // Suspect becomes fsb's backup.
        let mut said_spare = false;
        let mut said_rebuild = 0;
        let mut last_eta = Instant::now() - Duration::from_secs(10);
        let healthy = loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(180) {
                return Err("the pair was not Healthy again within 180 s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
            let Ok(s) = c.try_status() else { continue };
            let p = pair(&s, PAIR);
            if !said_spare && p["spare"]["state"] == "launched" {
                said_spare = true;
                screen.event(format!(
                    "spare {} launched as instance {} at {} in {} ({})",
                    p["spare"]["server_id"].as_str().unwrap_or("?"),
                    p["spare"]["instance_id"].as_str().unwrap_or("?"),
                    p["spare"]["address"].as_str().unwrap_or("?"),
                    p["spare"]["zone"].as_str().unwrap_or("?"),
                    p["spare"]["reason"].as_str().unwrap_or("")
                ));
            }
            let steps = p["rebuild"]["steps"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for st in steps
                .iter()
                .filter(|x| x["status"] == "done")
                .skip(said_rebuild)
            {
                said_rebuild += 1;
                screen.event(format!(
                    "rebuild: {} done in {} ms: {}",
                    st["step"].as_str().unwrap_or("?"),
                    st["duration_ms"],
                    st["detail"].as_str().unwrap_or("")
                ));
            }
            if p["resync"]["eta_ms"].as_u64().is_some()
                && last_eta.elapsed() > Duration::from_secs(2)
            {
                last_eta = Instant::now();
                screen.event(format!(
                    "resync to {}: {:.1}% done, {:.0} KiB/s observed, ETA {:.1} s",
                    p["resync"]["server_id"].as_str().unwrap_or("?"),
                    p["resync"]["percent"].as_f64().unwrap_or(0.0),
                    p["resync"]["rate_kib_per_s"].as_f64().unwrap_or(0.0),
                    p["resync"]["eta_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
                ));
            }
            let fsa_gone = p["servers"]
                .as_array()
                .is_some_and(|a| a.iter().all(|v| v["id"] != "fs1-fsa"));
            if p["state"] == "Healthy" && fsa_gone {
                break s;
            }
        };
        let backup = pair(&healthy, PAIR)["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["id"] != "fs1-fsb"))
            .and_then(|v| v["id"].as_str())
            .unwrap_or("?")
            .to_string();
        screen.event(format!(
            "pair Healthy again {:.1} s after fsa died: fsb serves, {backup} (a fresh volume, fully resynced) is its backup",
            t0.elapsed().as_secs_f64()
        ));
        let retired = c.wait_status("fsa terminated", Duration::from_secs(30), |s| {
            pair(s, PAIR)["retired"][0]["terminated"] == true
        });
        screen.event(format!(
            "dead fsa terminated now that the pair is redundant again; its volume {} is kept until an operator releases it",
            pair(&retired, PAIR)["retired"][0]["volumes"][0]
                .as_str()
                .unwrap_or("?")
        ));
        Ok(())
    };
    if let Err(e) = scenario() {
        screen.event(format!("scenario step failed: {e}"));
    }
    if !no_wait {
        screen.event("watching; Ctrl-C to stop and clean up");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drawing.store(false, Ordering::SeqCst);
    let _ = painter.join();
    screen.draw(&addrs, &creds);
    println!(
        "\nstopping the cluster and removing {}",
        c.dir.path().display()
    );
}
