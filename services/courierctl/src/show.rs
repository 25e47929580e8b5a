//! Printing answers: aligned tables for people, JSON (`--json`) for scripts. Each function
//! returns the exit code the answer means.

use courier_proto::admin::v1 as pb;
use serde::Serialize;

use crate::exit::{self, Failure};

/// `println!` that ends the program quietly when stdout is closed (`courierctl … | head`).
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(exit::OK);
        }
    }};
}

type Out = Result<i32, Failure>;

fn json<T: Serialize>(value: &T) -> Out {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(exit::OTHER, format!("cannot print JSON: {e}")))?;
    println!("{text}");
    Ok(exit::OK)
}

/// Prints rows as a table with a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn time_ms(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// Partitions as ranges: `0-3,7,9-10`.
fn ranges(parts: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let start = parts[i];
        let mut end = start;
        while i + 1 < parts.len() && parts[i + 1] == end + 1 {
            i += 1;
            end = parts[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

fn print_webhook_info(info: &pb::WebhookInfo) {
    println!("url:                 {}", or_dash(&info.url));
    println!("pending updates:     {}", info.pending_update_count);
    println!(
        "max connections:     {}",
        if info.max_connections == 0 {
            "-".to_owned()
        } else {
            info.max_connections.to_string()
        }
    );
    println!(
        "allowed updates:     {}",
        if info.allowed_updates.is_empty() {
            "(Telegram's default)".to_owned()
        } else {
            info.allowed_updates.join(",")
        }
    );
    println!("ip address:          {}", or_dash(&info.ip_address));
    if info.last_error_unix != 0 || !info.last_error_message.is_empty() {
        println!(
            "last error:          {} at {}",
            info.last_error_message,
            time_ms(info.last_error_unix * 1000)
        );
    } else {
        println!("last error:          -");
    }
}

/// `webhook set`.
pub fn webhook_set(answer: &pb::SetWebhookResponse, as_json: bool) -> Out {
    if as_json {
        return json(answer);
    }
    println!("{}", answer.description);
    if let Some(info) = &answer.info {
        print_webhook_info(info);
    }
    Ok(exit::OK)
}

/// `webhook info`.
pub fn webhook_info(answer: &pb::WebhookInfo, as_json: bool) -> Out {
    if as_json {
        return json(answer);
    }
    print_webhook_info(answer);
    Ok(exit::OK)
}

/// `webhook delete`.
pub fn webhook_deleted(answer: &pb::DeleteWebhookResponse, as_json: bool) -> Out {
    if as_json {
        return json(answer);
    }
    println!("{}", answer.description);
    Ok(exit::OK)
}

/// `status`.
pub fn status(s: &pb::StatusResponse, as_json: bool) -> Out {
    if as_json {
        return json(s);
    }
    let pause = s.pause.clone().unwrap_or_default();
    println!(
        "bot {}  {}",
        s.bot_id,
        if pause.paused {
            format!(
                "PAUSED since {}{}",
                time_ms(pause.since_unix_ms),
                if pause.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", pause.reason)
                }
            )
        } else {
            "running".to_owned()
        }
    );
    let t = s.throughput.unwrap_or_default();
    println!(
        "updates: {:.2}/s ({} in the last minute)",
        t.updates_per_second, t.updates_last_minute
    );
    let snd = s.sender.clone().unwrap_or_default();
    println!(
        "sender: {} ({}); {:.2} sends/s over the last minute, {:.1}% of the bot's budget",
        or_dash(&snd.active),
        snd.lease,
        snd.sends_per_second,
        snd.budget_use * 100.0
    );
    let out = s.outbound.unwrap_or_default();
    println!(
        "outbound: {} pending, {} held by the sender, {} unpublished in the outbox",
        out.pending, out.ack_pending, out.unpublished_outbox
    );
    let d = s.dead_letters.unwrap_or_default();
    println!(
        "dead letters: {} ({} updates, {} outbound)",
        d.total, d.updates, d.outbound
    );
    println!();
    println!("workers ({}):", s.workers.len());
    table(
        &["WORKER", "PARTITIONS", "HEARTBEAT"],
        &s.workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    format!("{} ({})", ranges(&w.partitions), w.partitions.len()),
                    format!("{}ms ago", w.heartbeat_age_ms),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!();
    println!("partitions ({}):", s.partition_count);
    table(
        &[
            "PARTITION",
            "OWNER",
            "PENDING",
            "ACK PENDING",
            "REDELIVERED",
        ],
        &s.partitions
            .iter()
            .map(|p| {
                if p.consumer_exists {
                    vec![
                        p.partition.to_string(),
                        or_dash(&p.owner),
                        p.pending.to_string(),
                        p.ack_pending.to_string(),
                        p.redelivered.to_string(),
                    ]
                } else {
                    vec![
                        p.partition.to_string(),
                        or_dash(&p.owner),
                        "(no consumer)".into(),
                        "-".into(),
                        "-".into(),
                    ]
                }
            })
            .collect::<Vec<_>>(),
    );
    Ok(exit::OK)
}

/// `chat show`: exit 5 when the chat is unknown.
pub fn chat(c: &pb::Chat, as_json: bool) -> Out {
    if as_json {
        json(c)?;
    } else if !c.known {
        println!("chat {}: no update of this chat was applied", c.chat_id);
    } else {
        println!("chat {}", c.chat_id);
        println!("state:            {}", c.state);
        println!("last update id:   {}", c.last_update_id);
        println!(
            "last applied seq: {} (stream epoch {})",
            c.last_applied_seq, c.stream_epoch
        );
        println!("updated at:       {}", time_ms(c.updated_at_unix_ms));
        let blocked = c.blocked.clone().unwrap_or_default();
        println!(
            "blocked:          {}",
            if blocked.blocked {
                format!(
                    "yes, since {} ({})",
                    time_ms(blocked.since_unix_ms),
                    blocked.reason
                )
            } else {
                "no".into()
            }
        );
        println!("unpublished:      {}", c.unpublished_replies);
        println!();
        table(
            &["USER", "NAME", "USERNAME", "REGISTERED", "BLOCKED AT"],
            &c.users
                .iter()
                .map(|u| {
                    vec![
                        u.user_id.to_string(),
                        format!("{} {}", u.first_name, u.last_name)
                            .trim()
                            .to_owned(),
                        or_dash(&u.username),
                        time_ms(u.registered_at_unix_ms),
                        time_ms(u.blocked_at_unix_ms),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        println!();
        table(
            &["NOTE", "USER", "UPDATE", "SENT AT", "TEXT"],
            &c.last_notes
                .iter()
                .map(|n| {
                    vec![
                        n.id.to_string(),
                        n.user_id.to_string(),
                        n.update_id.to_string(),
                        time_ms(n.sent_at_unix_ms),
                        n.text.replace('\n', " "),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    Ok(if c.known { exit::OK } else { exit::NOT_FOUND })
}

/// `chat reset`: exit 5 when there was nothing to reset.
pub fn chat_reset(chat_id: i64, r: &pb::ResetChatResponse, as_json: bool) -> Out {
    if as_json {
        json(r)?;
    } else if r.reset {
        println!(
            "chat {chat_id} reset: {} -> the bot's start state ({})",
            r.previous_state, r.state
        );
    } else {
        println!("chat {chat_id}: no dialogue state, nothing to reset");
    }
    Ok(if r.reset { exit::OK } else { exit::NOT_FOUND })
}

/// `dlq list`.
pub fn dead_letters(l: &pb::ListDeadLettersResponse, as_json: bool) -> Out {
    if as_json {
        return json(l);
    }
    table(
        &[
            "ID",
            "STAGE",
            "AGE",
            "CHAT",
            "UPDATE/OUTBOX",
            "SUBJECT",
            "REASON",
        ],
        &l.letters
            .iter()
            .map(|d| {
                vec![
                    d.id.to_string(),
                    d.stage.clone(),
                    age(d.age_seconds),
                    d.chat_id.to_string(),
                    if d.stage == "outbound" {
                        format!("outbox {}", d.outbox_id)
                    } else {
                        format!("update {}", d.update_id)
                    },
                    d.source_subject.clone(),
                    d.reason.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!(
        "{} shown, {} dead letters in all{}",
        l.letters.len(),
        l.total,
        if l.next_page_token != 0 {
            format!("; next page: --after {}", l.next_page_token)
        } else {
            String::new()
        }
    );
    Ok(exit::OK)
}

/// `dlq replay`: exit 1 when a letter failed, 5 when an id was not found.
pub fn replayed(r: &pb::ReplayDeadLettersResponse, as_json: bool) -> Out {
    if as_json {
        json(r)?;
    } else {
        table(
            &["ID", "OUTCOME", "SUBJECT", "DETAIL"],
            &r.results
                .iter()
                .map(|x| {
                    vec![
                        x.id.to_string(),
                        x.outcome.clone(),
                        or_dash(&x.subject),
                        x.detail.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        if r.dry_run {
            println!("dry run: {} would be replayed", r.results.len());
        } else {
            println!("{} replayed, {} failed", r.replayed, r.failed);
        }
    }
    let any = |o: &str| r.results.iter().any(|x| x.outcome == o);
    Ok(if any("failed") {
        exit::OTHER
    } else if any("not_found") {
        exit::NOT_FOUND
    } else {
        exit::OK
    })
}

/// `dlq purge`.
pub fn purged(p: &pb::PurgeDeadLettersResponse, as_json: bool) -> Out {
    if as_json {
        return json(p);
    }
    if p.dry_run {
        println!("dry run: {} would be purged: {:?}", p.purged, p.ids);
    } else {
        println!("{} purged", p.purged);
    }
    Ok(exit::OK)
}

/// `pause` and `resume`: exit 6 when the active sender did not confirm in time.
pub fn pause(p: &pb::PauseState, as_json: bool) -> Out {
    if as_json {
        json(p)?;
    } else {
        let state = if p.paused { "paused" } else { "running" };
        if p.confirmed {
            if p.confirmed_by.is_empty() {
                println!("{state} (no sender holds the lease: nothing calls Telegram)");
            } else {
                println!("{state}: confirmed by the active sender {}", p.confirmed_by);
            }
        } else {
            println!(
                "{state}, but the active sender has not confirmed yet (it may still finish a \
                 call in flight; check `courierctl status`)"
            );
        }
    }
    Ok(if p.confirmed {
        exit::OK
    } else {
        exit::NOT_CONFIRMED
    })
}

/// A broadcast's text on one line, cut to `max` characters.
fn preview(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r'], " ");
    if line.chars().count() <= max {
        line
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

/// `broadcast status`.
pub fn broadcast(b: &pb::BroadcastJob, as_json: bool) -> Out {
    if as_json {
        return json(b);
    }
    println!("broadcast {}", b.id);
    println!(
        "state:       {}{}",
        b.state,
        if b.finished {
            " (finished)"
        } else if b.state == "running" {
            " (enqueuing)"
        } else {
            " (sending)"
        }
    );
    println!("recipients:  {}", b.recipients);
    println!("enqueued:    {}", b.enqueued);
    println!("sent:        {}", b.sent);
    println!("failed:      {}", b.failed);
    println!("created at:  {}", time_ms(b.created_at_unix_ms));
    println!("enqueued at: {}", time_ms(b.enqueue_finished_at_unix_ms));
    println!("parse mode:  {}", or_dash(&b.parse_mode));
    println!("text:        {}", preview(&b.text, 200));
    Ok(exit::OK)
}

/// `broadcast list`.
pub fn broadcasts(l: &pb::ListBroadcastsResponse, as_json: bool) -> Out {
    if as_json {
        return json(l);
    }
    table(
        &[
            "ID",
            "STATE",
            "RECIPIENTS",
            "ENQUEUED",
            "SENT",
            "FAILED",
            "CREATED",
            "TEXT",
        ],
        &l.broadcasts
            .iter()
            .map(|b| {
                vec![
                    b.id.to_string(),
                    if b.finished || b.state == "running" {
                        b.state.clone()
                    } else {
                        format!("{} (sending)", b.state)
                    },
                    b.recipients.to_string(),
                    b.enqueued.to_string(),
                    b.sent.to_string(),
                    b.failed.to_string(),
                    time_ms(b.created_at_unix_ms),
                    preview(&b.text, 40),
                ]
            })
            .collect::<Vec<_>>(),
    );
    if l.next_page_token != 0 {
        println!("next page: --before {}", l.next_page_token);
    }
    Ok(exit::OK)
}

/// `broadcast cancel`: exit 0 when it is cancelled (now or before), 1 when it had already
/// enqueued every user (nothing left to cancel).
pub fn broadcast_cancelled(id: i64, c: &pb::CancelBroadcastResponse, as_json: bool) -> Out {
    let job = c.job.clone().unwrap_or_default();
    if as_json {
        json(c)?;
    } else if c.cancelled {
        println!(
            "broadcast {id} cancelled: {} of {} recipients enqueued; those already handed to \
             the sender still go out",
            job.enqueued, job.recipients
        );
    } else if job.state == "cancelled" {
        println!("broadcast {id} was cancelled before");
    } else {
        println!(
            "broadcast {id} is {}: every recipient is enqueued, nothing left to cancel (`pause` \
             holds what the sender has not sent yet)",
            job.state
        );
    }
    Ok(if c.cancelled || job.state == "cancelled" {
        exit::OK
    } else {
        exit::OTHER
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_print_as_ranges() {
        assert_eq!(ranges(&[]), "-");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    }

    #[test]
    fn texts_are_previewed_on_one_line() {
        assert_eq!(preview("a\nb", 10), "a b");
        assert_eq!(preview("abcdef", 4), "abc…");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(3 * 86400), "3d");
    }
}
