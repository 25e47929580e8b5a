//! A JetStream pull consumer as an endless stream of messages keyed by chat.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// The chat of a message: the last token of its subject (`courier.<...>.<chat>`), 0 if absent.
pub fn chat_of_subject(subject: &str) -> i64 {
    subject
        .rsplit('.')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Pulls messages for as long as `cancel` is not fired, re-creating the pull stream after
/// errors (NATS restarts, missed heartbeats), and yields each with its chat.
pub fn keyed_messages(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    cancel: CancellationToken,
) -> impl futures::Stream<Item = (i64, jetstream::Message)> + Unpin {
    keyed(consumer, None, cancel)
}

/// Like [`keyed_messages`], for a consumer with a priority group (the pinned-client policy):
/// each pull names `group` and expires after `expires`, which must be well below the
/// consumer's `priority_timeout` so that the pin stays with this client while it pulls.
pub fn keyed_group_messages(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    group: String,
    expires: Duration,
    cancel: CancellationToken,
) -> impl futures::Stream<Item = (i64, jetstream::Message)> + Unpin {
    keyed(consumer, Some((group, expires)), cancel)
}

fn keyed(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    group: Option<(String, Duration)>,
    cancel: CancellationToken,
) -> impl futures::Stream<Item = (i64, jetstream::Message)> + Unpin {
    let (tx, mut rx) = mpsc::channel::<(i64, jetstream::Message)>(256);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !cancel.is_cancelled() {
            let messages = match &group {
                None => consumer.messages().await,
                Some((group, expires)) => {
                    consumer
                        .stream()
                        .group(group.clone())
                        .expires(*expires)
                        .heartbeat(*expires / 4)
                        .messages()
                        .await
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull messages; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(msg)) => {
                        let chat = chat_of_subject(&msg.subject);
                        if tx.send((chat, msg)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "pull stream hiccup"),
                    None => break,
                }
            }
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn chat_comes_from_the_last_subject_token() {
        assert_eq!(
            super::chat_of_subject("courier.updates.1.3.-10042"),
            -10_042
        );
        assert_eq!(super::chat_of_subject("courier.outbound.1.7"), 7);
        assert_eq!(super::chat_of_subject("weird"), 0);
    }
}
