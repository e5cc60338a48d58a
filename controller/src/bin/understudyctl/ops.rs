//! `understudyctl`'s commands that change a pair, and the read side: history,
//! explain, watch. Parsing of durations and times.

use std::time::Duration;

use understudy_proto::operator_command_request::Command as Cmd;
use understudy_proto::{
    AckCommand, CancelSwitchoverCommand, EndMaintenanceCommand, ExplainRequest, HistoryRequest,
    MaintenanceCommand, OperatorCommandRequest, OperatorCommandResponse, PauseCommand,
    PromoteCommand, ResumeCommand, SwitchoverCommand, UnblockCommand, WatchRequest,
};

use understudy_tls::ClientTls;

use super::{leader_call, Args, CtlError, Output};

/// `30s`, `10m`, `2h`, `1d`, `1500ms` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 10m, 2h, 1d or 1500ms"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_millis(ms))
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `+10m` (from now) or `2026-12-01T18:00:00Z` (UTC) to Unix milliseconds.
pub fn parse_time(s: &str, now_unix_ms: i64) -> Result<i64, String> {
    if let Some(rel) = s.strip_prefix('+') {
        return Ok(now_unix_ms + parse_duration(rel)?.as_millis() as i64);
    }
    let bad = || format!("{s:?} is not a time like +10m or 2026-12-01T18:00:00Z (UTC)");
    let t = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, clock) = t.split_once('T').ok_or_else(bad)?;
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let c: Vec<&str> = clock.split(':').collect();
    if d.len() != 3 || c.len() != 3 {
        return Err(bad());
    }
    let (y, mo, da) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, mi, se) = (num(c[0])?, num(c[1])?, num(c[2])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    Ok(((days_from_civil(y, mo, da) * 24 + h) * 60 + mi) * 60_000 + se * 1000)
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a pair-changing subcommand asks for.
pub enum Change {
    Pause,
    Resume,
    Maintenance {
        duration: Duration,
        reason: String,
    },
    EndMaintenance,
    Ack,
    Unblock {
        reason: String,
    },
    Promote {
        to: String,
        force: bool,
        accept_data_loss: bool,
    },
    Switchover {
        to: String,
        at: Option<String>,
    },
    CancelSwitchover,
}

/// Send `change` for `pair` to the leader.
pub async fn change(
    args: &Args,
    tls: Option<&ClientTls>,
    pair: &str,
    change: Change,
) -> Result<OperatorCommandResponse, CtlError> {
    let command = match change {
        Change::Pause => Cmd::Pause(PauseCommand {}),
        Change::Resume => Cmd::Resume(ResumeCommand {}),
        Change::Maintenance { duration, reason } => Cmd::Maintenance(MaintenanceCommand {
            duration_ms: duration.as_millis() as u64,
            reason,
        }),
        Change::EndMaintenance => Cmd::EndMaintenance(EndMaintenanceCommand {}),
        Change::Ack => Cmd::Ack(AckCommand {}),
        Change::Unblock { reason } => Cmd::Unblock(UnblockCommand { reason }),
        Change::Promote {
            to,
            force,
            accept_data_loss,
        } => Cmd::Promote(PromoteCommand {
            to,
            force,
            accept_data_loss,
        }),
        Change::Switchover { to, at } => Cmd::Switchover(SwitchoverCommand {
            to,
            at_unix_ms: match at {
                Some(t) => parse_time(&t, now_unix_ms()).map_err(CtlError::Usage)?,
                None => 0,
            },
        }),
        Change::CancelSwitchover => Cmd::CancelSwitchover(CancelSwitchoverCommand {}),
    };
    let req = OperatorCommandRequest {
        pair_id: pair.to_string(),
        command: Some(command),
    };
    leader_call(args, tls, move |mut c| {
        let req = req.clone();
        async move { c.command(req).await }
    })
    .await
}

fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// `history [PAIR]`.
pub async fn history(
    args: &Args,
    tls: Option<&ClientTls>,
    pair: Option<String>,
) -> Result<(), CtlError> {
    let pair_id = pair.unwrap_or_default();
    let r = leader_call(args, tls, move |mut c| {
        let pair_id = pair_id.clone();
        async move { c.history(HistoryRequest { pair_id }).await }
    })
    .await?;
    match args.output {
        Output::Json => {
            let v = serde_json::json!({
                "pairs": r.pairs.iter().map(|p| serde_json::json!({
                    "pair_id": p.pair_id,
                    "lines": p.lines.iter().map(|l| serde_json::json!({
                        "at_unix_ms": l.at_unix_ms, "epoch": l.epoch, "event": l.event,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "audit": r.audit.iter().map(|a| serde_json::json!({
                    "at_unix_ms": a.at_unix_ms, "identity": a.identity, "pair_id": a.pair_id,
                    "command": a.command, "accepted": a.accepted, "outcome": a.outcome,
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        }
        Output::Table => {
            for p in &r.pairs {
                println!("pair {}:", p.pair_id);
                for l in &p.lines {
                    println!("  {}  epoch {:<3} {}", time(l.at_unix_ms), l.epoch, l.event);
                }
            }
            println!("audit (operator commands):");
            for a in &r.audit {
                println!(
                    "  {}  {:<8} {}  {}: {}",
                    time(a.at_unix_ms),
                    if a.accepted { "accepted" } else { "REFUSED" },
                    a.identity,
                    a.pair_id,
                    if a.accepted {
                        a.command.clone()
                    } else {
                        format!("{} ({})", a.command, a.outcome)
                    }
                );
            }
        }
    }
    Ok(())
}

/// `explain PAIR`.
pub async fn explain(args: &Args, tls: Option<&ClientTls>, pair: String) -> Result<(), CtlError> {
    let r = leader_call(args, tls, move |mut c| {
        let pair_id = pair.clone();
        async move { c.explain(ExplainRequest { pair_id }).await }
    })
    .await?;
    match args.output {
        Output::Json => {
            let v = serde_json::json!({
                "pair_id": r.pair_id, "state": r.state, "action": r.action, "reason": r.reason,
                "inputs": r.inputs, "alerts": r.alerts, "redundancy": r.redundancy,
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        }
        Output::Table => {
            println!("pair {} is {}", r.pair_id, r.state);
            println!("the controller does now: {}", r.action);
            println!("because: {}", r.reason);
            println!("inputs:");
            for i in &r.inputs {
                println!("  {i}");
            }
            for a in &r.alerts {
                println!("ALERT: {a}");
            }
            println!("redundancy: {}", r.redundancy);
        }
    }
    Ok(())
}

/// `watch [PAIR]`: until interrupted; follows the leader when it moves.
pub async fn watch(
    args: &Args,
    tls: Option<&ClientTls>,
    pair: Option<String>,
) -> Result<(), CtlError> {
    let pair_id = pair.unwrap_or_default();
    loop {
        let pid = pair_id.clone();
        let mut stream = leader_call(args, tls, move |mut c| {
            let pair_id = pid.clone();
            async move { c.watch(WatchRequest { pair_id }).await }
        })
        .await?;
        loop {
            match stream.message().await {
                Ok(Some(e)) => match args.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({
                            "at_unix_ms": e.at_unix_ms, "pair_id": e.pair_id, "epoch": e.epoch,
                            "state": e.state, "event": e.event,
                        })
                    ),
                    Output::Table => println!(
                        "{}  {}  epoch {:<3} {:<12} {}",
                        time(e.at_unix_ms),
                        e.pair_id,
                        e.epoch,
                        e.state,
                        e.event
                    ),
                },
                Ok(None) | Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_time("+10m", 1_000).unwrap(), 601_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z", 0).unwrap(), 1000);
        assert_eq!(
            parse_time("2026-12-01T18:00:00Z", 0).unwrap(),
            1_796_148_000_000
        );
        assert!(parse_time("2026-13-01T18:00:00Z", 0).is_err());
        assert!(parse_time("tomorrow", 0).is_err());
        assert_eq!(time(1_796_148_000_000), "2026-12-01 18:00:00.000");
    }
}
