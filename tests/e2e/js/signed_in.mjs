// Signed in, in Chromium: launch a repository into the user's named server,
// make a file there, stop the server on the hub's home page, start it again
// there, find the file and the repository's files; then (after the test
// pushes a new commit) launch the repository again and find the file still.
// Params: {loadingUrl, homeUrl (binderbuild's), repo (clone URL), hubUrl, username, password, artifacts}
import path from 'node:path';

import { params, run, waitFor } from './lib.mjs';

const p = params();

// The Jupyter server's contents API, called from a page of that server (its
// _xsrf cookie is there; the hub's login cookie authenticates the call).
async function contents(page, base, method, name, body) {
  return page.evaluate(async ({ base, method, name, body }) => {
    const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
    const resp = await fetch(`${base}api/contents/${name}`, {
      method,
      headers: { 'Content-Type': 'application/json', 'X-XSRFToken': decodeURIComponent(xsrf) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await resp.text();
    let content = null;
    try { content = JSON.parse(text).content; } catch { /* not JSON */ }
    return { status: resp.status, content };
  }, { base, method, name, body });
}

async function waitForServer(page, prefix) {
  await page.waitForURL((u) => u.href.startsWith(prefix) && !u.pathname.includes('/hub/'), { timeout: 300000 });
  await page.waitForLoadState('domcontentloaded');
  const url = new URL(page.url());
  // /user/<name>/<server>/...
  const parts = url.pathname.split('/');
  return `${url.origin}${parts.slice(0, 4).join('/')}/`;
}

await run(async ({ page }) => {
  const userPrefix = `${p.hubUrl}user/${p.username}/`;
  // 1. The loading page sends an anonymous visitor to the hub's login.
  await page.goto(p.loadingUrl);
  await page.waitForURL(/\/hub\/login/, { timeout: 60000 });
  const loginUrl = page.url();
  await page.fill('input[name="username"]', p.username);
  await page.fill('input[name="password"]', p.password);
  await Promise.all([page.waitForNavigation(), page.click('form [type="submit"]')]);
  // 2. Back on the loading page: build, launch, the server.
  const server = await waitForServer(page, userPrefix);
  const created = await contents(page, server, 'PUT', 'mine.txt', { type: 'file', format: 'text', content: 'my own file\n' });
  await page.screenshot({ path: path.join(p.artifacts, 'signed-in-server.png') });

  // 3. Stop it on the hub's home page; it stays listed, with "start".
  const name = server.split('/').slice(-2)[0];
  // The hub's home page binds its buttons from scripts it loads after the
  // page's load event (RequireJS): a click before that does nothing (seen
  // once in CI: no stop request reached the hub). Wait for the network to
  // settle first.
  await page.goto(`${p.hubUrl}hub/home`, { waitUntil: 'networkidle' });
  await page.click(`#stop-${name}`);
  await page.waitForSelector(`#start-${name}:not(.hidden)`, { timeout: 60000 });
  await page.screenshot({ path: path.join(p.artifacts, 'signed-in-stopped.png') });
  const stoppedRow = await page.locator(`#start-${name}`).isVisible();

  // 4. Start it again there.
  await page.click(`#start-${name}`);
  const again = await waitForServer(page, userPrefix);
  const mineAfterRestart = await contents(page, again, 'GET', 'mine.txt');
  const repoAfterRestart = await contents(page, again, 'GET', 'marker.txt');

  // 5. A new commit of the repository, launched again.
  // (The test answers with the commit's SHA: the branch's resolution may
  // still be cached for a while.)
  // Launched from binderbuild's home page, picking the "large" profile.
  const sha = (await waitFor('new commit')).trim();
  await page.goto(p.homeUrl);
  await page.waitForSelector('html[data-ready="true"]');
  const profiles = await page.$$eval('#profile option', (os) => os.map((o) => [o.value, o.textContent]));
  await page.selectOption('#provider', 'git');
  await page.fill('#repository', p.repo);
  await page.fill('#ref', sha);
  await page.selectOption('#profile', 'large');
  await page.click('#launch');
  await page.waitForURL(/\/v2\//);
  const launchedFrom = page.url();
  const rebuilt = await waitForServer(page, userPrefix);
  const mineAfterRebuild = await contents(page, rebuilt, 'GET', 'mine.txt');
  const newFile = await contents(page, rebuilt, 'GET', 'NEW.md');
  const repoAfterRebuild = await contents(page, rebuilt, 'GET', 'marker.txt');
  await page.screenshot({ path: path.join(p.artifacts, 'signed-in-rebuilt.png') });
  return {
    loginUrl, server, name, created: created.status, stoppedRow,
    again, mineAfterRestart, repoAfterRestart,
    rebuilt, mineAfterRebuild, newFile, repoAfterRebuild, profiles, launchedFrom,
  };
});
