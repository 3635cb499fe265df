// What the loading page has shown, so a reconnected event stream does not
// show it twice.
//
// The server's /build stream has no event ids: after a dropped connection
// the page connects again and the server replays the build's events from
// the start (one build per image: the reconnect attaches to the same
// build). The replay normally repeats what the page already showed, then
// goes on. So each event is compared with the one shown at the same
// position: equal ones are skipped; at the first difference (the build
// finished meanwhile, or the queue moved) the page's history is cut there
// and the caller redraws it.
//
// Pure module (no DOM).

// Events keep at most this much of their message for redrawing; the
// comparison uses a hash and the length of the whole message.
const KEPT_MESSAGE_CHARS = 20000;

function hashString(text) {
  // 32-bit FNV-1a: cheap, and a collision only means an event is not redrawn.
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16);
}

export function eventKey(ev) {
  const message = typeof ev.message === 'string' ? ev.message : '';
  return `${ev.phase}\u0000${message.length}\u0000${hashString(message)}`;
}

export const NEW = 'new';
export const DUPLICATE = 'duplicate';
export const DIVERGED = 'diverged';

export class EventHistory {
  constructor() {
    this.entries = []; // {key, ev}
    this.cursor = 0; // position in entries of the current connection's next event
    this.connections = 0;
  }

  /** Call when a (re)connection opens: its events start from the beginning. */
  connectionOpened() {
    this.cursor = 0;
    this.connections++;
  }

  /**
   * Record an event of the current connection.
   * @returns {'new'|'duplicate'|'diverged'} show it; skip it; or redraw
   *   everything in events() (which now ends with this event)
   */
  push(ev) {
    const key = eventKey(ev);
    if (this.cursor < this.entries.length) {
      if (this.entries[this.cursor].key === key) {
        this.cursor++;
        return DUPLICATE;
      }
      this.entries.length = this.cursor;
      this.entries.push({ key, ev: keep(ev) });
      this.cursor++;
      return DIVERGED;
    }
    this.entries.push({ key, ev: keep(ev) });
    this.cursor++;
    return NEW;
  }

  /** The events shown, oldest first. */
  events() {
    return this.entries.map((e) => e.ev);
  }
}

function keep(ev) {
  if (typeof ev.message === 'string' && ev.message.length > KEPT_MESSAGE_CHARS) {
    return { ...ev, message: ev.message.slice(0, KEPT_MESSAGE_CHARS) };
  }
  return ev;
}
