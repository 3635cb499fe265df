// Chromium: an anonymous visitor opens binderbuild's loading page, is sent
// to the hub's login, signs in at the OpenID Connect provider, comes back to
// the loading page, which builds and launches, and lands in her own server.
// Params: {url: loading page, username, password, serverPrefix, artifacts}
import path from 'node:path';

import { params, run } from '../../e2e/js/lib.mjs';

const p = params();

await run(async ({ page }) => {
  const navigations = [];
  page.on('request', (r) => {
    if (r.isNavigationRequest() && r.frame() === page.mainFrame()) navigations.push(r.url());
  });
  await page.goto(p.url);
  await page.waitForURL(/\/hub\/login/);
  const loginPage = page.url();
  const loginText = await page.locator('body').innerText();
  await page.screenshot({ path: path.join(p.artifacts, 'signin-hub-login.png') });
  await page.click('a[href*="oauth_login"]');
  await page.waitForSelector('#username');
  const providerPage = page.url();
  await page.fill('#username', p.username);
  await page.fill('#password', p.password);
  await page.click('#submit');
  // Back at binderbuild's loading page, which builds and launches.
  await page.waitForURL((u) => u.href.startsWith(p.url.split('?')[0]), { timeout: 60000 });
  const backAt = page.url();
  await page.waitForURL((u) => u.href.startsWith(p.serverPrefix), { timeout: 300000 });
  // JupyterLab (or the classic notebook) has rendered its shell.
  await page.waitForSelector('.jp-LabShell, #notebook_list, #ipython-main-app', { timeout: 120000 });
  await page.screenshot({ path: path.join(p.artifacts, 'signin-server.png') });
  return {
    loginPage,
    loginText,
    providerPage,
    backAt,
    finalUrl: page.url(),
    title: await page.title(),
    navigations,
  };
});
