// Terminal output -> styled text segments, for the build log.
//
// Build logs come from strangers' Dockerfiles, so every byte is hostile:
// only SGR sequences (colours, bold, ...) are interpreted; every other
// escape or control sequence (cursor moves, screen clears, window titles,
// OSC 8 hyperlinks, device queries, 8-bit C1 controls) and the Unicode
// controls that reorder or hide text are removed. The output is plain data:
// the caller puts `text` into text nodes, never into HTML.
//
// Pure module (no DOM): tests import it in Node as well as in the browser.

const ESC = 0x1b;
const BEL = 0x07;
const CSI_8BIT = 0x9b;
const OSC_8BIT = 0x9d;
const ST_8BIT = 0x9c;
// 8-bit DCS, SOS, PM, APC: strings terminated by ST, like OSC.
const STRING_8BIT = new Set([0x90, 0x98, 0x9e, 0x9f]);
// ESC P (DCS), ESC X (SOS), ESC ^ (PM), ESC _ (APC), ESC ] (OSC).
const STRING_INTRO = new Set(['P', 'X', '^', '_', ']']);

// Bidirectional overrides/isolates, zero-width and BOM characters: they can
// make a log line read differently from what it contains ("Trojan source").
const INVISIBLE = /[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g;

// The 6x6x6 cube and grey ramp of the 256-colour palette (xterm's values).
const CUBE = [0, 95, 135, 175, 215, 255];

export function initialState() {
  return {
    fg: null, // null | {index: 0..15} | {rgb: [r, g, b]}
    bg: null,
    bold: false,
    dim: false,
    italic: false,
    underline: false,
    inverse: false,
    strike: false,
  };
}

function copyState(s) {
  return { ...s };
}

function palette256(n) {
  if (n < 16) return { index: n };
  if (n < 232) {
    const v = n - 16;
    return { rgb: [CUBE[Math.floor(v / 36)], CUBE[Math.floor(v / 6) % 6], CUBE[v % 6]] };
  }
  const grey = 8 + 10 * (n - 232);
  return { rgb: [grey, grey, grey] };
}

function clampByte(v) {
  const n = Number.parseInt(v, 10);
  if (!Number.isFinite(n)) return 0;
  return Math.max(0, Math.min(255, n));
}

// Reads an extended colour (38/48 ;5;n or ;2;r;g;b) starting at params[i];
// returns [colour or null, index of the last parameter used].
function extendedColour(params, i) {
  const mode = params[i + 1];
  if (mode === '5' && params.length > i + 2) {
    return [palette256(clampByte(params[i + 2])), i + 2];
  }
  if (mode === '2' && params.length > i + 4) {
    return [{ rgb: [clampByte(params[i + 2]), clampByte(params[i + 3]), clampByte(params[i + 4])] }, i + 4];
  }
  return [null, params.length];
}

function applySgr(state, paramText) {
  // ':' separates sub-parameters (38:2::r:g:b); treat it like ';' and drop
  // the empty colour-space id so both spellings parse alike.
  let params = paramText.split(/[;:]/);
  if (paramText.includes(':')) params = params.filter((p, idx) => !(p === '' && idx > 0));
  if (params.length === 0) params = ['0'];
  for (let i = 0; i < params.length; i++) {
    const code = params[i] === '' ? 0 : Number.parseInt(params[i], 10);
    if (!Number.isFinite(code)) continue;
    if (code === 0) Object.assign(state, initialState());
    else if (code === 1) state.bold = true;
    else if (code === 2) state.dim = true;
    else if (code === 3) state.italic = true;
    else if (code === 4) state.underline = true;
    else if (code === 7) state.inverse = true;
    else if (code === 9) state.strike = true;
    else if (code === 21 || code === 22) { state.bold = false; state.dim = false; }
    else if (code === 23) state.italic = false;
    else if (code === 24) state.underline = false;
    else if (code === 27) state.inverse = false;
    else if (code === 29) state.strike = false;
    else if (code >= 30 && code <= 37) state.fg = { index: code - 30 };
    else if (code === 38) { const [c, last] = extendedColour(params, i); if (c) state.fg = c; i = last; }
    else if (code === 39) state.fg = null;
    else if (code >= 40 && code <= 47) state.bg = { index: code - 40 };
    else if (code === 48) { const [c, last] = extendedColour(params, i); if (c) state.bg = c; i = last; }
    else if (code === 49) state.bg = null;
    else if (code >= 90 && code <= 97) state.fg = { index: code - 90 + 8 };
    else if (code >= 100 && code <= 107) state.bg = { index: code - 100 + 8 };
    // Blink, conceal, fonts and the rest: ignored on purpose.
  }
}

// Presentation of a state: CSS class names and inline colours. The classes
// carry the 16-colour palette (tuned for contrast in static/css); 256-colour
// and true-colour values become rgb() strings built from clamped numbers.
export function styleOf(state) {
  const classes = [];
  let color = null;
  let background = null;
  let fg = state.fg;
  let bg = state.bg;
  if (state.inverse) {
    [fg, bg] = [bg, fg];
    if (!fg) classes.push('ansi-fg-inverse');
    if (!bg) classes.push('ansi-bg-inverse');
  }
  if (fg) {
    if (fg.index !== undefined) {
      // Bold brightens the 8 basic colours, as most terminals do.
      const idx = state.bold && fg.index < 8 ? fg.index + 8 : fg.index;
      classes.push(`ansi-fg-${idx}`);
    } else color = `rgb(${fg.rgb.join(', ')})`;
  }
  if (bg) {
    if (bg.index !== undefined) classes.push(`ansi-bg-${bg.index}`);
    else background = `rgb(${bg.rgb.join(', ')})`;
  }
  if (state.bold) classes.push('ansi-bold');
  if (state.dim) classes.push('ansi-dim');
  if (state.italic) classes.push('ansi-italic');
  if (state.underline) classes.push('ansi-underline');
  if (state.strike) classes.push('ansi-strike');
  return { classes, color, background };
}

function sameStyle(a, b) {
  return a.color === b.color && a.background === b.background
    && a.classes.length === b.classes.length && a.classes.every((c, i) => c === b.classes[i]);
}

// Index just past a string sequence (OSC/DCS/...) starting at `start`, which
// ends at BEL, ESC \ or 8-bit ST. An unterminated one swallows the rest of
// the line: showing half an escape sequence helps nobody.
function skipString(text, start) {
  for (let i = start; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === BEL || c === ST_8BIT) return i + 1;
    if (c === ESC && text[i + 1] === '\\') return i + 2;
  }
  return text.length;
}

