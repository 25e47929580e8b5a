// Browser test of the sandbox's web chat: node chat.mjs <sandbox url>
// The sandbox's webhook must point at an echo bot (services/sandbox/tests/browser.rs sets
// that up): /start is answered with a welcome and an inline "Help" button, a note with
// "Saved your note: <note>", a press of Help with "You pressed help".
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const url = process.argv[2];
if (!url) {
  console.error("usage: node chat.mjs <sandbox url>");
  process.exit(2);
}
const userDataDir = mkdtempSync(join(tmpdir(), "courier-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
const step = (what) => console.log(`· ${what}`);
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15000);
  page.on("console", (m) => { if (m.type() === "error") console.error("page:", m.text()); });
  await page.goto(url);
  await page.locator("#status", { hasText: "live" }).waitFor();
  step("page loaded, events connected");

  // A fresh simulated user.
  await page.click("#new");
  const chatId = await page.inputValue("#chat");
  step(`new user ${chatId}`);

  await page.fill("#text", "/start");
  await page.press("#text", "Enter");
  await page.locator("#log li.user .text", { hasText: "/start" }).waitFor();
  await page.locator("#log li.bot .text", { hasText: "Welcome! Send me a note." }).waitFor();
  step("/start answered live");

  await page.fill("#text", "buy milk");
  await page.click("form.send button");
  await page.locator("#log li.bot .text", { hasText: "Saved your note: buy milk" }).waitFor();
  step("note answered live");

  await page.locator("#log li.bot .keyboard button", { hasText: "Help" }).click();
  await page.locator("#log li.bot .text", { hasText: "You pressed help" }).waitFor();
  await page.locator("#toast", { hasText: "Help is on its way" }).waitFor();
  step("inline button pressed, callback answered");

  // The stats table counts the bot's three messages.
  await page.waitForFunction(() => {
    const row = [...document.querySelectorAll("#stats tr")]
      .find((tr) => tr.children[0].textContent === "messages from bot");
    return row && Number(row.children[1].textContent) >= 3;
  });
  step("stats visible");
  console.log("browser test passed");
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
