// The loading page's handling of replayed streams, with the stream itself
// scripted: each /build request gets the next body from params.streams
// (the connection then ends, and EventSource reconnects). The page comes
// from binderbuild; only the event stream is replaced.
// Params: {url, streams: [[event, ...], ...]}
import { params, run, watchStates } from './lib.mjs';

const p = params();

await run(async ({ page }) => {
  await watchStates(page);
  // Count the times the log loses lines (a redraw clears it): repeats that
  // are skipped never do.
  await page.addInitScript(() => {
    window.__clears = 0;
    document.addEventListener('DOMContentLoaded', () => {
      new MutationObserver((records) => {
        if (records.some((r) => Array.from(r.removedNodes).some((n) => n.classList && n.classList.contains('log-line')))) {
          window.__clears += 1;
        }
      }).observe(document.getElementById('log'), { childList: true });
    });
  });
  let served = 0;
  await page.route('**/build/**', (route) => {
    const events = p.streams[Math.min(served, p.streams.length - 1)];
    served += 1;
    // A short retry so the reconnect comes at once.
    const body = 'retry: 200\n\n' + events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('');
    route.fulfill({ status: 200, headers: { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' }, body });
  });
  await page.goto(p.url);
  await page.click('#toggle-log');
  await page.waitForSelector('main[data-state="image-built"], main[data-state="failed"]', { timeout: 60000 });
  await page.waitForTimeout(300);
  return page.evaluate(() => ({
    state: document.getElementById('main').dataset.state,
    states: window.__states,
    connections: document.getElementById('main').dataset.connections,
    clears: window.__clears,
    logLines: Array.from(document.querySelectorAll('#log .log-line'), (l) => l.textContent),
  })).then((r) => ({ ...r, served }));
});