// Parses a CSI sequence whose parameters start at `start`; returns
// [index just past it, SGR parameter text or null when it is not SGR].
function readCsi(text, start) {
  let i = start;
  while (i < text.length && text.charCodeAt(i) >= 0x30 && text.charCodeAt(i) <= 0x3f) i++;
  const params = text.slice(start, i);
  const interStart = i;
  while (i < text.length && text.charCodeAt(i) >= 0x20 && text.charCodeAt(i) <= 0x2f) i++;
  if (i >= text.length) return [text.length, null];
  const final = text.charCodeAt(i);
  if (final < 0x40 || final > 0x7e) return [i, null]; // malformed: drop the introducer only
  const isSgr = text[i] === 'm' && i === interStart && /^[0-9;:]*$/.test(params);
  return [i + 1, isSgr ? params : null];
}

/**
 * Parse one line of terminal output.
 * @param {string} line text without its newline
 * @param {object} state SGR state at the start of the line (not modified)
 * @returns {{segments: {text: string, style: object}[], state: object}}
 *   the styled pieces and the state at the end of the line (for the next one)
 */
export function parseLine(line, state = initialState()) {
  const st = copyState(state);
  let segments = [];
  let run = '';
  const flush = () => {
    if (!run) return;
    const text = run.replace(INVISIBLE, '');
    run = '';
    if (!text) return;
    const style = styleOf(st);
    const last = segments[segments.length - 1];
    if (last && sameStyle(last.style, style)) last.text += text;
    else segments.push({ text, style });
  };
  let i = 0;
  while (i < line.length) {
    const c = line.charCodeAt(i);
    if (c === ESC) {
      flush();
      const next = line[i + 1];
      if (next === '[') {
        const [end, sgr] = readCsi(line, i + 2);
        if (sgr !== null) applySgr(st, sgr);
        i = end;
      } else if (next !== undefined && STRING_INTRO.has(next)) {
        i = skipString(line, i + 2);
      } else if (next !== undefined && next.charCodeAt(0) >= 0x20 && next.charCodeAt(0) <= 0x2f) {
        // ESC, intermediates, one final byte (charset selection and the like).
        let j = i + 1;
        while (j < line.length && line.charCodeAt(j) >= 0x20 && line.charCodeAt(j) <= 0x2f) j++;
        i = Math.min(j + 1, line.length);
      } else {
        i += next === undefined ? 1 : 2; // ESC c (reset), ESC 7/8, ESC =, ...
      }
    } else if (c === CSI_8BIT) {
      flush();
      const [end, sgr] = readCsi(line, i + 1);
      if (sgr !== null) applySgr(st, sgr);
      i = end;
    } else if (c === OSC_8BIT || STRING_8BIT.has(c)) {
      flush();
      i = skipString(line, i + 1);
    } else if (c === 0x0d) {
      // Carriage return: what follows overwrites the line (progress bars);
      // a last one is the CR of a CRLF line end.
      if (i < line.length - 1) {
        run = '';
        segments = [];
      }
      i++;
    } else if (c === 0x09) {
      run += '\t';
      i++;
    } else if (c < 0x20 || c === 0x7f || (c >= 0x80 && c <= 0x9f)) {
      i++; // other C0/C1 controls: BEL, backspace, form feed, ...
    } else {
      run += line[i];
      i++;
    }
  }
  flush();
  return { segments, state: st };
}

/** Plain text of a line: what remains once every sequence is removed. */
export function stripAnsi(line) {
  return parseLine(line).segments.map((s) => s.text).join('');
}
