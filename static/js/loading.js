// The loading page: follows /build/{provider}/{spec} with EventSource, shows
// the phase, a progress bar and the build log, and opens the server when it
// is ready (or says why it is not).
//
// Reconnecting: EventSource reconnects by itself after a dropped
// connection; the server attaches the new stream to the same build and
// replays its events from the start, and EventHistory skips what was
// already shown. When the server refuses the stream outright (EventSource
// gives up), one plain request learns why: an expired build token is
// replaced and the stream reopened, other refusals are shown as failures,
// server errors are retried with backoff.

import { setUpCopyButtons } from './copy.js';
import { DIVERGED, DUPLICATE, EventHistory } from './history.js';
import { LogView } from './logview.js';
import { UnsafePathError, serverRedirectUrl } from './redirect.js';

const STEPS = ['resolve', 'build', 'launch', 'ready'];
const PHASES = {
  waiting: { step: 'resolve', progress: 5, text: 'Waiting for a build slot…' },
  fetching: { step: 'resolve', progress: 10, text: 'Fetching the repository…' },
  building: { step: 'build', progress: 25, text: 'Building the image…' },
  pushing: { step: 'build', progress: 70, text: 'Pushing the image…' },
  built: { step: 'launch', progress: 80, text: 'Image ready. Starting the server…' },
  launching: { step: 'launch', progress: 85, text: 'Starting the server…' },
  ready: { step: 'ready', progress: 100, text: 'Ready.' },
};
// What failed, by the step the page had reached.
const FAILURE_HEADLINES = {
  resolve: 'Could not prepare the repository',
  build: 'Build failed',
  launch: 'The server did not start',
};
// Server refused or errored: attempts of our own before giving up.
const MAX_RECOVERIES = 8;
// Network errors EventSource retries by itself (~3 s apart) before we stop it.
const MAX_SILENT_RETRIES = 20;

function firstLine(text) {
  return String(text || '').trim().split('\n').pop().trim();
}

class LoadingPage {
  constructor(config) {
    this.config = config;
    this.token = config.buildToken;
    this.history = new EventHistory();
    this.log = new LogView(document.getElementById('log'));
    this.es = null;
    this.finished = false;
    this.recoveries = 0;
    this.silentRetries = 0;
    this.tokenRefreshed = false;
    this.buildLines = 0;
    this.lastPhase = null;
    this.step = 'resolve';
    this.title = document.title;
    this.dom = {
      main: document.getElementById('main'),
      phase: document.getElementById('phase'),
      progress: document.getElementById('progress'),
      bar: document.getElementById('progress-bar'),
      steps: document.getElementById('steps'),
      failure: document.getElementById('failure'),
      failureHeading: document.getElementById('failure-heading'),
      failureMessage: document.getElementById('failure-message'),
      result: document.getElementById('result'),
      toggle: document.getElementById('toggle-log'),
      logEl: document.getElementById('log'),
      favicon: document.getElementById('favicon'),
    };
  }

  start() {
    this.dom.toggle.addEventListener('click', () => {
      this.showLog(this.dom.toggle.getAttribute('aria-expanded') !== 'true');
    });
    document.getElementById('retry').addEventListener('click', () => window.location.reload());
    setUpCopyButtons();
    this.setFavicon('progress');
    this.setState('connecting');
    this.connect();
  }

  streamUrl() {
    const url = new URL(this.config.buildUrl, window.location.href);
    url.searchParams.set('build_token', this.token);
    return url.href;
  }

  connect() {
    if (this.es) this.es.close();
    const es = new EventSource(this.streamUrl());
    this.es = es;
    es.addEventListener('open', () => {
      if (es !== this.es) return;
      this.history.connectionOpened();
      this.silentRetries = 0;
      this.tokenRefreshed = false;
      this.dom.main.dataset.connections = String(this.history.connections);
      if (!this.finished) this.setState('running');
    });
    es.addEventListener('message', (msg) => {
      if (es === this.es) this.onMessage(msg.data);
    });
    es.addEventListener('error', () => {
      if (es === this.es) this.onError(es);
    });
  }

