// A real OpenID Connect provider for the sign-in tests: the npm package
// oidc-provider (OpenID-certified), installed by scripts/setup.sh under
// var/node, configured here with one confidential client, test users with a
// password each and a "groups" claim.
//
//   node provider.mjs '{"host": "127.0.0.1", "port": 0, "clients": [...], "users": [...]}'
//
// clients: [{client_id, client_secret, redirect_uris}]
// users:   [{username, password, groups, email}]
// Prints "READY <issuer>" once it listens. The login page is this script's
// own (the package leaves the interaction pages to the application): a form
// checked against the users above. Consent is implied for the configured
// clients (first-party applications of the organisation), the way an
// operator configures Keycloak for its own hub.

import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..', '..');
const params = JSON.parse(process.argv[2] || '{}');
const modulePath = params.module
  || path.join(ROOT, 'var', 'node', 'node_modules', 'oidc-provider', 'lib', 'index.js');
const { default: Provider } = await import(pathToFileURL(modulePath).href);

const host = params.host || '127.0.0.1';
const users = new Map((params.users || []).map((u) => [u.username, u]));

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function samePassword(given, expected) {
  const a = crypto.createHash('sha256').update(String(given)).digest();
  const b = crypto.createHash('sha256').update(String(expected)).digest();
  return crypto.timingSafeEqual(a, b);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function loginPage(uid, message) {
  return `<!doctype html><html><head><title>Sign in - test provider</title></head><body>
<h1>Sign in to the test identity provider</h1>
${message ? `<p id="error">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>User name <input name="username" id="username" autofocus></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="submit">Sign in</button>
</form></body></html>`;
}

// Signing keys made at start: nothing is kept between runs. The key is made
// as PEM and read back before its JWK export: exporting the generated key
// object itself can deadlock Node 20 (a garbage collection during the export
// runs the finished key-generation job's destructor, which waits for the
// mutex the export holds; seen once in CI, the provider hung before
// listening).
const { privateKey: pem } = crypto.generateKeyPairSync('rsa', {
  modulusLength: 2048,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});
const privateKey = crypto.createPrivateKey(pem);
const jwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'test' };

const configuration = {
  clients: (params.clients || []).map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_post',
  })),
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const user = users.get(sub);
    if (!user) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: user.username,
          name: user.name || user.username,
          email: user.email || `${user.username}@example.org`,
          email_verified: true,
          groups: user.groups || [],
        };
      },
    };
  },
  // The configured clients are the organisation's own: signing in grants
  // them what they ask for, without a consent page.
  async loadExistingGrant(ctx) {
    const { Grant } = ctx.oidc.provider;
    const known = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (known) {
      const grant = await Grant.find(known);
      if (grant) return grant;
    }
    if (!ctx.oidc.session.accountId) return undefined;
    const grant = new Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
    await grant.save();
    return grant;
  },
  ttl: { Session: 3600, Interaction: 600, Grant: 3600, AccessToken: 600, AuthorizationCode: 60, IdToken: 600 },
};

// The issuer names the port, so the port is chosen before the provider is made.
const net = await import('node:net');
const port = params.port || await new Promise((resolve, reject) => {
  const probe = net.createServer();
  probe.once('error', reject);
  probe.listen(0, host, () => {
    const { port: p } = probe.address();
    probe.close(() => resolve(p));
  });
});
const issuer = `http://${host}:${port}`;
const provider = new Provider(issuer, configuration);

provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!match) {
    await next();
    return;
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== match[1]) ctx.throw(400, 'interaction mismatch');
  ctx.set('Cache-Control', 'no-store');
  if (ctx.method === 'GET' && !match[2]) {
    ctx.type = 'html';
    ctx.body = loginPage(details.uid, '');
    return;
  }
  if (ctx.method === 'POST' && match[2]) {
    const form = await readForm(ctx.req);
    const user = users.get(form.get('username') || '');
    if (!user || !samePassword(form.get('password') || '', user.password)) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginPage(details.uid, 'Wrong user name or password.');
      return;
    }
    const target = await provider.interactionResult(
      ctx.req,
      ctx.res,
      { login: { accountId: user.username } },
      { mergeWithLastSubmission: false },
    );
    ctx.status = 303;
    ctx.redirect(target);
    return;
  }
  ctx.throw(405);
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(port, host, () => {
  console.log(`READY ${issuer}`);
});
