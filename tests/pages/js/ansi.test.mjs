// Terminal text handling of the build log (static/js/ansi.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { initialState, parseLine, stripAnsi } from '../../../static/js/ansi.js';

test('plain text is one unstyled segment', () => {
  const { segments } = parseLine('hello <b>world</b>');
  assert.deepEqual(segments, [{ text: 'hello <b>world</b>', style: { classes: [], color: null, background: null } }]);
});

test('SGR colours become classes; reset ends them', () => {
  const { segments, state } = parseLine('\x1b[1;31mred\x1b[0m plain \x1b[42mbg');
  assert.equal(segments[0].text, 'red');
  assert.deepEqual(segments[0].style.classes, ['ansi-fg-9', 'ansi-bold']);
  assert.equal(segments[1].text, ' plain ');
  assert.deepEqual(segments[1].style.classes, []);
  assert.deepEqual(segments[2].style.classes, ['ansi-bg-2']);
  assert.deepEqual(state.bg, { index: 2 });
});

test('256-colour and true-colour values are clamped numbers', () => {
  const a = parseLine('\x1b[38;5;196mx').segments[0].style;
  assert.equal(a.color, 'rgb(255, 0, 0)');
  const b = parseLine('\x1b[38;2;10;999;300mx').segments[0].style;
  assert.equal(b.color, 'rgb(10, 255, 255)');
  const c = parseLine('\x1b[48:2::1:2:3mx').segments[0].style;
  assert.equal(c.background, 'rgb(1, 2, 3)');
  // Not an SGR sequence (a ')' in it): nothing of it can become a style.
  const d = parseLine('\x1b[38;2;1;2;3);background:url(x)mx');
  for (const s of d.segments) {
    assert.equal(s.style.color, null);
    assert.equal(s.style.background, null);
  }
});

test('state carries over to the next line', () => {
  const first = parseLine('\x1b[32mgreen starts');
  const second = parseLine('still green', first.state);
  assert.deepEqual(second.segments[0].style.classes, ['ansi-fg-2']);
});

test('non-SGR sequences and controls are removed', () => {
  const hostile = [
    '\x1b]0;pwned title\x07',          // window title (OSC, BEL)
    '\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\', // OSC 8 hyperlink
    '\x1b[2J\x1b[H',                    // clear screen, home
    '\x1b[6n',                          // device status query
    '\x1bP+q544e\x1b\\',                // DCS
    '\x9b31m',                          // 8-bit CSI (SGR): interpreted, not shown
    '\x9d0;t\x9c',                      // 8-bit OSC
    '\x1b(B\x1b)0',                     // charset selection
    '\x1bc',                            // full reset
    'a\x08b\x07c\x00d\x7fe\x0cf',       // C0 controls, DEL
    '\u202eevil\u202c\u2066x\u2069\u200b', // bidi overrides, zero-width
  ].join('');
  const text = stripAnsi(hostile);
  assert.equal(text, 'linkabcdefevilx');
  assert.ok(!/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\u200b]/.test(text));
});

test('an unterminated OSC swallows the rest of the line', () => {
  assert.equal(stripAnsi('before\x1b]0;never ends'), 'before');
});

test('carriage return overwrites; CRLF does not', () => {
  assert.equal(stripAnsi('10%\r50%\r100%'), '100%');
  assert.equal(stripAnsi('done\r'), 'done');
});

test('tabs are kept', () => {
  assert.equal(stripAnsi('a\tb'), 'a\tb');
});

test('inverse swaps colours, defaults included', () => {
  const s = parseLine('\x1b[7mx').segments[0].style;
  assert.deepEqual(s.classes, ['ansi-fg-inverse', 'ansi-bg-inverse']);
  const t = parseLine('\x1b[31;7mx').segments[0].style;
  assert.deepEqual(t.classes, ['ansi-fg-inverse', 'ansi-bg-1']);
});

test('a 1 MB line parses quickly', () => {
  const line = '\x1b[33m' + 'x'.repeat(1 << 20);
  const started = performance.now();
  const { segments } = parseLine(line, initialState());
  assert.equal(segments[0].text.length, 1 << 20);
  assert.ok(performance.now() - started < 2000);
});
