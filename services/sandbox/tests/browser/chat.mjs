// Browser test of the sandbox's web chat: node chat.mjs <sandbox url> <bot token>
// The sandbox's webhook must point at an echo bot (services/sandbox/tests/browser.rs sets
// that up): /start is answered with a welcome and an inline "Help" button, a note with
// "Saved your note: <note>", a press of Help with "You pressed help". The test itself then
// edits, replies, deletes and shows a chat action through the Bot API.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const url = process.argv[2];
const token = process.argv[3];
if (!url || !token) {
  console.error("usage: node chat.mjs <sandbox url> <bot token>");
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

  // Formatting: the bot sends HTML; the page shows entities as elements, spoilers hidden
  // until clicked, and markup inside the text as text (never as HTML).
  const send = () => fetch(`${url}/bot${token}/sendMessage`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      chat_id: chatId,
      parse_mode: "HTML",
      text: 'peer <b>check</b> <tg-spoiler>secret</tg-spoiler> &lt;img src=x onerror="window.pwned=1"&gt;',
    }),
  }).then((r) => r.json());
  let sent = await send();
  // The chat's burst of three is spent: wait as told, like any client.
  for (let i = 0; i < 5 && sent.error_code === 429; i++) {
    await new Promise((ok) => setTimeout(ok, (sent.parameters?.retry_after ?? 1) * 1000));
    sent = await send();
  }
  if (!sent.ok) throw new Error(`sendMessage failed: ${JSON.stringify(sent)}`);
  const bold = page.locator("#log li.bot .text b", { hasText: "check" });
  await bold.waitFor();
  const spoiler = page.locator("#log li.bot .text .spoiler", { hasText: "secret" });
  const hidden = () => spoiler.evaluate((el) => getComputedStyle(el).color === "rgba(0, 0, 0, 0)");
  if (!(await hidden())) throw new Error("the spoiler is visible before a click");
  await spoiler.click();
  if (await hidden()) throw new Error("the spoiler is still hidden after a click");
  const formatted = page.locator("#log li.bot .text", { hasText: "peer check" });
  if ((await formatted.locator("img").count()) !== 0) throw new Error("user text became HTML");
  const shown = await formatted.textContent();
  if (!shown.includes('<img src=x onerror="window.pwned=1">')) {
    throw new Error(`escaped markup not shown as text: ${shown}`);
  }
  if (await page.evaluate(() => window.pwned)) throw new Error("user text ran as script");
  step("entities rendered: bold, spoiler revealed on click, markup kept as text");

  // Calls beyond plain text, made like any client (waiting as told after a 429): the page
  // shows each live.
  const api = async (method, params) => {
    const call = () => fetch(`${url}/bot${token}/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ chat_id: chatId, ...params }),
    }).then((r) => r.json());
    let answer = await call();
    for (let i = 0; i < 5 && answer.error_code === 429; i++) {
      await new Promise((ok) => setTimeout(ok, (answer.parameters?.retry_after ?? 1) * 1000));
      answer = await call();
    }
    if (!answer.ok) throw new Error(`${method} failed: ${JSON.stringify(answer)}`);
    return answer.result;
  };
  const idOf = async (locator) => Number(await locator.getAttribute("data-message-id"));
  const welcome = page.locator("#log li.bot", { hasText: "Welcome!" });
  const welcomeId = await idOf(welcome);
  await api("editMessageText", {
    message_id: welcomeId, text: "Welcome back!",
    reply_markup: { inline_keyboard: [[{ text: "Again", callback_data: "again" }]] },
  });
  await page.locator(`#log li[data-message-id="${welcomeId}"] .text`, { hasText: "Welcome back!" }).waitFor();
  await page.locator(`#log li[data-message-id="${welcomeId}"] .keyboard button`, { hasText: "Again" }).waitFor();
  await page.locator(`#log li[data-message-id="${welcomeId}"] small`, { hasText: "edited" }).waitFor();
  if ((await page.locator("#log li.bot .keyboard button", { hasText: "Help" }).count()) !== 0) {
    throw new Error("the edit kept the old keyboard");
  }
  step("edit shown live: new text, new keyboard");

  const noteId = await idOf(page.locator("#log li.user", { hasText: "buy milk" }));
  await api("sendMessage", { text: "About your note", reply_parameters: { message_id: noteId } });
  await page.locator("#log li.bot", { hasText: "About your note" })
    .locator(".reply", { hasText: "buy milk" }).waitFor();
  step("reply shown with the message it answers");

  const saved = page.locator("#log li.bot", { hasText: "Saved your note: buy milk" });
  const savedId = await idOf(saved);
  if (!(await api("deleteMessage", { message_id: savedId }))) throw new Error("deleteMessage answered false");
  await page.waitForFunction((id) => !document.querySelector(`#log li[data-message-id="${id}"]`), savedId);
  step("deletion shown live");

  await api("sendChatAction", { action: "typing" });
  await page.locator("#toast", { hasText: "bot is typing" }).waitFor();
  step("chat action shown");

  // The stats table counts the bot's four messages.
  await page.waitForFunction(() => {
    const row = [...document.querySelectorAll("#stats tr")]
      .find((tr) => tr.children[0].textContent === "messages from bot");
    return row && Number(row.children[1].textContent) >= 4;
  });
  step("stats visible");
  console.log("browser test passed");
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
