//! The full fault matrix (issue 11): every scenario (or `--only NAME`, repeatable)
//! over `--seeds N` seeds (default 5; `--first-seed S`, default 1), one run at a
//! time, against the namespace cluster (root only). Prints one line per run and
//! then a table (scenario, seeds, failovers, invariant violations, time to
//! serve again p50 / max, convergence, writes), written to `--out FILE` too
//! (default `fault-matrix.md`), with every violation listed below it. Exit 1
//! if any run had a violation (or could not run).
//!
//! `cargo build --workspace --bins && nice ./target/debug/fault-matrix --seeds 5`

use std::time::Instant;

use understudy_tests::faults::{describe, run, scenarios, table, Outcome};

fn main() {
    let mut only: Vec<String> = Vec::new();
    let mut seeds = 5u64;
    let mut first = 1u64;
    let mut out = String::from("fault-matrix.md");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--only" => only.push(val()),
            "--seeds" => seeds = val().parse().expect("--seeds N"),
            "--first-seed" => first = val().parse().expect("--first-seed S"),
            "--out" => out = val(),
            "--list" => {
                for s in scenarios() {
                    println!("{:32} {}", s.name, s.about);
                }
                return;
            }
            _ => {
                eprintln!("usage: fault-matrix [--only NAME]... [--seeds N] [--first-seed S] [--out FILE] [--list]");
                std::process::exit(2);
            }
        }
    }
    let all = scenarios();
    for o in &only {
        assert!(
            all.iter().any(|s| &s.name == o),
            "no scenario {o} (see --list)"
        );
    }
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    for sc in all
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
    {
        for seed in first..first + seeds {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(sc, seed)));
            match r {
                Ok(o) => {
                    println!("{}", describe(&o));
                    for v in &o.violations {
                        println!("  VIOLATION: {v}");
                    }
                    outcomes.push(o);
                }
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    println!("{} seed {seed}: COULD NOT RUN: {msg}", sc.name);
                    broken.push(format!("{} seed {seed}: {msg}", sc.name));
                }
            }
        }
    }
    let mut report = format!(
        "Fault matrix: {} runs in {:.0} min\n\n{}",
        outcomes.len(),
        started.elapsed().as_secs_f64() / 60.0,
        table(&outcomes)
    );
    let violations: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            o.violations.iter().map(move |v| {
                format!(
                    "- {} seed {}: {v} (logs: {})",
                    o.scenario,
                    o.seed,
                    o.logs.as_deref().unwrap_or("-")
                )
            })
        })
        .collect();
    if !violations.is_empty() {
        report.push_str(&format!("\nViolations:\n{}\n", violations.join("\n")));
    }
    if !broken.is_empty() {
        report.push_str(&format!(
            "\nRuns that could not run:\n- {}\n",
            broken.join("\n- ")
        ));
    }
    println!("\n{report}");
    std::fs::write(&out, &report).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!("written to {out}");
    if !violations.is_empty() || !broken.is_empty() {
        std::process::exit(1);
    }
}
