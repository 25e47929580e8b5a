//! The web chat in a real browser: headless Chromium (Debian's `chromium`, driven by npm
//! `playwright-core`) chats through the page with an echo bot behind the sandbox's webhook.
//!
//! Needs `/usr/bin/chromium` and `services/sandbox/tests/browser/node_modules` (`cargo xtask
//! test` installs both). Set `COURIER_SKIP_BROWSER=1` to skip it where they are missing.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use courier_common::CancellationToken;
use courier_sandbox::Config;

#[tokio::test]
async fn web_chat_in_a_real_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let module = dir.join("node_modules/playwright-core/package.json");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<String> = [
        (!Path::new(&chromium).exists()).then(|| chromium.clone()),
        (!module.exists()).then(|| format!("{} (npm playwright-core)", module.display())),
        (!node).then(|| "node".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        if std::env::var("COURIER_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("skipping the browser test (COURIER_SKIP_BROWSER=1): missing {missing:?}");
            return;
        }
        panic!(
            "the browser test needs {missing:?}; `cargo xtask test` installs them \
             (chromium from Debian, `npm ci --prefix services/sandbox/tests/browser`), \
             or set COURIER_SKIP_BROWSER=1 to skip it"
        );
    }

    let stop = CancellationToken::new();
    let sandbox = courier_sandbox::spawn(Config::dev(), stop.clone())
        .await
        .unwrap();
    common::start_bot(&sandbox.url(), common::Behaviour::default(), stop.clone()).await;

    let child = tokio::process::Command::new("node")
        .arg(dir.join("chat.mjs"))
        .arg(sandbox.url())
        .arg(courier_common::config::dev::BOT_TOKEN)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the browser test finishes within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("browser test passed"),
        "browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stop.cancel();
    sandbox.wait().await.unwrap();
}
