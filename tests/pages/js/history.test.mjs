// Reconnect bookkeeping of the loading page (static/js/history.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DIVERGED, DUPLICATE, EventHistory, NEW } from '../../../static/js/history.js';

const ev = (phase, message) => ({ phase, message });

test('a replay of what was shown is skipped, then new events show', () => {
  const h = new EventHistory();
  h.connectionOpened();
  assert.equal(h.push(ev('building', 'a\n')), NEW);
  assert.equal(h.push(ev('building', 'b\n')), NEW);
  h.connectionOpened(); // dropped; the server replays from the start
  assert.equal(h.push(ev('building', 'a\n')), DUPLICATE);
  assert.equal(h.push(ev('building', 'b\n')), DUPLICATE);
  assert.equal(h.push(ev('building', 'c\n')), NEW);
  assert.deepEqual(h.events().map((e) => e.message), ['a\n', 'b\n', 'c\n']);
  assert.equal(h.connections, 2);
});

test('a replay that differs cuts the history there', () => {
  const h = new EventHistory();
  h.connectionOpened();
  h.push(ev('waiting', 'position 3'));
  h.push(ev('building', 'a\n'));
  h.connectionOpened();
  assert.equal(h.push(ev('waiting', 'position 3')), DUPLICATE);
  assert.equal(h.push(ev('ready', 'done')), DIVERGED);
  assert.deepEqual(h.events(), [ev('waiting', 'position 3'), ev('ready', 'done')]);
});

test('same text in another phase is another event', () => {
  const h = new EventHistory();
  h.connectionOpened();
  h.push(ev('building', 'x'));
  h.connectionOpened();
  assert.equal(h.push(ev('unknown', 'x')), DIVERGED);
});

test('huge messages are compared whole but kept short', () => {
  const h = new EventHistory();
  const big = 'y'.repeat(100000);
  h.connectionOpened();
  h.push(ev('building', big));
  h.connectionOpened();
  assert.equal(h.push(ev('building', big)), DUPLICATE);
  h.connectionOpened();
  assert.equal(h.push(ev('building', big.slice(0, -1) + 'z')), DIVERGED);
  assert.ok(h.events()[0].message.length <= 20000);
});
