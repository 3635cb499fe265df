// The loading page when its event stream is cut mid-build (pytest cuts the
// connections at a relay between the browser and binderbuild).
// Params: {url (through the relay), cutAfter: log text to wait for}
import { params, run, waitFor, watchStates } from './lib.mjs';

const p = params();

await run(async ({ page }) => {
  await watchStates(page);
  await page.goto(p.url);
  await page.click('#toggle-log');
  await page.waitForFunction((text) => document.getElementById('log').textContent.includes(text), p.cutAfter,
    { timeout: 200000, polling: 100 });
  if (p.artifacts) await page.screenshot({ path: `${p.artifacts}/loading-building.png`, fullPage: true });
  await waitFor('cut');
  await page.waitForSelector('main[data-state="image-built"], main[data-state="failed"]', { timeout: 200000 });
  await page.waitForTimeout(500);
  return page.evaluate(() => ({
    state: document.getElementById('main').dataset.state,
    states: window.__states,
    connections: document.getElementById('main').dataset.connections,
    logLines: Array.from(document.querySelectorAll('#log .log-line'), (l) => l.textContent),
  }));
});
