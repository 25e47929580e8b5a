//! Key-value buckets whose `max_age` is a time to live (the sender's lease, the workers'
//! membership) opened by processes configured with another TTL than the bucket has: what each
//! process believes must never outlive what the bucket keeps.

use std::time::Duration;

use async_nats::jetstream;
use courier_sender::lease::{Lease, BUCKET as LEASES};
use courier_tests::{eventually, NatsServer};
use courier_worker::membership::{Membership, BUCKET as MEMBERS};

async fn max_age(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Duration> {
    Ok(js
        .get_stream(format!("KV_{bucket}"))
        .await?
        .info()
        .await?
        .config
        .max_age)
}

/// How long a lease holder counts itself valid after it sent a renewal: ¾ of the TTL it works
/// with, which is three times its renewal interval.
fn believed_validity(lease: &Lease) -> Duration {
    lease.renew_every() * 3 * 3 / 4
}

/// A sender opened the bucket with a 2 s TTL; another one is configured with 6 s (an operator
/// raised `COURIER_SENDER_LEASE_TTL`, and the new replica starts beside the old one). Neither
/// may count itself valid once the bucket could have dropped its key: checked by reading what
/// each believes against the bucket, then by letting the 6 s one hold the lease without
/// renewing while the 2 s one tries to take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_lease_ttl_never_gives_two_valid_holders() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let short = Lease::open(&js, 1, "short".into(), Duration::from_secs(2)).await?;
    let long = Lease::open(&js, 1, "long".into(), Duration::from_secs(6)).await?;

    let bucket = max_age(&js, LEASES).await?;
    for (name, lease) in [("short", &short), ("long", &long)] {
        assert!(
            believed_validity(lease) < bucket,
            "{name} counts itself valid for {:?} after a renewal; the bucket keeps the key {bucket:?}",
            believed_validity(lease)
        );
    }

    // The long one holds and stops renewing (stalled); the short one keeps trying.
    assert!(long.try_acquire().await.is_some());
    assert!(long.is_valid());
    eventually(
        "the short one to take the lease over",
        Duration::from_secs(20),
        || async {
            if short.try_acquire().await.is_some() {
                assert!(
                    !long.is_valid(),
                    "two senders count themselves holders of the lease at once"
                );
                return Ok(Some(()));
            }
            Ok(None)
        },
    )
    .await?;
    assert!(short.is_valid());

    // A replica still configured with 2 s (a rollback, or an old one restarting) works with
    // the bucket's 6 s and does not lower it.
    let again = Lease::open(&js, 1, "again".into(), Duration::from_secs(2)).await?;
    assert_eq!(again.ttl(), Duration::from_secs(6));
    assert_eq!(max_age(&js, LEASES).await?, Duration::from_secs(6));
    Ok(())
}

/// The same for the workers' membership: a worker configured with a longer member TTL than
/// the bucket has would see its key expire between heartbeats and drop out of the
/// assignment; the bucket must keep a key at least as long as any member expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_member_ttl_is_what_the_bucket_keeps() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let _first = Membership::join(&js, 1, "first", Duration::from_millis(1500)).await?;
    let _second = Membership::join(&js, 1, "second", Duration::from_secs(6)).await?;
    let bucket = max_age(&js, MEMBERS).await?;
    assert!(
        bucket >= Duration::from_secs(6),
        "a member expects its key to live 6 s; the bucket keeps it {bucket:?}"
    );
    // A worker configured shorter works with the bucket's TTL; the bucket is not lowered.
    let third = Membership::join(&js, 1, "third", Duration::from_secs(2)).await?;
    assert_eq!(third.ttl(), Duration::from_secs(6));
    assert_eq!(max_age(&js, MEMBERS).await?, Duration::from_secs(6));
    Ok(())
}
