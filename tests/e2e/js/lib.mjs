// Shared by the browser scenarios: start Debian's Chromium through
// playwright-core, read the scenario's parameters, report one JSON result.
//
// Protocol with pytest (tests/e2e/conftest.py): argv[2] is a JSON object of
// parameters; the scenario prints lines of its own and, last, one line
// "RESULT <json>"; a scenario that needs the test to act mid-way prints
// "WAIT <what>" and reads one line from stdin before going on.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.BINDERBUILD_CHROMIUM || '/usr/bin/chromium';

// The flags the project runs Chromium with everywhere: no sandbox (root in
// a container), no GPU, and nothing that phones home (no background
// networking, component updates, sync or QUIC probes).
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];

export function params() {
  return JSON.parse(process.argv[2] || '{}');
}

/**
 * A fresh browser profile (its own --user-data-dir, removed at close).
 * @returns {Promise<{context, page, errors: string[], close: () => Promise<void>}>}
 */
export async function openBrowser({ viewport = { width: 1100, height: 900 }, bypassCSP = false, permissions = [] } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'binderbuild-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true, // playwright passes --headless
    args: CHROMIUM_ARGS,
    viewport,
    bypassCSP,
    permissions,
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  const close = async () => {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, errors, close };
}

export function report(result) {
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

let lines = null;
/** Tell pytest what we wait for, and wait for its answer line. */
export async function waitFor(what) {
  if (!lines) lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  process.stdout.write(`WAIT ${what}\n`);
  const { value } = await lines.next();
  return value;
}

/** Run a scenario body with a browser; failures exit non-zero with the reason. */
export async function run(body, options) {
  let browser;
  try {
    browser = await openBrowser(options);
    const result = await body(browser);
    result.errors = browser.errors;
    report(result);
  } catch (err) {
    process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close();
    process.stdin.destroy();
  }
}

/** Record every value of main[data-state] and of the favicon the page goes through. */
export async function watchStates(page) {
  await page.addInitScript(() => {
    window.__states = [];
    const observe = () => {
      const main = document.getElementById('main');
      if (!main) return;
      const seen = () => {
        const state = main.dataset.state;
        if (state && window.__states[window.__states.length - 1] !== state) window.__states.push(state);
      };
      seen();
      new MutationObserver(seen).observe(main, { attributes: true, attributeFilter: ['data-state'] });
      window.__favicons = [];
      const icon = document.getElementById('favicon');
      const iconSeen = () => window.__favicons.push(icon.getAttribute('href').split('?')[0]);
      iconSeen();
      new MutationObserver(iconSeen).observe(icon, { attributes: true, attributeFilter: ['href'] });
    };
    document.addEventListener('DOMContentLoaded', observe);
  });
}
