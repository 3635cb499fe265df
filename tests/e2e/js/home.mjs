// The home page: validation as you type, launch URL and badges, copy
// buttons, keyboard use, a phone-sized screen, and the launch button.
// Params: {url: home page URL, repo: git clone URL, ref, path, artifacts: dir, launch: bool}
import path from 'node:path';

import { params, run } from './lib.mjs';

const p = params();

await run(async ({ page, context }) => {
  const result = {};
  await page.goto(p.url);
  await page.waitForSelector('html[data-ready="true"]');
  result.providers = await page.$$eval('#provider option', (os) => os.map((o) => o.value));
  await page.selectOption('#provider', 'git');
  result.repoLabel = await page.textContent('#repository-label');

  // Typing something invalid: the error shows while typing, and is tied to the field.
  await page.fill('#repository', 'ftp://not-allowed.example/repo');
  result.invalid = {
    ariaInvalid: await page.getAttribute('#repository', 'aria-invalid'),
    error: await page.textContent('#repository-error'),
    errorVisible: await page.isVisible('#repository-error'),
    describedBy: await page.getAttribute('#repository', 'aria-describedby'),
    launchUrl: await page.inputValue('#launch-url'),
    copyDisabled: await page.isDisabled('button[data-copy="launch-url"]'),
  };
  await page.fill('#ref', 'a..b');
  result.badRef = await page.textContent('#ref-error');
  await page.fill('#ref', p.ref);
  await page.fill('#path', '../../hub/admin');
  result.badPath = await page.textContent('#path-error');

  await page.fill('#repository', p.repo);
  await page.fill('#path', p.path);
  result.valid = {
    ariaInvalid: await page.getAttribute('#repository', 'aria-invalid'),
    errorVisible: await page.isVisible('#repository-error'),
    launchUrl: await page.inputValue('#launch-url'),
    markdown: await page.inputValue('#badge-markdown'),
    rst: await page.inputValue('#badge-rst'),
  };
  await page.selectOption('#path-type', 'url');
  result.urlpathLaunchUrl = await page.inputValue('#launch-url');
  await page.selectOption('#path-type', 'file');

  // Copy buttons put the exact text on the clipboard and say so.
  await page.click('button[data-copy="launch-url"]');
  result.clipboardLaunch = await page.evaluate(() => navigator.clipboard.readText());
  await page.click('button[data-copy="badge-markdown"]');
  result.clipboardMarkdown = await page.evaluate(() => navigator.clipboard.readText());
  result.copyStatus = await page.textContent('#copy-status');

  // Contrast of the main text colours (WCAG relative luminance).
  result.contrast = await page.evaluate(() => {
    const rgb = (s) => s.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number);
    const lum = ([r, g, b]) => {
      const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((m, n) => n - m); return (x + 0.05) / (y + 0.05); };
    const pair = (sel, bgSel) => {
      const el = document.querySelector(sel);
      const bg = document.querySelector(bgSel || sel);
      return ratio(rgb(getComputedStyle(el).color), rgb(getComputedStyle(bg).backgroundColor));
    };
    return {
      body: pair('.intro p', 'body'),
      label: pair('label[for="repository"]', '.card'),
      help: pair('#path-help', '.card'),
      launch: pair('#launch'),
      nav: pair('.site-nav a', '.site-header'),
    };
  });

  await page.screenshot({ path: path.join(p.artifacts, 'home.png'), fullPage: true });

  // Keyboard: from the provider select, Tab walks the form in order.
  await page.focus('#provider');
  const order = [];
  for (let i = 0; i < 8; i++) {
    order.push(await page.evaluate(() => document.activeElement.id || document.activeElement.tagName));
    await page.keyboard.press('Tab');
  }
  result.tabOrder = order;
  result.focusOutline = await page.evaluate(() => {
    document.getElementById('repository').focus();
    return getComputedStyle(document.activeElement).outlineStyle;
  });

  // A phone-sized screen: nothing wider than the viewport.
  await page.setViewportSize({ width: 375, height: 740 });
  result.phone = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    launchWidth: document.getElementById('launch').getBoundingClientRect().width,
  }));
  await page.screenshot({ path: path.join(p.artifacts, 'home-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1100, height: 900 });

  if (p.launch) {
    // Launch with the keyboard alone.
    await page.focus('#launch');
    await Promise.all([page.waitForURL(/\/v2\//), page.keyboard.press('Enter')]);
    result.launchedTo = page.url();
    await page.waitForSelector('#phase');
  }
  return result;
}, { permissions: ['clipboard-read', 'clipboard-write'] });
