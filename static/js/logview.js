// The build log: a terminal-like view that stays responsive however much
// a build prints.
//
// - Text only ever reaches the page as text nodes (never innerHTML), so a
//   log line carrying <script> or HTML is shown, not run.
// - Colours come from ansi.js; every other control sequence is dropped.
// - Appends are queued and rendered in batches on a timer, a bounded number
//   of lines per batch, so thousands of events per second never block the
//   tab; only the last `maxLines` lines stay in the page, and each line shows
//   at most `maxLineChars` characters (a note says how much was left out).

import { initialState, parseLine } from './ansi.js';

const DEFAULTS = {
  maxLines: 5000,
  maxLineChars: 10000,
  batchLines: 500,
  flushDelayMs: 30,
};

// Queued in place of text: end the line being written, if any.
const BREAK = Symbol('break line');

// A line still being written (no newline yet) keeps at most this much raw
// text: past it the rest of the line is counted, not kept.
const OPEN_LINE_RAW_LIMIT_FACTOR = 4;

function formatCount(n) {
  return n.toLocaleString('en-US');
}

export class LogView {
  /**
   * @param {HTMLElement} container element that receives one <div> per line
   * @param {object} options maxLines, maxLineChars, batchLines, flushDelayMs
   */
  constructor(container, options = {}) {
    this.el = container;
    this.opts = { ...DEFAULTS, ...options };
    this.doc = container.ownerDocument;
    this.pending = [];
    this.timer = null;
    this.idleWaiters = [];
    this.clear();
  }

  /** Forget everything shown (used when a reconnected stream tells another story). */
  clear() {
    this.pending = [];
    this.offset = 0; // how much of pending[0] is already rendered
    this.el.replaceChildren();
    this.omitted = this.doc.createElement('div');
    this.omitted.className = 'log-omitted';
    this.omitted.hidden = true;
    this.el.append(this.omitted);
    this.state = initialState(); // SGR state after the last complete line
    this.open = null; // {el, raw, startState, extra} of a line without its newline yet
    this.totalLines = 0;
    this.droppedLines = 0;
  }

  /** Queue text (one event's message); it may hold many lines or part of one. */
  append(text) {
    if (typeof text !== 'string' || text === '') return;
    this.pending.push(text);
    this.schedule();
  }

  /** Make the next text start on a line of its own (a new phase's first message). */
  breakLine() {
    this.pending.push(BREAK);
    this.schedule();
  }

  /** Resolves once everything queued so far is on the page. */
  idle() {
    if (!this.pending.length && this.timer === null) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The text on the page (for copying and tests). */
  text() {
    return Array.from(this.el.querySelectorAll('.log-line'), (l) => l.textContent).join('\n');
  }

  schedule(delay = this.opts.flushDelayMs) {
    if (this.timer !== null) return;
    // A timer rather than requestAnimationFrame: it also runs (throttled) in
    // background tabs, so a hidden tab does not pile up the whole log.
    this.timer = setTimeout(() => this.flush(), delay);
  }

  flush() {
    this.timer = null;
    const stick = this.atBottom();
    const fragment = this.doc.createDocumentFragment();
    let budget = this.opts.batchLines;
    while (this.pending.length && budget > 0) {
      // An offset into the first message instead of slicing it: one event
      // may carry a whole log, and re-copying its rest per line would be
      // quadratic.
      const text = this.pending[0];
      if (text === BREAK) {
        this.pending.shift();
        if (this.open) this.closeOpenLine(fragment);
        continue;
      }
      const newline = text.indexOf('\n', this.offset);
      if (newline === -1) {
        this.extendOpenLine(text.slice(this.offset), fragment);
        this.pending.shift();
        this.offset = 0;
      } else {
        this.extendOpenLine(text.slice(this.offset, newline), fragment);
        this.closeOpenLine(fragment);
        this.offset = newline + 1;
        if (this.offset >= text.length) {
          this.pending.shift();
          this.offset = 0;
        }
      }
      budget--;
    }
    this.el.append(fragment);
    this.trim();
    if (stick) this.el.scrollTop = this.el.scrollHeight;
    // A backlog goes on at once (the timer still yields to input and
    // painting between batches); fresh text waits a little to be batched.
    if (this.pending.length) this.schedule(0);
    else {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      waiters.forEach((resolve) => resolve());
    }
  }

  atBottom() {
    return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 40;
  }

  extendOpenLine(piece, fragment) {
    if (!piece && !this.open) return;
    if (!this.open) {
      const el = this.doc.createElement('div');
      el.className = 'log-line';
      fragment.append(el);
      this.totalLines++;
      this.open = { el, raw: '', extra: 0, startState: this.state };
    }
    const open = this.open;
    const room = this.opts.maxLineChars * OPEN_LINE_RAW_LIMIT_FACTOR - open.raw.length;
    if (piece.length > room) {
      open.extra += piece.length - Math.max(room, 0);
      piece = piece.slice(0, Math.max(room, 0));
    }
    open.raw += piece;
    this.renderLine(open);
  }

  closeOpenLine(fragment) {
    if (!this.open) {
      // An empty line ("\n" alone).
      const el = this.doc.createElement('div');
      el.className = 'log-line';
      fragment.append(el);
      this.totalLines++;
      return;
    }
    this.state = this.open.endState;
    this.open = null;
  }

  renderLine(open) {
    const { segments, state } = parseLine(open.raw, open.startState);
    open.endState = state;
    const nodes = [];
    let room = this.opts.maxLineChars;
    let hidden = open.extra;
    for (const seg of segments) {
      let text = seg.text;
      if (room <= 0) {
        hidden += text.length;
        continue;
      }
      if (text.length > room) {
        hidden += text.length - room;
        text = text.slice(0, room);
      }
      room -= text.length;
      const { classes, color, background } = seg.style;
      if (!classes.length && !color && !background) {
        nodes.push(this.doc.createTextNode(text));
        continue;
      }
      const span = this.doc.createElement('span');
      if (classes.length) span.className = classes.join(' ');
      // CSSOM assignments, not a style attribute: allowed by the page's CSP
      // and never parsed as markup.
      if (color) span.style.color = color;
      if (background) span.style.backgroundColor = background;
      span.textContent = text;
      nodes.push(span);
    }
    if (hidden > 0) {
      const note = this.doc.createElement('span');
      note.className = 'log-truncated';
      note.textContent = ` … [${formatCount(hidden)} more characters not shown]`;
      nodes.push(note);
    }
    open.el.replaceChildren(...nodes);
  }

  trim() {
    const lines = this.el.children.length - 1; // minus the "omitted" note
    const excess = lines - this.opts.maxLines;
    if (excess <= 0) return;
    for (let i = 0; i < excess; i++) {
      const first = this.omitted.nextSibling;
      if (!first || (this.open && first === this.open.el)) break;
      first.remove();
      this.droppedLines++;
    }
    this.omitted.hidden = false;
    this.omitted.textContent = `… ${formatCount(this.droppedLines)} earlier lines not shown`;
  }
}
