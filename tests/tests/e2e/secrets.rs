//! Secrets never reach the logs (issue 14, item 7): a whole conversation through every
//! service as a process, at `RUST_LOG=debug`, and then a scan of every log line for the bot
//! token, the webhook secret and the database password.

use courier_tests::procs::{ProcessStack, ProcessStackOptions};
use courier_tests::{SECRET, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_services_logs_over_a_whole_conversation() -> anyhow::Result<()> {
    // The test cluster trusts local connections, so any password works: it is only there to
    // be looked for in the logs.
    let password = "pw-Zq81_secret";
    let mut stack = ProcessStack::start(ProcessStackOptions {
        database_password: Some(password),
        ..Default::default()
    })
    .await?;
    assert!(
        stack.pg.url().contains("://postgres@"),
        "the harness's URL changed shape; the password is not in the services' URL: {}",
        stack.pg.url()
    );

    let chat = 930_001;
    for text in ["/start", "a note with my token? no", "/history", "/help"] {
        stack.say(chat, text).await?;
    }
    stack.bot_replies(chat, 4).await?;
    // A caller with a wrong secret, and one that sends the right secret with a bad body.
    let http = reqwest::Client::new();
    let wrong = http
        .post(&stack.webhook_url)
        .header("X-Telegram-Bot-Api-Secret-Token", "not-the-secret")
        .body("{}")
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let bad = http
        .post(&stack.webhook_url)
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body("{not json")
        .send()
        .await?;
    assert_eq!(bad.status(), 400);

    stack.stop().await?;
    let token_secret = TOKEN.split_once(':').map(|(_, s)| s).unwrap_or(TOKEN);
    let needles = [
        ("bot token", token_secret),
        ("webhook secret", SECRET),
        ("database password", password),
    ];
    for (s, log) in &stack.services {
        let text = std::fs::read_to_string(log)?;
        assert!(
            text.lines().count() > 3,
            "{}: the log is nearly empty, the scan would prove nothing",
            s.name
        );
        for (what, needle) in needles {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                panic!("{}: the {what} is in its log: {line}", s.name);
            }
        }
    }
    Ok(())
}
