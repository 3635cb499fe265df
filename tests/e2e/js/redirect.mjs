// The redirect rules in Chromium itself: its URL parser is the one that
// decides where a navigation goes. Every vector must stay under the server.
// Params: {url: a binderbuild page, server: a server URL, vectors: [...]}
import { params, run } from './lib.mjs';

const p = params();

await run(async ({ page }) => {
  await page.goto(p.url);
  const results = await page.evaluate(async ({ server, vectors }) => {
    const { serverRedirectUrl } = await import('/static/js/redirect.js');
    return vectors.map((v) => {
      const { url, ignored } = serverRedirectUrl(server, 'tok', v.params, window.location.href);
      // What the browser would navigate to, parsed by the browser.
      const a = document.createElement('a');
      a.href = url;
      return { params: v.params, url, ignored, origin: a.origin, pathname: a.pathname, protocol: a.protocol };
    });
  }, { server: p.server, vectors: p.vectors });
  return { results };
}, { bypassCSP: true });
