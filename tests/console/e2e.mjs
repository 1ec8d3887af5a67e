// The web console end to end in headless Chromium, driven by playwright-core. Started by
// tests/api/console_browser.rs against a real vault it has seeded; everything it needs
// comes in the environment:
//   PIIVAULT_BASE       https://localhost:PORT
//   AUDITOR, DSR        the two tokens' secrets
//   DSR_TOKEN_ID        the DSR token's id (the incident report is run for it)
//   SUBJECT, REQUEST    the seeded subject and its data-subject request
//   CANARIES            JSON list of the subject's personal values
//   SCREENSHOTS         where each view's screenshot is kept
//   CHROMIUM            the browser (default /usr/bin/chromium)
// Prints one line per step; exits non-zero at the first failed check.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("PIIVAULT_BASE");
const canaries = JSON.parse(env("CANARIES"));
const shots = env("SCREENSHOTS");
const subject = env("SUBJECT");
const request = env("REQUEST");
fs.mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});

// Every page a role opens is checked: no personal value in its text or its title, no
// value or secret in its URL, nothing in browser storage, no CSP violation.
async function session(name) {
  // The vault's certificate is signed by its own CA, which this browser does not know.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true });
  const page = await context.newPage();
  const violations = [];
  page.on("console", (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
  });
  const visited = [];
  let n = 0;
  const look = async (label) => {
    n += 1;
    const html = await page.content();
    const title = await page.title();
    const url = page.url();
    for (const c of canaries) {
      check(!html.includes(c), `${name}/${label}: a personal value is on the page`);
      check(!title.includes(c) && !url.includes(c), `${name}/${label}: a personal value in the title or URL`);
    }
    for (const secret of [process.env.AUDITOR, process.env.DSR]) {
      check(!url.includes(secret) && !html.includes(secret), `${name}/${label}: a token secret on the page or in the URL`);
    }
    check(!url.includes(subject), `${name}/${label}: the subject id is in the URL`);
    const storage = await page.evaluate(() => [document.cookie, localStorage.length, sessionStorage.length]);
    check(storage[0] === "", `${name}/${label}: the session cookie is readable by script`);
    check(storage[1] === 0 && storage[2] === 0, `${name}/${label}: something is in browser storage`);
    check(violations.length === 0, `${name}/${label}: CSP violations: ${violations.join(" | ")}`);
    await page.screenshot({ path: path.join(shots, `${name}-${String(n).padStart(2, "0")}-${label}.png`), fullPage: true });
    visited.push(url);
    console.log(`ok ${name} ${label} (${title})`);
    return html;
  };
  const signIn = async (token) => {
    await page.goto(`${base}/console`);
    check(page.url().endsWith("/console/sign-in"), "an unsigned visit goes to sign-in");
    await look("sign-in");
    await page.fill("#token", token);
    await Promise.all([page.waitForLoadState("load"), page.click("button[type=submit]:has-text('Sign in')")]);
    const cookies = await context.cookies();
    const c = cookies.find((c) => c.name === "__Host-piivault-console");
    check(c, `signed in (now at ${page.url()}: ${(await page.locator("main").innerText()).slice(0, 200)})`);
    check(c.httpOnly && c.secure && c.sameSite === "Strict", "the cookie is HttpOnly, Secure, SameSite=Strict");
  };
  return { context, page, look, signIn, visited };
}

try {
  // The auditor.
  {
    const { context, page, look, signIn } = await session("auditor");
    await signIn(env("AUDITOR"));
    check(page.url().endsWith("/console/audit"), "an auditor lands on the audit view");
    await look("audit-home");

    const section = page.locator("section.report", { has: page.locator("h2", { hasText: /^accesses_by_purpose$/ }) });
    await Promise.all([page.waitForURL("**/console/audit/report"), section.locator("button", { hasText: "Run" }).click()]);
    const bars = await page.locator("svg.chart rect").count();
    check(bars > 0, "the chart has bars");
    check((await page.locator("table tbody tr").count()) > 0, "the report has rows");
    await look("report-by-role");
    await page.selectOption("select[name=group]", "decision");
    await Promise.all([page.waitForLoadState("load"), page.click("button:has-text('Redraw')")]);
    const legend = await page.locator("ul.legend").innerText();
    check(legend.includes("deny") && legend.includes("allow"), `the legend shows allowed and denied: ${legend}`);
    await look("report-by-decision");
    const [csv] = await Promise.all([page.waitForEvent("download"), page.click("button:has-text('Download CSV')")]);
    const csvText = fs.readFileSync(await csv.path(), "utf8");
    check(csvText.startsWith("purpose,actor_role,action,decision,events,subjects"), "the CSV has its header");
    check(!canaries.some((c) => csvText.includes(c)), "the CSV holds no personal value");
    console.log(`ok auditor csv (${csv.suggestedFilename()})`);

    await page.click("nav >> text=Chain");
    await page.waitForURL("**/console/audit/chain");
    check((await page.content()).includes("The chain verifies"), "the chain verifies");
    await look("chain");

    await page.click("nav >> text=Incident");
    await page.waitForURL("**/console/audit/incident");
    await page.fill("input[name=token]", env("DSR_TOKEN_ID"));
    await Promise.all([page.waitForLoadState("load"), page.click("button:has-text('Run')")]);
    const incident = await look("incident");
    check(incident.includes(subject), "the incident report lists the subject reached");
    check(/Fields reached<\/dt><dd>[^<]*phone/.test(incident), "the incident report names the fields reached");

    // A refusal by policy, shown as such: an auditor may not open the DSR view.
    const refused = await page.goto(`${base}/console/dsr`);
    check(refused.status() === 403, `the DSR view is refused to an auditor (${refused.status()})`);
    const text = await page.locator("main").innerText();
    check(text.includes("purpose_not_allowed"), "the refusal names its code");
    await look("refused");
    await context.close();
  }

  // The DSR handler.
  {
    const { context, page, look, signIn } = await session("dsr");
    await signIn(env("DSR"));
    check(page.url().endsWith("/console/dsr"), "a DSR handler lands on the queue");
    await look("queue");
    await Promise.all([page.waitForLoadState("load"), page.click(`a[href='/console/dsr/requests/${request}']`)]);
    const opened = await look("request");
    check(opened.includes("Access history") && opened.includes("marketing"), "the request shows consents and access history");

    const [bundle] = await Promise.all([page.waitForEvent("download"), page.click("button:has-text('Download the export bundle')")]);
    const exported = JSON.parse(fs.readFileSync(await bundle.path(), "utf8"));
    check(exported.subject === subject, "the bundle is the subject's");
    check(canaries.every((c) => JSON.stringify(exported).includes(c)), "the bundle holds the subject's values");
    console.log(`ok dsr export (${bundle.suggestedFilename()})`);

    await Promise.all([page.waitForLoadState("load"), page.click("button:has-text('Erase the subject')")]);
    const confirm = await look("erase-confirmation");
    for (const named of ["phone", "id_number", "bank_card", "cannot be undone"]) {
      check(confirm.includes(named), `the confirmation names ${named}`);
    }
    await page.check("input[name=confirm]");
    await Promise.all([page.waitForLoadState("load"), page.click("button:has-text('Erase now')")]);
    const erased = await look("erased");
    check(erased.includes("has been erased"), "the request page says the subject is erased");
    await context.close();
  }
  console.log("all console checks passed");
} catch (e) {
  console.error(String(e && e.stack ? e.stack : e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
