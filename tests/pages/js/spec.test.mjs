// The home page's spec, URL and badge logic (static/js/spec.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  badgeMarkdown,
  badgeRst,
  launchUrl,
  makeSpec,
  pathError,
  refError,
  repoError,
} from '../../../static/js/spec.js';

const git = {
  id: 'git', displayName: 'Git repository', regex: '^(https?|git)://[^\\s]+$',
  repo: { label: 'Git repository URL', placeholder: 'https://example.org/owner/repo.git' },
  ref: { enabled: true, default: 'HEAD' },
};
const gh = {
  id: 'gh', displayName: 'GitHub', regex: '^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$',
  repo: { label: 'GitHub repository', placeholder: 'owner/repository' }, ref: { enabled: true, default: 'HEAD' },
};
const zenodo = { id: 'zenodo', displayName: 'Zenodo', regex: '.+', repo: {}, ref: { enabled: false } };
const swh = { id: 'swh', displayName: 'Software Heritage', regex: '.+', repo: {}, ref: { enabled: false } };

test('git: URL encoded, ref kept with its slashes', () => {
  assert.equal(makeSpec(git, ' https://example.org/a/b.git ', 'feature/x'),
    'https%3A%2F%2Fexample.org%2Fa%2Fb.git/feature/x');
  assert.equal(makeSpec(git, 'https://example.org/a/b.git', ''), 'https%3A%2F%2Fexample.org%2Fa%2Fb.git/HEAD');
});

test('gh: pasted GitHub URLs are reduced to owner/repo', () => {
  assert.equal(makeSpec(gh, 'https://github.com/jupyterhub/binderhub.git/', 'main'), 'jupyterhub/binderhub/main');
  assert.equal(repoError(gh, 'https://github.com/jupyterhub/binderhub'), '');
  assert.match(repoError(gh, 'not a repo'), /not a valid GitHub repository; for example owner\/repository/);
});

test('providers without refs: DOIs and SWHIDs as typed', () => {
  assert.equal(makeSpec(zenodo, 'https://doi.org/10.5281/zenodo.3242074', 'ignored'), '10.5281/zenodo.3242074');
  assert.equal(makeSpec(swh, 'swh:1:dir:0123', ''), 'swh:1:dir:0123');
});

test('repository errors', () => {
  assert.match(repoError(git, ''), /Enter the Git repository URL/);
  assert.match(repoError(git, 'ftp://x'), /not a valid Git repository/);
  assert.equal(repoError(git, 'git://127.0.0.1:9418/r.git'), '');
  assert.match(repoError(git, 'https://x/\u0000'), /control characters/);
  assert.equal(repoError({ ...git, regex: '(' }, 'anything'), ''); // a broken pattern is left to the server
});

test('ref errors follow git check-ref-format', () => {
  for (const ok of ['', 'main', 'v1.0', 'feature/x', '0123abc']) assert.equal(refError(ok), '', ok);
  for (const bad of ['-x', 'a..b', 'a b', 'x.lock', 'a//b', '/a', 'a/', 'a~1', 'a^', 'a:b', '.x', 'a@{1}']) {
    assert.notEqual(refError(bad), '', bad);
  }
});

test('path errors: only paths inside the server', () => {
  assert.equal(pathError('index.ipynb', 'file'), '');
  assert.equal(pathError('lab/tree/x.ipynb?reset', 'url'), '');
  assert.notEqual(pathError('../x', 'file'), '');
  assert.notEqual(pathError('https://evil.example', 'url'), '');
});

test('launch URL and badges', () => {
  const url = launchUrl('https://bb.example/', 'git', 'enc/main', 'dir/a b.ipynb', 'file');
  assert.equal(url, 'https://bb.example/v2/git/enc/main?labpath=dir/a%20b.ipynb');
  assert.equal(launchUrl('/', 'gh', 'o/r/HEAD', 'lab', 'url'), '/v2/gh/o/r/HEAD?urlpath=lab');
  assert.equal(launchUrl('/', 'gh', 'o/r/HEAD'), '/v2/gh/o/r/HEAD');
  assert.equal(badgeMarkdown('B', 'U'), '[![Binder](B)](U)');
  assert.equal(badgeRst('B', 'U'), '.. image:: B\n   :target: U');
});
