// Where the loading page sends the browser once the server is ready.
//
// `urlpath`, `labpath` and `filepath` come from a link anyone can write, so
// whatever they hold (absolute URLs, //host, javascript:, '..', backslashes,
// any layer of percent-encoding of those) the result is the launched
// server's own URL, on its origin, under its path. Values that try to leave
// are dropped (the server's start page opens instead), never "repaired"
// into something else.
//
// The same rules run on the server (binderbuild/handlers/pages.py,
// check_open_params); tests feed both the same vectors.
//
// Pure module (no DOM): `new URL` is the browser's own parser, and the final
// check uses it, so what is checked is what the browser will navigate to.

export class UnsafePathError extends Error {}

// Control characters, and the Unicode ones that reorder or hide text.
const UNSAFE_CHARS = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/;
const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:/;
const MAX_DECODE_ROUNDS = 3;
const MAX_OPEN_PATH = 2000;

// Percent-decoding with Python's urllib.parse.unquote semantics (what the
// server uses): runs of %XX are UTF-8 (invalid UTF-8 is an error), a '%'
// not followed by two hex digits stays as it is.
function percentDecode(text) {
  return text.replace(/(?:%[0-9A-Fa-f]{2})+/g, (run) => {
    const bytes = new Uint8Array(run.length / 3);
    for (let i = 0; i < bytes.length; i++) bytes[i] = Number.parseInt(run.substr(i * 3 + 1, 2), 16);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new UnsafePathError('invalid percent-encoding');
    }
  });
}

function decodeFully(value) {
  for (let i = 0; i < MAX_DECODE_ROUNDS; i++) {
    const decoded = percentDecode(value);
    if (decoded === value) return value;
    value = decoded;
  }
  if (percentDecode(value) !== value) throw new UnsafePathError('too many layers of percent-encoding');
  return value;
}

function checkChars(value) {
  if (UNSAFE_CHARS.test(value) || value.includes('\\')) {
    throw new UnsafePathError('control characters or backslashes');
  }
}

function checkText(value) {
  checkChars(value);
  if (SCHEME.test(value) || value.startsWith('//')) throw new UnsafePathError('an absolute URL');
}

function encodeWith(text, keep) {
  let encoded;
  try {
    encoded = encodeURIComponent(text);
  } catch {
    throw new UnsafePathError('not valid Unicode'); // lone surrogates
  }
  return encoded.replace(/%(40|3A|24|2B|2C|3B|3D|26|2F|3F)/g, (m, hex) => {
    const ch = String.fromCharCode(Number.parseInt(hex, 16));
    return keep.includes(ch) ? ch : m;
  });
}

// Readable characters kept in path segments: encodeURIComponent's plus these
// (the server's quote(safe=...) keeps the same set).
const SEGMENT_KEEP = "@:$+,;=&";

// Python's quote(s, safe=''): only letters, digits and _.-~ stay as they are.
function quoteStrict(text) {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** A path inside the server, re-encoded; throws UnsafePathError. */
export function cleanPath(path) {
  if (path.length > MAX_OPEN_PATH) throw new UnsafePathError('too long');
  checkText(path);
  checkText(decodeFully(path));
  const segments = [];
  for (const raw of path.split('/')) {
    const segment = decodeFully(raw);
    if (segment === '' || segment === '.') continue;
    if (segment === '..' || segment.includes('/')) throw new UnsafePathError("'..' or an encoded '/'");
    checkChars(segment);
    segments.push(encodeWith(segment, SEGMENT_KEEP));
  }
  let cleaned = segments.join('/');
  if (cleaned && path.endsWith('/')) cleaned += '/';
  return cleaned;
}

/** An urlpath (path, optional ?query and #fragment) made safe; throws UnsafePathError. */
export function cleanUrlpath(urlpath) {
  if (urlpath.length > MAX_OPEN_PATH) throw new UnsafePathError('too long');
  const hashAt = urlpath.indexOf('#');
  const rest = hashAt === -1 ? urlpath : urlpath.slice(0, hashAt);
  const fragment = hashAt === -1 ? '' : urlpath.slice(hashAt + 1);
  const queryAt = rest.indexOf('?');
  const path = queryAt === -1 ? rest : rest.slice(0, queryAt);
  const query = queryAt === -1 ? '' : rest.slice(queryAt + 1);
  let cleaned = cleanPath(path);
  if (UNSAFE_CHARS.test(query) || UNSAFE_CHARS.test(fragment)) throw new UnsafePathError('control characters');
  // The page adds the server's token itself: a link cannot replace it.
  const pairs = [...new URLSearchParams(query)].filter(([k]) => k !== 'token');
  if (pairs.length) cleaned += `?${pairs.map(([k, v]) => `${quoteStrict(k)}=${quoteStrict(v)}`).join('&')}`;
  if (fragment) cleaned += `#${encodeWith(decodeFully(fragment), `${SEGMENT_KEEP}/?`)}`;
  return cleaned;
}

/**
 * The path to open inside the server: urlpath wins, then labpath
 * (JupyterLab: lab/tree/{labpath}), then filepath (tree/{filepath}).
 * '' is the server's default page. Throws UnsafePathError.
 */
export function openPath({ urlpath = null, labpath = null, filepath = null } = {}) {
  if (urlpath) return cleanUrlpath(urlpath);
  if (labpath) return `lab/tree/${cleanPath(labpath)}`;
  if (filepath) return `tree/${cleanPath(filepath)}`;
  return '';
}

/**
 * The URL to send the browser to once the server is ready.
 * @param {string} serverUrl the `url` of the ready event (absolute, or relative to the page)
 * @param {string} token the `token` of the ready event ('' for none)
 * @param {{urlpath?: string, labpath?: string, filepath?: string}} params what to open
 * @param {string} pageUrl the loading page's URL (base for a relative serverUrl)
 * @returns {{url: string, ignored: boolean}} the target, and whether the
 *   requested path was unsafe and left out
 * @throws {UnsafePathError} when serverUrl itself is not an http(s) URL
 */
export function serverRedirectUrl(serverUrl, token, params, pageUrl) {
  let base;
  try {
    base = new URL(serverUrl, pageUrl);
  } catch {
    throw new UnsafePathError('the server URL is not a URL');
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new UnsafePathError('the server URL is not http(s)');
  }
  base.username = '';
  base.password = '';
  base.search = '';
  base.hash = '';
  if (!base.pathname.endsWith('/')) base.pathname += '/';

  let ignored = false;
  let relative = '';
  try {
    relative = openPath(params || {});
  } catch (err) {
    if (!(err instanceof UnsafePathError)) throw err;
    ignored = true;
  }
  // Appended to the base's text, never resolved against it: resolution is
  // what would let '//host' or '/x' escape.
  let target = new URL(base.href + relative);
  if (target.origin !== base.origin || !target.pathname.startsWith(base.pathname)) {
    target = new URL(base.href);
    ignored = true;
  }
  if (token) target.searchParams.set('token', token);
  return { url: target.href, ignored };
}
