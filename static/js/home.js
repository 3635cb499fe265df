// The home page: provider, repository, ref and path in; launch URL and badge
// snippets out, updated as you type; the launch button opens the loading page.

import { setUpCopyButtons } from './copy.js';
import {
  badgeImageUrl,
  badgeMarkdown,
  badgeRst,
  launchUrl,
  makeSpec,
  pathError,
  refError,
  repoError,
} from './spec.js';

const config = JSON.parse(document.getElementById('page-config').textContent);
const $ = (id) => document.getElementById(id);

const form = $('launch-form');
const fields = {
  provider: $('provider'),
  repository: $('repository'),
  ref: $('ref'),
  path: $('path'),
  pathType: $('path-type'),
};
const outputs = {
  launchUrl: $('launch-url'),
  markdown: $('badge-markdown'),
  rst: $('badge-rst'),
};
let providers = config.providers || [];
// Fields whose errors are shown: a field is judged once it has been typed
// in or left, not while the user has not reached it yet.
const touched = new Set();

function currentProvider() {
  return providers.find((p) => p.id === fields.provider.value) || providers[0];
}

function setError(name, message) {
  const input = fields[name];
  const box = $(`${name}-error`);
  const show = Boolean(message) && touched.has(name);
  input.setAttribute('aria-invalid', show ? 'true' : 'false');
  box.textContent = show ? message : '';
  box.hidden = !show;
}

function applyProvider() {
  const provider = currentProvider();
  if (!provider) return;
  $('repository-label').textContent = (provider.repo && provider.repo.label) || 'Repository';
  fields.repository.placeholder = (provider.repo && provider.repo.placeholder) || '';
  const ref = provider.ref || { enabled: true, default: 'HEAD', label: 'Git ref' };
  $('ref-field').hidden = ref.enabled === false;
  $('ref-label').textContent = ref.label || 'Git ref (branch, tag, or commit)';
  fields.ref.placeholder = ref.default || 'HEAD';
  $('ref-default').textContent = ref.default || 'HEAD';
}

function errors() {
  const provider = currentProvider();
  const refUsed = provider && !(provider.ref && provider.ref.enabled === false);
  return {
    repository: provider ? repoError(provider, fields.repository.value) : 'No repository providers are enabled.',
    ref: refUsed ? refError(fields.ref.value) : '',
    path: pathError(fields.path.value, fields.pathType.value),
  };
}

function update() {
  const found = errors();
  for (const [name, message] of Object.entries(found)) setError(name, message);
  const valid = Object.values(found).every((m) => !m);
  const provider = currentProvider();
  let url = '';
  if (valid && provider) {
    const spec = makeSpec(provider, fields.repository.value, fields.ref.value);
    url = launchUrl(config.launchHost, provider.id, spec, fields.path.value, fields.pathType.value);
  }
  const badge = badgeImageUrl(config.badgeBaseUrl);
  outputs.launchUrl.value = url;
  outputs.markdown.value = url ? badgeMarkdown(badge, url) : '';
  outputs.rst.value = url ? badgeRst(badge, url) : '';
  for (const button of document.querySelectorAll('button[data-copy]')) button.disabled = !url;
  form.dataset.valid = String(valid);
  return { valid, url, found };
}

function onSubmit(event) {
  event.preventDefault();
  for (const name of ['repository', 'ref', 'path']) touched.add(name);
  const { valid, found } = update();
  if (!valid) {
    const first = ['repository', 'ref', 'path'].find((name) => found[name]);
    if (first) fields[first].focus();
    return;
  }
  const provider = currentProvider();
  const spec = makeSpec(provider, fields.repository.value, fields.ref.value);
  // The page's own origin (base_url), not launch_host: launching never
  // leaves the site the user is on.
  let url = launchUrl(config.baseUrl, provider.id, spec, fields.path.value, fields.pathType.value);
  // The resource profile picked (signed-in Binder): the hub's spawner checks it.
  const profile = $('profile');
  if (profile && profile.value) url += `${url.includes('?') ? '&' : '?'}profile=${encodeURIComponent(profile.value)}`;
  window.location.assign(url);
}

async function refreshProviders() {
  // The server rendered the same list; the API is the source of truth for
  // the validation rules if the page was served from a cache.
  try {
    const response = await fetch(`${config.baseUrl}api/repoproviders`, { headers: { Accept: 'application/json' } });
    if (!response.ok) return;
    const list = await response.json();
    if (!Array.isArray(list) || !list.length) return;
    const selected = fields.provider.value;
    providers = list;
    fields.provider.replaceChildren(...list.map((p) => {
      const option = document.createElement('option');
      option.value = p.id;
      option.textContent = p.displayName || p.id;
      return option;
    }));
    if (list.some((p) => p.id === selected)) fields.provider.value = selected;
    applyProvider();
    update();
  } catch {
    // Offline or blocked: the rendered list stays in use.
  }
}

for (const name of ['repository', 'ref', 'path']) {
  fields[name].addEventListener('input', () => {
    if (fields[name].value.trim()) touched.add(name);
    update();
  });
  fields[name].addEventListener('blur', () => {
    if (name !== 'repository' || fields[name].value.trim()) touched.add(name);
    update();
  });
}
fields.provider.addEventListener('change', () => {
  applyProvider();
  update();
});
fields.pathType.addEventListener('change', update);
form.addEventListener('submit', onSubmit);
setUpCopyButtons();
applyProvider();
update();
refreshProviders().finally(() => {
  document.documentElement.dataset.ready = 'true';
});