  onMessage(data) {
    if (this.finished) return;
    let ev;
    try {
      ev = JSON.parse(data);
    } catch {
      return; // not an event of the protocol
    }
    if (!ev || typeof ev !== 'object' || typeof ev.phase !== 'string') return;
    const verdict = this.history.push(ev);
    if (verdict === DUPLICATE) return;
    if (verdict === DIVERGED) {
      // The replay differs from what we showed: redraw from the history.
      this.log.clear();
      this.buildLines = 0;
      this.lastPhase = null;
      const events = this.history.events();
      for (const old of events.slice(0, -1)) this.logEvent(old);
    }
    this.show(ev);
  }

  logEvent(ev) {
    const phase = ev.phase.toLowerCase();
    // repo2docker's messages do not always end their line; a new phase
    // (the failure's reason above all) starts on a line of its own.
    if (this.lastPhase && phase !== this.lastPhase) this.log.breakLine();
    this.lastPhase = phase;
    this.log.append(typeof ev.message === 'string' ? ev.message : '');
  }

  show(ev) {
    const phase = ev.phase.toLowerCase();
    this.logEvent(ev);
    if (phase === 'failed') {
      this.fail(firstLine(ev.message) || 'The launch failed.', ev.status_code);
      return;
    }
    if (phase === 'ready') {
      this.ready(ev);
      return;
    }
    const info = PHASES[phase];
    if (!info) return; // 'unknown' and future phases: log lines only
    this.dom.main.dataset.phase = phase;
    let progress = info.progress;
    if (phase === 'building') {
      // No build says how far along it is: creep towards the push with
      // every log line, so a long build visibly moves.
      this.buildLines += 1;
      progress += 40 * (1 - Math.exp(-this.buildLines / 150));
    }
    this.setProgress(progress, info.step);
    const text = ['waiting', 'launching'].includes(phase) && firstLine(ev.message) ? firstLine(ev.message) : info.text;
    this.setPhaseText(text);
  }

  ready(ev) {
    this.finish();
    this.setProgress(100, 'ready');
    this.setFavicon('ready');
    this.dom.main.dataset.phase = 'ready';
    if (!ev.url) {
      // build_only: there is no server to open.
      this.setState('image-built');
      this.setPhaseText('Image built.');
      const p = document.createElement('p');
      p.append('The image ');
      const code = document.createElement('code');
      code.id = 'image-name';
      code.textContent = ev.imageName || ev.image || '';
      p.append(code, ' is built. This service only builds images: there is no server to open.');
      this.dom.result.replaceChildren(p);
      this.dom.result.hidden = false;
      document.title = `Image built · ${this.title}`;
      return;
    }
    let target;
    try {
      target = serverRedirectUrl(ev.url, ev.token || '', this.config.open, window.location.href);
    } catch (err) {
      if (!(err instanceof UnsafePathError)) throw err;
      this.fail(`The server is ready, but its address cannot be opened safely (${err.message}).`);
      return;
    }
    this.setState('redirecting');
    this.setPhaseText('Your server is ready. Opening it…');
    const p = document.createElement('p');
    const link = document.createElement('a');
    link.id = 'server-link';
    link.href = target.url;
    link.textContent = 'open your server';
    p.append('If nothing happens, ', link, '.');
    if (target.ignored) p.append(' The path to open was not safe and was left out.');
    this.dom.result.replaceChildren(p);
    this.dom.result.hidden = false;
    this.dom.main.dataset.target = target.url;
    document.title = `Ready · ${this.title}`;
    // replace(): going back must not land here and launch a second server.
    window.location.replace(target.url);
  }

  fail(message, statusCode) {
    this.finish();
    this.setState('failed');
    this.setFavicon('failed');
    this.dom.main.dataset.phase = 'failed';
    this.dom.progress.classList.add('failed');
    const headline = FAILURE_HEADLINES[this.step] || 'Launch failed';
    this.dom.failureHeading.textContent = headline;
    this.setPhaseText(`${headline}.`);
    this.dom.failureMessage.textContent = message;
    if (statusCode) this.dom.failureMessage.dataset.status = String(statusCode);
    this.dom.failure.hidden = false;
    // The log is the evidence: show it, whatever the user chose before.
    this.showLog(true);
    document.title = `Failed · ${this.title}`;
  }

