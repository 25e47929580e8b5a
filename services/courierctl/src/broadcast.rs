//! `broadcast "text"` and `broadcast watch ID`: create a broadcast, then follow it to the end
//! with a progress bar and an ETA (indicatif, on stderr when it is a terminal) or, with
//! `--json`, one JSON line per progress message on stdout.
//!
//! The broadcast runs in the workers, not here nor in courier-admin: this only creates and
//! watches it. So a broken watch (courier-admin restarted) is simply opened again, with
//! backoff, until the broadcast is finished; Ctrl-C stops watching and leaves it running
//! (`courierctl broadcast watch ID` picks it up again). The creation carries a random request
//! id and is repeated with the same id when its answer is lost, so a retry never creates a
//! second broadcast.

use std::time::Duration;

use courier_proto::admin::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::exit::{self, Failure};
use crate::{Client, SendArgs};

/// The first wait before opening a broken watch again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A watch that brought nothing for this long is taken as broken (courier-admin sends the
/// progress at least every 5 s).
const STALL: Duration = Duration::from_secs(30);

/// Creates the broadcast and, unless `--no-wait`, watches it.
pub async fn send(client: &mut Client, args: &SendArgs, budget: Duration, json: bool) -> Out {
    let request = pb::BroadcastRequest {
        text: args.text.clone().unwrap_or_default(),
        parse_mode: args.parse_mode.clone(),
        request_id: format!("courierctl-{:032x}", rand::random::<u128>()),
    };
    // Repeated with the same request id while courier-admin is unreachable, for at most
    // `--timeout`: the first call may have created it before its answer was lost.
    let deadline = Instant::now() + budget;
    let mut backoff = FIRST_BACKOFF;
    let job = loop {
        match client.broadcast(request.clone()).await {
            Ok(answer) => break answer.into_inner(),
            Err(s) if exit::retryable(&s) && Instant::now() + backoff < deadline => {
                eprintln!(
                    "courierctl: creating the broadcast: {}; trying again in {backoff:?}",
                    s.message()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(s) => return Err(s.into()),
        }
    };
    if json {
        json_line(&job)?;
    } else {
        say(&format!(
            "broadcast {}: {} recipients{}",
            job.id,
            job.recipients,
            if args.no_wait {
                format!(
                    "; it runs in the workers (courierctl broadcast watch {})",
                    job.id
                )
            } else {
                String::new()
            }
        ));
    }
    if args.no_wait {
        return Ok(exit::OK);
    }
    watch(client, job.id, json).await
}

type Out = Result<i32, Failure>;

/// Watches broadcast `id` until it is finished; exit 0 when every message was sent,
/// [`exit::INCOMPLETE`] when some failed or it was cancelled.
pub async fn watch(client: &mut Client, id: i64, json: bool) -> Out {
    let mut view = View::new(json);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let why = match client
            .watch_broadcast(pb::WatchBroadcastRequest { id })
            .await
        {
            Ok(answer) => {
                let mut stream = answer.into_inner();
                loop {
                    match tokio::time::timeout(STALL, stream.message()).await {
                        Ok(Ok(Some(job))) => {
                            backoff = FIRST_BACKOFF;
                            view.show(&job)?;
                            if job.finished {
                                return view.finish(&job);
                            }
                        }
                        Ok(Ok(None)) => break "the watch ended early".to_owned(),
                        Ok(Err(s)) if exit::retryable(&s) => break s.message().to_owned(),
                        Ok(Err(s)) => return Err(s.into()),
                        Err(_) => break format!("no progress for {}s", STALL.as_secs()),
                    }
                }
            }
            Err(s) if exit::retryable(&s) => s.message().to_owned(),
            Err(s) => return Err(s.into()),
        };
        view.note(&format!(
            "watch of broadcast {id} interrupted ({why}); the broadcast goes on in the \
             workers; watching again in {backoff:?}"
        ));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn say(line: &str) {
    use std::io::Write as _;
    if writeln!(std::io::stdout(), "{line}").is_err() {
        std::process::exit(exit::OK);
    }
}

fn json_line(job: &pb::BroadcastJob) -> Result<(), Failure> {
    let text = serde_json::to_string(job)
        .map_err(|e| Failure::new(exit::OTHER, format!("cannot print JSON: {e}")))?;
    say(&text);
    Ok(())
}

/// How a broadcast that finished ends the program.
pub fn outcome(job: &pb::BroadcastJob) -> i32 {
    if job.state == "cancelled" || job.failed > 0 {
        exit::INCOMPLETE
    } else {
        exit::OK
    }
}

/// Messages done out of how many there will be.
fn done_of(job: &pb::BroadcastJob) -> (u64, u64) {
    let done = (job.sent + job.failed).max(0) as u64;
    let total = if job.state == "running" {
        job.recipients.max(job.enqueued)
    } else {
        job.enqueued
    };
    (done, (total.max(0) as u64).max(done))
}

/// The progress as it is shown: a bar, or JSON lines.
struct View {
    json: bool,
    bar: Option<ProgressBar>,
    started: std::time::Instant,
}

impl View {
    fn new(json: bool) -> Self {
        Self {
            json,
            bar: None,
            started: std::time::Instant::now(),
        }
    }

    fn show(&mut self, job: &pb::BroadcastJob) -> Result<(), Failure> {
        if self.json {
            return json_line(job);
        }
        let (done, total) = done_of(job);
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} broadcast {prefix} [{elapsed_precise}] [{wide_bar}] \
                     {pos}/{len} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(job.id.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            // Resumed mid-way: the rate (and the ETA) counts from here, not from 0.
            bar.set_position(done);
            bar.reset_eta();
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(format!("({} failed, {})", job.failed, job.state));
        Ok(())
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("courierctl: {line}")),
            None => eprintln!("courierctl: {line}"),
        }
    }

    fn finish(self, job: &pb::BroadcastJob) -> Out {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if !self.json {
            say(&format!(
                "broadcast {} {}: {} sent, {} failed of {} enqueued ({} recipients) in {}s",
                job.id,
                if job.state == "cancelled" {
                    "cancelled"
                } else {
                    "finished"
                },
                job.sent,
                job.failed,
                job.enqueued,
                job.recipients,
                self.started.elapsed().as_secs()
            ));
        }
        Ok(outcome(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        state: &str,
        recipients: i64,
        enqueued: i64,
        sent: i64,
        failed: i64,
    ) -> pb::BroadcastJob {
        pb::BroadcastJob {
            state: state.into(),
            recipients,
            enqueued,
            sent,
            failed,
            finished: state != "running" && sent + failed >= enqueued,
            ..Default::default()
        }
    }

    #[test]
    fn a_finished_broadcast_exits_0_only_when_every_message_was_sent() {
        assert_eq!(outcome(&job("enqueued", 3, 3, 3, 0)), exit::OK);
        assert_eq!(outcome(&job("enqueued", 3, 3, 2, 1)), exit::INCOMPLETE);
        assert_eq!(
            outcome(&job("cancelled", 300, 100, 100, 0)),
            exit::INCOMPLETE
        );
    }

    #[test]
    fn the_bar_counts_towards_the_recipients_while_it_runs_then_the_enqueued() {
        assert_eq!(done_of(&job("running", 500, 100, 40, 2)), (42, 500));
        // Users who started the bot meanwhile get it too.
        assert_eq!(done_of(&job("running", 500, 520, 500, 0)), (500, 520));
        assert_eq!(done_of(&job("cancelled", 500, 200, 150, 0)), (150, 200));
        assert_eq!(done_of(&job("enqueued", 500, 499, 499, 0)), (499, 499));
    }
}
