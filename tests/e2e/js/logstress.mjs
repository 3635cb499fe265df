// The log view under a flood: many lines, very long lines, one huge
// message. The tab must stay responsive (a 10 ms heartbeat keeps beating)
// and the page must stay bounded (lines and characters capped).
// Params: {url: any binderbuild page (for the origin and its modules)}
import { params, run } from './lib.mjs';

const p = params();

// The page's CSP only runs its own nonce'd scripts; this scenario loads the
// page's modules itself, so it bypasses the CSP.
await run(async ({ page }) => {
  await page.goto(p.url);
  return page.evaluate(async () => {
    const { LogView } = await import('/static/js/logview.js');
    const box = document.createElement('div');
    box.className = 'terminal';
    document.body.append(box);
    const view = new LogView(box, { maxLines: 5000, maxLineChars: 10000 });

    let last = performance.now();
    let maxGap = 0;
    const beat = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
    }, 10);

    const started = performance.now();
    // 100,000 lines in 2,000 events, coloured.
    for (let e = 0; e < 2000; e++) {
      let chunk = '';
      for (let i = 0; i < 50; i++) chunk += `\x1b[3${i % 8}mline ${e * 50 + i}\x1b[0m some build output\n`;
      view.append(chunk);
    }
    // One 2 MB line, split over messages without newlines (as docker streams it).
    for (let i = 0; i < 20; i++) view.append('x'.repeat(100000));
    view.append('\n');
    // One event carrying 50,000 lines at once.
    let big = '';
    for (let i = 0; i < 50000; i++) big += `bulk ${i}\n`;
    view.append(big);
    view.append('the end\n');
    await view.idle();
    const elapsed = performance.now() - started;
    clearInterval(beat);
    const lines = box.querySelectorAll('.log-line');
    return {
      elapsedMs: elapsed,
      maxGapMs: maxGap,
      domLines: lines.length,
      totalLines: view.totalLines,
      omitted: box.querySelector('.log-omitted').textContent,
      lastLine: lines[lines.length - 1].textContent,
      longest: Math.max(...Array.from(lines, (l) => l.textContent.length)),
      truncated: Array.from(box.querySelectorAll('.log-truncated'), (n) => n.textContent),
      domSize: box.innerHTML.length,
    };
  });
}, { bypassCSP: true });