  finish() {
    this.finished = true;
    if (this.es) {
      this.es.close();
      this.es = null;
    }
  }

  onError(es) {
    if (this.finished) return;
    if (es.readyState === EventSource.CONNECTING) {
      // Dropped connection: the browser reconnects by itself.
      this.silentRetries += 1;
      if (this.silentRetries > MAX_SILENT_RETRIES) {
        this.fail('Lost the connection to the build service. Reload the page to try again.');
        return;
      }
      this.setState('reconnecting');
      this.setPhaseText('Connection lost. Reconnecting…');
      return;
    }
    // CLOSED: the server answered with an error, or not with a stream.
    es.close();
    this.es = null;
    this.recover();
  }

  async recover() {
    if (this.finished) return;
    this.recoveries += 1;
    if (this.recoveries > MAX_RECOVERIES) {
      this.fail('Could not reach the build service. Reload the page to try again.');
      return;
    }
    this.setState('reconnecting');
    const { status, message } = await this.probe();
    if (this.finished) return;
    if (status === 200) {
      this.connect();
    } else if ((status === 403 || status === 429) && !this.tokenRefreshed) {
      // Most likely the page's build token expired during a long build (an
      // invalid token is refused, or counted by the rate limit): get a
      // fresh one and try once more.
      this.tokenRefreshed = true;
      if (await this.refreshToken()) this.connect();
      else this.fail(message || `The build service refused the request (HTTP ${status}).`, status);
    } else if (status >= 400 && status < 500) {
      this.fail(message || `The build service refused the request (HTTP ${status}).`, status);
    } else {
      const delay = Math.min(30, 2 ** this.recoveries);
      this.setPhaseText(`Could not reach the build service. Retrying in ${delay} s…`);
      setTimeout(() => this.recover(), delay * 1000);
    }
  }

  // One plain request to the stream URL, to read the status and message
  // EventSource hides. A stream that does start is dropped at once (the
  // build it attached to goes on; EventSource then reattaches).
  async probe() {
    const controller = new AbortController();
    try {
      const response = await fetch(this.streamUrl(), {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: controller.signal,
      });
      if (response.ok) {
        controller.abort();
        return { status: 200, message: '' };
      }
      let message = '';
      try {
        const body = await response.json();
        message = typeof body.message === 'string' ? body.message : '';
      } catch {
        message = '';
      }
      return { status: response.status, message };
    } catch {
      return { status: 0, message: '' };
    }
  }

  async refreshToken() {
    try {
      const response = await fetch(window.location.href, {
        headers: { Accept: 'application/json' },
        cache: 'no-store',
      });
      if (!response.ok) return false;
      const fresh = await response.json();
      if (typeof fresh.buildToken !== 'string') return false;
      this.token = fresh.buildToken;
      return true;
    } catch {
      return false;
    }
  }

  setState(state) {
    this.dom.main.dataset.state = state;
  }

  setPhaseText(text) {
    this.dom.phase.textContent = text;
  }

  setProgress(value, step) {
    const rounded = Math.round(Math.max(0, Math.min(100, value)));
    this.dom.bar.style.width = `${rounded}%`;
    this.dom.progress.setAttribute('aria-valuenow', String(rounded));
    this.step = step;
    const current = STEPS.indexOf(step);
    for (const item of this.dom.steps.querySelectorAll('li[data-step]')) {
      const index = STEPS.indexOf(item.dataset.step);
      item.classList.toggle('done', index < current || (step === 'ready' && index === current));
      item.classList.toggle('current', index === current && step !== 'ready');
      if (index === current) item.setAttribute('aria-current', 'step');
      else item.removeAttribute('aria-current');
    }
  }

  setFavicon(state) {
    const href = this.config.favicons && this.config.favicons[state];
    if (href && this.dom.favicon) this.dom.favicon.href = href;
  }

  showLog(show) {
    this.dom.logEl.hidden = !show;
    this.dom.toggle.setAttribute('aria-expanded', String(show));
    this.dom.toggle.textContent = show ? 'Hide log' : 'Show log';
    if (show) this.dom.logEl.scrollTop = this.dom.logEl.scrollHeight;
  }
}

const config = JSON.parse(document.getElementById('page-config').textContent);
const page = new LoadingPage(config);
page.start();
