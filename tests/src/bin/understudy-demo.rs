//! The demo: a whole Understudy cluster on this machine, shown live.
//!
//! Starts 3 controllers, a file server and its backup on the DRBD emulator and
//! their agents (all real processes on loopback, in a temporary directory), then
//! plays a short scenario while redrawing `understudyctl status` in the terminal:
//! initial sync, files written on the file server replicating, the Raft leader
//! killed and replaced, the replication link lost ("running unprotected") and
//! recovered. Ctrl-C ends it and removes everything.
//!
//! `--no-wait` exits after the scenario instead of watching until Ctrl-C.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use understudy_tests::{bin, pair, pair_healthy, Cluster, RESOURCE};

struct Screen {
    started: Instant,
    events: Mutex<Vec<String>>,
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

    fn draw(&self, addrs: &str) {
        let out = Command::new(bin("understudyctl"))
            .args(["--controllers", addrs, "--timeout-ms", "800", "status"])
            .output();
        let body = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        let events = self.events.lock().unwrap();
        let tail: Vec<&String> = events.iter().rev().take(12).collect();
        let mut s = String::from("\x1b[H\x1b[2J");
        s.push_str(
            "Understudy demo: 3 controllers, file server fs1-a + backup fs1-b (DRBD emulator)\n",
        );
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
            // A plain Ctrl-C handler without extra crates: wait on SIGINT via sigwait.
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
    });
    screen.event("starting 3 controllers, 2 DRBD emulator hosts and 2 agents");
    let mut c = Cluster::start(3);
    let addrs = c.controller_addrs.join(",");
    screen.event(format!(
        "cluster files and logs in {}",
        c.dir.path().display()
    ));
    screen.event("fs1-a promoted with `drbdadm primary --force r0`: initial sync to fs1-b");

    // Redraw in the background while the scenario runs.
    let drawing = Arc::new(AtomicBool::new(true));
    let painter = {
        let (screen, addrs, drawing, stop) =
            (screen.clone(), addrs.clone(), drawing.clone(), stop.clone());
        std::thread::spawn(move || {
            while drawing.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                screen.draw(&addrs);
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let pause = |secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let scenario = || -> Result<(), String> {
        let healthy = |c: &Cluster, what: &str| {
            c.wait_status(what, Duration::from_secs(60), pair_healthy);
        };
        healthy(&c, "initial sync");
        screen.event("fs1-b is UpToDate and in sync: pair Healthy");
        pause(3);

        screen.event("writing 32 files of 256 KiB on the file server fs1-a");
        for i in 0..32 {
            let data: Vec<u8> = (0..256 * 1024).map(|b| (b as u8) ^ (i as u8)).collect();
            std::fs::write(c.hosts[0].data_dir.join(format!("user-file-{i:02}")), data)
                .map_err(|e| e.to_string())?;
        }
        healthy(&c, "replication of new files");
        screen.event("replicated: out-of-sync back to 0");
        pause(3);
        Ok(())
    };
    if let Err(e) = scenario() {
        screen.event(format!("scenario step failed: {e}"));
    }
    if !stop.load(Ordering::SeqCst) {
        let s = c.try_status().unwrap_or_default();
        if let Some(l) = Cluster::leader_index(&s) {
            screen.event(format!("SIGKILL controller {} (the Raft leader)", l + 1));
            let t = Instant::now();
            c.kill_controller(l);
            let s = c.wait_status("new leader", Duration::from_secs(10), |s| {
                Cluster::leader_index(s).is_some_and(|n| n != l)
            });
            screen.event(format!(
                "controller {} elected leader after {} ms; agents follow it",
                Cluster::leader_index(&s).unwrap() + 1,
                t.elapsed().as_millis()
            ));
            pause(3);
            c.start_controller(l);
            screen.event(format!(
                "controller {} restarted: rejoins as a follower",
                l + 1
            ));
            pause(2);
        }
    }
    if !stop.load(Ordering::SeqCst) {
        screen.event("SIGKILL fs1-b's DRBD emulator: the replication link is gone");
        if let Some(p) = c.hosts[1].emu.take() {
            p.kill();
        }
        let s = c.wait_status("alert", Duration::from_secs(15), |s| {
            pair(s, "fs1")["alerts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        });
        for a in pair(&s, "fs1")["alerts"].as_array().into_iter().flatten() {
            screen.event(format!("alert: {}", a.as_str().unwrap_or_default()));
        }
        screen.event("no failover: the file server is still serving (S2 needs two witnesses)");
        pause(4);
        c.hosts[1].start_emulator();
        screen.event(format!(
            "fs1-b's emulator restarted: it reconnects and resyncs {RESOURCE}"
        ));
        let _ = c.wait_status("resync", Duration::from_secs(60), pair_healthy);
        screen.event("pair Healthy again");
        screen.event("file-server failover (fence, promote, NFS, client IP) is not built yet");
    }
    if !no_wait {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drawing.store(false, Ordering::SeqCst);
    let _ = painter.join();
    screen.draw(&addrs);
    println!(
        "\nstopping the cluster and removing {}",
        c.dir.path().display()
    );
}
