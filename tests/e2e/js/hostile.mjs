// Launch links with hostile urlpath/labpath/filepath values: record every
// main-frame navigation the browser makes after the loading page.
// Params: {urls: [...], serverPrefix}
import { params, run } from './lib.mjs';

const p = params();

await run(async ({ page }) => {
  const results = [];
  for (const url of p.urls) {
    const navigations = [];
    const listener = (r) => {
      if (r.isNavigationRequest() && r.frame() === page.mainFrame()) navigations.push(r.url());
    };
    page.on('request', listener);
    await page.goto(url);
    const notice = await page.$('#rejected-params');
    await page.waitForURL((u) => !u.href.startsWith(url.split('?')[0]), { timeout: 300000 });
    // Let any follow-up redirect of the server itself happen.
    await page.waitForLoadState('load').catch(() => {});
    page.off('request', listener);
    results.push({ url, navigations, finalUrl: page.url(), serverNotice: Boolean(notice) });
  }
  return { results };
});
