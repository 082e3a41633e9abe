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

// An <img> that has decoded and is drawn at a size.
async function expectLoaded(img) {
  await img.evaluate((el) => (el.complete ? null : new Promise((ok) => el.addEventListener("load", ok, { once: true }))));
  const { natural, shown } = await img.evaluate((el) => ({ natural: el.naturalWidth, shown: el.getBoundingClientRect().width }));
  expect(natural > 0 && shown > 0, `image not drawn: natural width ${natural}, shown ${shown}`);
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
    let tabularAnswer = null;
    let imageAnswer = null;

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
      const [answer] = await Promise.all([
        page.waitForResponse((r) => r.url().includes("/diabetes/predict/tabular"), { timeout: 30000 }),
        diabetes.getByRole("button", { name: "Predict from measurements" }).click(),
      ]);
      tabularAnswer = await answer.json();
      await page.locator("#result-summary").filter({ hasText: "%" }).waitFor({ timeout: 30000 });
      const rows = await page.locator("#probabilities tbody tr").count();
      expect(rows === 2, `expected 2 class rows, got ${rows}`);
      const band = await page.locator("#risk-band").innerText();
      expect(["low", "moderate", "high"].includes(band), `risk band ${band}`);
      expect((await page.locator("meter").count()) === 2, "probability bars");
    });

    await check("the prediction's contributions are drawn, largest first, as the API gave them", async () => {
      const e = tabularAnswer && tabularAnswer.explanation;
      expect(e && e.method === "treeshap", `explanation: ${JSON.stringify(e)}`);
      const rows = page.locator("#contributions tbody tr");
      expect((await rows.count()) === e.contributions.length, "a row per feature");
      const want = [...e.contributions].sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
      for (let i = 0; i < want.length; i += 1) {
        const row = rows.nth(i);
        expect((await row.getAttribute("data-feature")) === want[i].feature, `row ${i}: ${want[i].feature}`);
        const text = await row.innerText();
        const size = Math.abs(want[i].contribution).toFixed(3);
        expect(text.includes(size) && text.includes(want[i].contribution > 0 ? "raises" : "lowers"), `row ${i}: ${text}`);
        expect((await row.locator("svg rect").count()) === 1, `row ${i}: a bar`);
      }
      // The unmeasured insulin is said to be so, with its unit elsewhere from the card.
      const insulin = await page.locator("#contributions tr[data-feature=insulin]").innerText();
      expect(insulin.includes("not measured"), insulin);
      const glucose = await page.locator("#contributions tr[data-feature=glucose]").innerText();
      expect(glucose.includes("148 mg/dL"), glucose);
      const summary = await page.locator("#explanation-summary").innerText();
      const pct = (x) => `${((1 / (1 + Math.exp(-x))) * 100).toFixed(1)}%`;
      expect(summary.includes(pct(e.base_value)) && summary.includes(pct(e.margin)), summary);
      fs.mkdirSync(artifacts, { recursive: true });
      await page.locator("#result").screenshot({ path: path.join(artifacts, "explanation-tabular.png") });
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
      const [answer] = await Promise.all([
        page.waitForResponse((r) => r.url().includes("/heart/predict/ecg"), { timeout: 60000 }),
        heart.getByRole("button", { name: "Predict from image" }).click(),
      ]);
      imageAnswer = await answer.json();
      await page.locator("#result-summary").filter({ hasText: expected }).waitFor({ timeout: 60000 });
      const notice = await page.locator("#demo-notice").innerText();
      expect(/demo model/i.test(notice) && notice.includes("synthetic"), notice);
    });

    await check("the ECG's class activation map is drawn beside the upload, as the API gave it", async () => {
      const e = imageAnswer && imageAnswer.explanation;
      expect(e && e.method === "cam", `explanation: ${JSON.stringify(e && e.method)}`);
      const best = imageAnswer.result.probabilities.reduce((a, b) => (b.probability > a.probability ? b : a));
      expect(e.class === best.label && e.class === imageAnswer.result.label, `map of ${e.class}, predicted ${best.label}`);
      await page.locator("#cam").waitFor({ state: "visible", timeout: 10000 });
      expect(await page.locator("#contributions").isHidden(), "no contribution table for an image");
      const overlay = page.locator("#cam-overlay");
      expect((await overlay.getAttribute("src")) === e.overlay_png, "the overlay is the API's PNG");
      const upload = page.locator("#cam-upload");
      expect(((await upload.getAttribute("src")) || "").startsWith("blob:"), "the upload shown from the file");
      // Both images decoded (the CSP lets data: and blob: images in) and drawn at a size.
      for (const img of [overlay, upload]) {
        await expectLoaded(img);
      }
      const alt = await overlay.getAttribute("alt");
      expect(alt.includes(best.name), `overlay alt names the class: ${alt}`);
      const caption = await page.locator("#cam-caption").innerText();
      expect(caption.includes(`${e.grid.height}×${e.grid.width}`), caption);
      fs.mkdirSync(artifacts, { recursive: true });
      await page.locator("#result").screenshot({ path: path.join(artifacts, "explanation-image.png") });
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
