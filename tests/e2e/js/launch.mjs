// From the home page to a running Jupyter server: fill the form, press
// Launch, follow the loading page, land in JupyterLab on the file asked for.
// Params: {url: home page, repo, ref, path, serverPrefix: hub's user URL prefix, artifacts}
import path from 'node:path';

import { params, run, watchStates } from './lib.mjs';

const p = params();

await run(async ({ page }) => {
  await watchStates(page);
  const navigations = [];
  page.on('request', (r) => {
    if (r.isNavigationRequest() && r.frame() === page.mainFrame()) navigations.push(r.url());
  });
  await page.goto(p.url);
  await page.waitForSelector('html[data-ready="true"]');
  await page.selectOption('#provider', 'git');
  await page.fill('#repository', p.repo);
  await page.fill('#ref', p.ref);
  await page.fill('#path', p.path);
  await page.click('#launch');
  await page.waitForURL(/\/v2\//);
  const loadingUrl = page.url();
  await page.click('#toggle-log');
  // Part-way, once the image is built and the hub starts the server: a
  // screenshot of the loading page (best effort: the server may be quicker).
  try {
    await page.waitForSelector('main[data-phase="launching"], main[data-phase="built"]', { timeout: 300000 });
    await page.screenshot({ path: path.join(p.artifacts, 'loading-launch.png'), fullPage: true });
  } catch {
    // Already redirected.
  }
  await page.waitForURL((u) => u.href.startsWith(p.serverPrefix), { timeout: 300000 });
  // JupyterLab has loaded the file when its tab shows the file's name.
  await page.waitForFunction((name) => document.title.includes(name) || document.body.innerText.includes(name),
    path.basename(p.path), { timeout: 120000, polling: 250 });
  const result = {
    loadingUrl,
    navigations,
    finalUrl: page.url(),
    title: await page.title(),
  };
  await page.screenshot({ path: path.join(p.artifacts, 'jupyter.png') });
  return result;
});
