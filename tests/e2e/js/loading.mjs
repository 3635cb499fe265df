// The loading page followed to its end (image built, failed, or the
// server opened). Reports what a person would see.
// Params: {url, until: "image-built"|"failed"|"server", artifacts, screenshot?,
//          phoneScreenshot?, showLog?, timeoutMs?, serverPrefix?, corruptToken?, expectLog?}
import path from 'node:path';

import { params, run, watchStates } from './lib.mjs';

const p = params();
const timeout = p.timeoutMs || 240000;

await run(async ({ page }) => {
  await watchStates(page);
  if (p.corruptToken) {
    // Replace the page's build token on every /build request it makes.
    await page.route('**/build/**', (route) => {
      const url = new URL(route.request().url());
      url.searchParams.set('build_token', 'not-a-token');
      route.continue({ url: url.href });
    });
  }
  await page.goto(p.url);
  const result = {};
  await page.waitForSelector('main[data-state]');
  if (p.showLog) {
    await page.click('#toggle-log');
  }
  if (p.until === 'server') {
    // Navigation to the launched server: wait until we are on its path.
    await page.waitForURL((u) => u.href.startsWith(p.serverPrefix), { timeout });
    await page.waitForLoadState('load');
    result.finalUrl = page.url();
    result.title = await page.title();
    if (p.screenshot) await page.screenshot({ path: path.join(p.artifacts, p.screenshot) });
    return result;
  }
  await page.waitForSelector(`main[data-state="${p.until}"]`, { timeout });
  if (p.expectLog !== false) {
    await page.waitForFunction(() => document.querySelectorAll('#log .log-line').length > 0);
  }
  // Let the log view render whatever is still queued.
  await page.waitForTimeout(500);
  Object.assign(result, await page.evaluate(() => {
    const log = document.getElementById('log');
    const lines = Array.from(log.querySelectorAll('.log-line'), (l) => l.textContent);
    const text = lines.join('\n');
    const styled = (word) => Array.from(log.querySelectorAll('span'))
      .filter((s) => s.textContent.includes(word))
      .map((s) => ({ className: s.className, color: getComputedStyle(s).color, inlineStyle: s.getAttribute('style') }));
    return {
      state: document.getElementById('main').dataset.state,
      phase: document.getElementById('main').dataset.phase,
      states: window.__states,
      favicons: window.__favicons,
      phaseText: document.getElementById('phase').textContent,
      failureVisible: !document.getElementById('failure').hidden,
      failureHeading: document.getElementById('failure-heading').textContent,
      failureMessage: document.getElementById('failure-message').textContent,
      failureStatus: document.getElementById('failure-message').dataset.status || null,
      resultText: document.getElementById('result').hidden ? null : document.getElementById('result').textContent,
      imageName: document.getElementById('image-name') ? document.getElementById('image-name').textContent : null,
      logVisible: !log.hidden,
      toggleExpanded: document.getElementById('toggle-log').getAttribute('aria-expanded'),
      logLines: lines.length,
      logHead: lines.slice(0, 30),
      logTail: lines.slice(-30),
      logHasControlChars: /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/.test(text),
      logText: text.length > 400000 ? text.slice(0, 200000) + text.slice(-200000) : text,
      elementsInLog: Array.from(log.querySelectorAll('*'), (e) => e.tagName.toLowerCase())
        .filter((t, i, all) => all.indexOf(t) === i),
      truncatedNotes: Array.from(log.querySelectorAll('.log-truncated'), (e) => e.textContent),
      longestLine: Math.max(0, ...lines.map((l) => l.length)),
      redAlert: styled('red-alert'),
      pwned: window.__pwned === undefined ? null : String(window.__pwned),
      title: document.title,
      favicon: document.getElementById('favicon').getAttribute('href'),
      location: window.location.href,
      progress: document.getElementById('progress').getAttribute('aria-valuenow'),
      connections: document.getElementById('main').dataset.connections,
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
    };
  }));
  if (p.screenshot) await page.screenshot({ path: path.join(p.artifacts, p.screenshot), fullPage: true });
  if (p.phoneScreenshot) {
    await page.setViewportSize({ width: 375, height: 740 });
    result.phone = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
    }));
    await page.screenshot({ path: path.join(p.artifacts, p.phoneScreenshot), fullPage: true });
  }
  return result;
});
