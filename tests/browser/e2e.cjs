// Drives the web page in headless Chromium against the real system: signing in with the
// development key scripts/run.sh made, the diabetes form through
// to a confirmed, verified audit record; opening the heart form warms heart-svc; an ECG upload
// through to its class; keyboard use of the tabs; no Content-Security-Policy violations. Prints "browser: N passed, N failed".
"use strict";
const path = require("path");
const fs = require("fs");
const { chromium } = require(path.join(process.env.MEDCHAIN_NODE_MODULES, "playwright-core"));

const url = process.argv[2];
const devKey = process.env.MEDCHAIN_DEV_KEY || "";
const root = path.resolve(__dirname, "../..");
const artifacts = process.env.MEDCHAIN_ARTIFACTS || path.join(root, ".data/artifacts");
let passed = 0;
let failed = 0;

async function check(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e.message.split("\n")[0]}`);
  }
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.MEDCHAIN_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  try {
    await page.goto(url);
    const diabetes = page.locator("#panel-diabetes");

    await check("signing in with the development key says who is signed in", async () => {
      expect(devKey.startsWith("mk_"), "scripts/run.sh made no development key");
      const before = await page.locator("#panel-diabetes .service-state").innerText();
      expect(before.includes("Sign in"), `before signing in: ${before}`);
      await page.locator("#api-key").fill(devKey);
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.locator("#whoami").filter({ hasText: "Signed in as" }).waitFor({ timeout: 30000 });
      const who = await page.locator("#whoami").innerText();
      expect(who.includes("dev (clinician)"), who);
    });

    await check("the diabetes form is built from the model card", async () => {
      await diabetes.locator("input[name=glucose]").waitFor({ timeout: 30000 });
      const label = await diabetes.locator("label", { has: page.locator("input[name=glucose]") }).innerText();
      expect(label.includes("mg/dL") && label.includes("20"), `label without unit/range: ${label}`);
    });

    await check("a diabetes prediction shows probabilities and a risk band", async () => {
      const values = {
        pregnancies: "6", glucose: "148", blood_pressure: "72", skin_thickness: "35",
        bmi: "33.6", diabetes_pedigree_function: "0.627", age: "50",
      };
      for (const [k, v] of Object.entries(values)) await diabetes.locator(`[name=${k}]`).fill(v);
      await diabetes.locator("form.tabular [name=patient_id]").fill("MRN-BROWSER-1");
      await diabetes.getByRole("button", { name: "Predict from measurements" }).click();
      await page.locator("#result-summary").filter({ hasText: "%" }).waitFor({ timeout: 30000 });
      const rows = await page.locator("#probabilities tbody tr").count();
      expect(rows === 2, `expected 2 class rows, got ${rows}`);
      const band = await page.locator("#risk-band").innerText();
      expect(["low", "moderate", "high"].includes(band), `risk band ${band}`);
      expect((await page.locator("meter").count()) === 2, "probability bars");
    });

    await check("the audit record becomes confirmed with a transaction", async () => {
      const id = await page.locator("#audit-id").innerText();
      expect(/^[0-9a-f-]{36}$/.test(id), `record id ${id}`);
      await page.locator("#audit-status").filter({ hasText: "confirmed" }).waitFor({ timeout: 60000 });
      const fields = await page.locator("#audit-fields").innerText();
      expect(/0x[0-9a-f]{64}/.test(fields), "transaction hash shown");
    });

    await check("verify says the input matches the chain", async () => {
      await page.getByRole("button", { name: "Verify this input against the chain" }).click();
      await page.locator("#verify-result").filter({ hasText: "erified" }).waitFor({ timeout: 30000 });
      const text = await page.locator("#verify-result").innerText();
      expect(text.startsWith("Verified"), text);
    });

    // What heart-svc has loaded, by model key, as the gateway reports it.
    const heartModels = async () => {
      const res = await page.request.get(new URL("/api/v1/heart/models", url).toString(), {
        headers: { authorization: `Bearer ${devKey}` },
      });
      expect(res.ok(), `GET /api/v1/heart/models: ${res.status()}`);
      const body = await res.json();
      return Object.fromEntries(body.models.map((m) => [m.key, m.state]));
    };
    let heartBefore = {};

    await check("the heart tab opens from the keyboard", async () => {
      heartBefore = await heartModels();
      await page.locator("#tab-diabetes").focus();
      await page.keyboard.press("ArrowRight");
      await page.locator("#panel-heart input[name=chol]").waitFor({ timeout: 30000 });
      expect((await page.locator("#tab-heart").getAttribute("aria-selected")) === "true", "tab selected");
    });

    await check("opening the heart form warms heart-svc before any heart prediction", async () => {
      expect(heartBefore.ecg === "unloaded", `ECG model before the tab opened: ${heartBefore.ecg}`);
      let now = {};
      for (let i = 0; i < 600 && now.ecg !== "ready"; i += 1) {
        now = await heartModels();
        if (now.ecg !== "ready") await page.waitForTimeout(100);
      }
      expect(now.ecg === "ready" && now.tabular === "ready", `heart models: ${JSON.stringify(now)}`);
      await page.locator("#panel-heart .service-state").filter({ hasText: "Models loaded" }).waitFor({ timeout: 10000 });
    });

    await check("an ECG upload shows its class and the demo notice", async () => {
      const fixtures = JSON.parse(fs.readFileSync(path.join(root, "models/examples/fixtures.json"), "utf8"));
      const ex = fixtures.image.find((f) => f.model === "ecg" && f.file.includes("myocardial_infarction"));
      const card = JSON.parse(fs.readFileSync(path.join(root, "models/heart/ecg.card.json"), "utf8"));
      const best = ex.probabilities.indexOf(Math.max(...ex.probabilities));
      const expected = card.classes[best].name;
      const heart = page.locator("#panel-heart");
      await heart.locator("input[type=file]").setInputFiles(path.join(root, "models/examples", ex.file));
      await heart.locator("form.image [name=patient_id]").fill("MRN-BROWSER-2");
      await heart.getByRole("button", { name: "Predict from image" }).click();
      await page.locator("#result-summary").filter({ hasText: expected }).waitFor({ timeout: 60000 });
      const notice = await page.locator("#demo-notice").innerText();
      expect(/demo model/i.test(notice) && notice.includes("synthetic"), notice);
    });

    await check("the ECG verifies by its digest, the patient id in the body", async () => {
      await page.locator("#audit-status").filter({ hasText: "confirmed" }).waitFor({ timeout: 60000 });
      const sent = [];
      page.on("request", (r) => { if (r.url().includes("/verify")) sent.push(r); });
      await page.getByRole("button", { name: "Verify this input against the chain" }).click();
      await page.locator("#verify-result").filter({ hasText: "erified" }).waitFor({ timeout: 30000 });
      const text = await page.locator("#verify-result").innerText();
      expect(text.startsWith("Verified"), text);
      expect(sent.length === 1 && !sent[0].url().includes("MRN"), `verify URL: ${sent.map((r) => r.url())}`);
      const body = JSON.parse(sent[0].postData() || "{}");
      expect(/^0x[0-9a-f]{64}$/.test(body.input_digest) && body.patient_id === "MRN-BROWSER-2", `body: ${sent[0].postData()}`);
    });

    await check("no script error or Content-Security-Policy violation", async () => {
      expect(problems.length === 0, problems.join(" | "));
    });
  } finally {
    fs.mkdirSync(artifacts, { recursive: true });
    const shot = path.join(artifacts, "browser-e2e.png");
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.log(`screenshot: ${shot}`);
    await browser.close();
  }
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
})().catch((e) => {
  console.log(`FAIL browser test crashed: ${e.message}`);
  console.log(`browser: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
