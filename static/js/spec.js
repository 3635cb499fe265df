// The home page's logic as pure functions: turn the form's fields into a
// Binder spec, a launch URL and badge snippets, and say what is wrong with
// them. No DOM here: tests import this module in Node too.

import { UnsafePathError, cleanPath, cleanUrlpath } from './redirect.js';

const DOI_PROVIDERS = new Set(['zenodo', 'figshare', 'hydroshare', 'dataverse', 'doi']);
// Providers whose spec is the identifier as typed (DOIs keep their '/',
// SWHIDs their ':'); the others take one url-encoded repository part.
const RAW_SPEC_PROVIDERS = new Set([...DOI_PROVIDERS, 'swh']);

// Web addresses people paste for the hosted providers, reduced to the
// spec's repository part.
const HOST_PREFIXES = {
  gh: /^(?:https?:\/\/)?(?:www\.)?github\.com\//i,
  gist: /^(?:https?:\/\/)?gist\.github\.com\//i,
  gl: /^(?:https?:\/\/)?(?:www\.)?gitlab\.com\//i,
};

// What git refuses in a ref name (git check-ref-format), as the server's
// git provider checks it.
const BAD_REF = /(\.\.|@\{|[\s~^:?*[\\]|^\/|\/$|\.lock$|\/\/|^\.)/;
const CONTROL = /[\u0000-\u001f\u007f]/;

/** A ref with each '/'-separated part percent-encoded ('/' itself stays). */
export function encodeRef(ref) {
  return ref.split('/').map(encodeURIComponent).join('/');
}

/** The repository field as the provider's spec wants it (URLs of the host trimmed). */
export function normaliseRepo(providerId, repo) {
  let value = repo.trim();
  const prefix = HOST_PREFIXES[providerId];
  if (prefix) {
    value = value.replace(prefix, '').replace(/\/+$/, '');
    if (providerId !== 'gist') value = value.replace(/\.git$/, '');
  } else if (DOI_PROVIDERS.has(providerId)) {
    value = value.replace(/^(?:https?:\/\/(?:dx\.)?doi\.org\/|doi:)/i, '');
  }
  return value;
}

/** Message for an invalid repository field, '' when it is fine. */
export function repoError(provider, repo) {
  const value = repo.trim();
  if (!value) return `Enter the ${(provider.repo && provider.repo.label) || 'repository'}.`;
  if (CONTROL.test(value)) return 'The repository contains control characters.';
  let pattern = null;
  try {
    pattern = provider.regex ? new RegExp(provider.regex) : null;
  } catch {
    pattern = null; // a pattern this browser cannot compile: the server still checks
  }
  const candidate = normaliseRepo(provider.id, value);
  if (pattern && !pattern.test(value) && !pattern.test(candidate)) {
    const example = provider.repo && provider.repo.placeholder;
    return `This is not a valid ${provider.displayName || provider.id} repository${example ? `; for example ${example}` : ''}.`;
  }
  return '';
}

/** Message for an invalid ref, '' when it is fine (empty means the default). */
export function refError(ref) {
  const value = ref.trim();
  if (!value) return '';
  if (CONTROL.test(value)) return 'The ref contains control characters.';
  if (value.startsWith('-')) return "A ref cannot start with '-'.";
  if (value.length > 255 || BAD_REF.test(value)) return 'This is not a valid branch, tag or commit name.';
  return '';
}

/** Message for an unsafe path to open, '' when it is fine. */
export function pathError(path, pathType) {
  const value = path.trim();
  if (!value) return '';
  try {
    if (pathType === 'url') cleanUrlpath(value);
    else cleanPath(value);
  } catch (err) {
    if (err instanceof UnsafePathError) {
      return 'The path must stay inside the server: no full URLs, no "..", no control characters.';
    }
    throw err;
  }
  return '';
}

/** The spec part of /v2/{provider}/{spec}. */
export function makeSpec(provider, repo, ref) {
  const id = provider.id;
  const value = normaliseRepo(id, repo);
  const usesRef = !provider.ref || provider.ref.enabled !== false;
  const theRef = (ref.trim() || (provider.ref && provider.ref.default) || 'HEAD');
  if (!usesRef) {
    return RAW_SPEC_PROVIDERS.has(id) ? value : encodeURIComponent(value);
  }
  if (id === 'gh' || id === 'gist') return `${value}/${encodeRef(theRef)}`;
  return `${encodeURIComponent(value)}/${encodeRef(theRef)}`;
}

// The path parameter keeps '/' readable: links stay legible in READMEs.
function encodeParam(value) {
  return encodeURIComponent(value).replace(/%2F/g, '/');
}

/**
 * The shareable launch URL.
 * @param {string} launchHost this service's public URL, ending in '/'
 * @param {string} pathType 'file' (opens in JupyterLab: labpath) or 'url' (urlpath)
 */
export function launchUrl(launchHost, providerId, spec, path = '', pathType = 'file') {
  let url = `${launchHost}v2/${providerId}/${spec}`;
  const value = path.trim();
  if (value) url += `?${pathType === 'url' ? 'urlpath' : 'labpath'}=${encodeParam(value)}`;
  return url;
}

export function badgeImageUrl(badgeBaseUrl) {
  return `${badgeBaseUrl}badge_logo.svg`;
}

export function badgeMarkdown(badgeUrl, url) {
  return `[![Binder](${badgeUrl})](${url})`;
}

export function badgeRst(badgeUrl, url) {
  return `.. image:: ${badgeUrl}\n   :target: ${url}`;
}
