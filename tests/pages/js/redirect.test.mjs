// The page's redirect rules (static/js/redirect.js) against the vectors the
// server's rules are tested with (tests/pages/redirect_vectors.json).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import { UnsafePathError, openPath, serverRedirectUrl } from '../../../static/js/redirect.js';

const { cases } = JSON.parse(fs.readFileSync(new URL('../redirect_vectors.json', import.meta.url), 'utf8'));
const SERVER = 'http://127.0.0.1:8000/user/someone-abc/';
const PAGE = 'http://127.0.0.1:8585/v2/git/x/main';

test('there are safe and hostile vectors', () => {
  assert.ok(cases.filter((c) => c.expect === null).length > 20);
  assert.ok(cases.filter((c) => c.expect !== null).length > 10);
});

for (const c of cases) {
  test(`openPath ${JSON.stringify(c.params).slice(0, 70)}`, () => {
    if (c.expect === null) assert.throws(() => openPath(c.params), UnsafePathError);
    else assert.equal(openPath(c.params), c.expect);
  });

  test(`serverRedirectUrl stays under the server ${JSON.stringify(c.params).slice(0, 50)}`, () => {
    const { url, ignored } = serverRedirectUrl(SERVER, 'tok', c.params, PAGE);
    const parsed = new URL(url);
    assert.equal(parsed.origin, 'http://127.0.0.1:8000');
    assert.ok(parsed.pathname.startsWith('/user/someone-abc/'), url);
    assert.equal(parsed.searchParams.getAll('token').join(','), 'tok');
    assert.equal(ignored, c.expect === null);
    if (c.expect !== null) {
      const expected = new URL(SERVER + c.expect);
      expected.searchParams.set('token', 'tok');
      assert.equal(url, expected.href);
    } else {
      assert.equal(url, `${SERVER}?token=tok`);
    }
  });
}

test('a relative server URL is taken on the page origin', () => {
  const { url } = serverRedirectUrl('/user/a/', 't', { urlpath: 'lab' }, PAGE);
  assert.equal(url, 'http://127.0.0.1:8585/user/a/lab?token=t');
});

test('a server URL without trailing slash still confines to its path', () => {
  const { url } = serverRedirectUrl('http://h.example/user/a', '', { urlpath: 'lab' }, PAGE);
  assert.equal(url, 'http://h.example/user/a/lab');
});

test('credentials, query and fragment of the server URL are dropped', () => {
  const { url } = serverRedirectUrl('http://u:p@h.example/user/a/?x=1#f', 't', {}, PAGE);
  assert.equal(url, 'http://h.example/user/a/?token=t');
});

test('a server URL that is not http(s) is refused', () => {
  for (const bad of ['javascript:alert(1)', 'data:text/html,x', 'file:///etc/passwd', 'ftp://h/x']) {
    assert.throws(() => serverRedirectUrl(bad, 't', {}, PAGE), UnsafePathError, bad);
  }
});
