// The public origin in Chromium: the home page over HTTPS, the launch form,
// the loading page, JupyterLab of the launched server, all on one origin.
// Chromium trusts the test certificate by its public key
// (--ignore-certificate-errors-spki-list; the flag needs --user-data-dir,
// which a persistent context has). Records every URL the pages show or the
// browser requested, and the cookies it holds at the end.
// Params: {origin, repo, ref, path, spki, artifacts}
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { chromium } from '../../e2e/node_modules/playwright-core/index.mjs';
import { CHROMIUM, CHROMIUM_ARGS, params, report } from '../../e2e/js/lib.mjs';

const p = params();

/** Every absolute URL in the page's attributes, form values and text. */
async function pageUrls(page) {
  return page.evaluate(() => {
    const found = new Set();
    const add = (s) => {
      for (const m of String(s || '').matchAll(/(?:https?|wss?):\/\/[^\s"'<>()\]]+/g)) found.add(m[0]);
    };
    for (const el of document.querySelectorAll('*')) {
      for (const a of el.attributes) add(a.value);
    }
    for (const el of document.querySelectorAll('input, textarea')) add(el.value);
    add(document.body.innerText);
    return [...found];
  });
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'binderbuild-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${p.spki}`],
    viewport: { width: 1100, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  const requested = [];
  context.on('request', (r) => requested.push(r.url()));
  const navigations = [];
  page.on('request', (r) => {
    if (r.isNavigationRequest() && r.frame() === page.mainFrame()) navigations.push(r.url());
  });

  await page.goto(`${p.origin}/`);
  await page.waitForSelector('html[data-ready="true"]');
  await page.selectOption('#provider', 'git');
  await page.fill('#repository', p.repo);
  await page.fill('#ref', p.ref);
  await page.fill('#path', p.path);
  await page.waitForFunction(() => document.getElementById('launch-url').value !== '');
  const share = {
    launchUrl: await page.inputValue('#launch-url'),
    badgeMarkdown: await page.inputValue('#badge-markdown'),
    badgeRst: await page.inputValue('#badge-rst'),
  };
  const homeUrls = await pageUrls(page);
  await page.click('#launch');
  await page.waitForURL(/\/v2\//);
  const loadingUrl = page.url();
  await page.waitForSelector('main[data-phase]', { timeout: 60000 });
  const loadingUrls = await pageUrls(page);
  await page.waitForURL((u) => u.href.startsWith(`${p.origin}/jupyter/user/`), { timeout: 400000 });
  await page.waitForFunction((name) => document.title.includes(name) || document.body.innerText.includes(name),
    path.basename(p.path), { timeout: 180000, polling: 250 });
  await page.screenshot({ path: path.join(p.artifacts, 'public-jupyter.png') });
  const cookies = (await context.cookies()).map((c) => ({
    name: c.name, domain: c.domain, path: c.path, secure: c.secure,
  }));
  report({
    share, homeUrls, loadingUrl, loadingUrls, navigations, requested,
    finalUrl: page.url(), title: await page.title(), cookies, errors,
  });
} catch (err) {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
