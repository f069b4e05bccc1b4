// The local OIDC identity provider of the cvmfs-svc stack: panva's oidc-provider (OpenID
// Certified) configured from one JSON file written by stack/idp.py, plus our login page.
//
// Usage: node server.mjs <config.json>. Everything it keeps lives beside the config file: signing
// and cookie keys, and (state/) sessions, grants and refresh tokens, so a restart loses nothing.
// oidc-provider 9 prefers Node 22 and warns on Node 20 (Debian 12's machines here have 20); every
// test of tests/test_idp.py passes on 20.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import Provider, { errors } from 'oidc-provider';

import { fileAdapterFor } from './file_adapter.mjs';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node server.mjs <config.json>');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const stateDir = path.dirname(path.resolve(configPath));

function log(event, fields = {}) {
  const pairs = Object.entries(fields).map(([k, v]) => `${k}=${v}`);
  console.log([`event=${event}`, ...pairs].join(' '));
}

// Secrets made once and kept (0600), so a restart keeps tokens and cookies valid.
function persisted(name, make) {
  const file = path.join(stateDir, name);
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const value = make();
  fs.writeFileSync(file, JSON.stringify(value), { mode: 0o600 });
  return value;
}

const jwks = persisted('jwks.json', () => {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: `rsa-${crypto.randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' }] };
});
const cookieKeys = persisted('cookie-keys.json', () => [crypto.randomBytes(32).toString('base64url')]);

const users = new Map(config.users.map((user) => [user.username, user]));
// Accounts are keyed by subject (a stable UUID, like IAM's `sub`); the login form by username.
const accounts = new Map(config.users.map((user) => [user.subject, user]));

function passwordMatches(user, password) {
  // scrypt with the parameters hashlib.scrypt used in stack/idp.py (n=2**14, r=8, p=1).
  const salt = Buffer.from(user.password_salt, 'hex');
  const expected = Buffer.from(user.password_scrypt, 'hex');
  const actual = crypto.scryptSync(password, salt, expected.length, { N: 16384, r: 8, p: 1 });
  return crypto.timingSafeEqual(actual, expected);
}

// Claims as INDIGO IAM sends them: `groups` is a list of group paths ("atlas", "atlas/managers").
function accountClaims(user) {
  return {
    sub: user.subject,
    preferred_username: user.username,
    name: user.name,
    email: user.email,
    email_verified: true,
    groups: user.groups,
  };
}

const resource = config.resource_indicator;
// The login form posts here, and the browser then follows redirects to the clients: Chromium
// applies form-action to every hop, so the clients' origins are allowed too.
const clientOrigins = [...new Set(config.clients.flatMap((client) => client.redirect_uris.map((uri) => new URL(uri).origin)))];
const loginPagePolicy = [
  "default-src 'none'",
  "style-src 'unsafe-inline'",
  `form-action 'self' ${clientOrigins.join(' ')}`,
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');
// The device pages (/device, the user code of `cvmfs-svc login`) post only to this provider.
// `script-src` with no source allows no script; oidc-provider adds the hash of the one script
// it writes (the page that submits a code from verification_uri_complete), and nothing else.
const devicePagePolicy = [
  "default-src 'none'",
  'script-src',
  "style-src 'unsafe-inline'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');
const provider = new Provider(config.issuer, {
  adapter: fileAdapterFor(path.join(stateDir, 'state')),
  clients: config.clients,
  jwks,
  cookies: { keys: cookieKeys },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name', 'groups'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'profile', 'email', 'offline_access'],
  // ID tokens carry the profile claims even when an access token is issued (as IAM's do).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  // As INDIGO IAM does for a client allowed the refresh_token grant: the code grant also issues
  // a refresh token (without offline_access it stays bound to the login session, so signing
  // out here ends it). The dashboard renews its hour-long access tokens with it.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: false },
    // The device authorization grant (RFC 8628) of `cvmfs-svc login`, as INDIGO IAM offers it:
    // the user opens /device in any browser, enters (or confirms) the code, signs in on our
    // login page. Our own pages: the packaged ones load web fonts from the internet.
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form, _out, err) => {
        ctx.body = page('Sign in a device', `${deviceInputMessage(err)}${form}
<button type="submit" form="op.deviceInputForm">Continue</button>`);
      },
      userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
        const name = client.clientName ?? client.clientId;
        ctx.body = page('Confirm the code', `<p>${escape(name)} asks to use the CVMFS distribution
service as you. It shows this code:</p><p><code id="user-code">${escape(userCode)}</code></p>
<p>Deny if it shows another code, or if you did not start it.</p>${form}
<button autofocus type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Deny</button>`);
      },
      successSource: async (ctx) => {
        const name = ctx.oidc.client.clientName ?? ctx.oidc.client.clientId;
        ctx.body = page('Signed in', `<p>${escape(name)} is signed in. You can close this page.</p>`);
      },
    },
    rpInitiatedLogout: {
      enabled: true,
      // Our own pages: the packaged ones load web fonts from the internet.
      logoutSource: async (ctx, form) => {
        ctx.body = page('Sign out', `${form}<p>Sign out of the local identity provider?</p>
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = page('Signed out', '<p>You are signed out of the local identity provider.</p>');
      },
    },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Every authorization is for the service's API: its access tokens are JWTs with the
      // service's audience, which the service verifies against this provider's JWKS.
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        if (indicator !== resource) throw new errors.InvalidTarget();
        return {
          scope: config.resource_scope,
          audience: config.audience,
          accessTokenTTL: config.access_token_ttl_s,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const user = accounts.get(token.accountId);
    if (!user) return undefined;
    return { preferred_username: user.username, groups: user.groups };
  },
  findAccount: async (_ctx, id) => {
    const user = accounts.get(id);
    if (!user) return undefined;
    return { accountId: id, claims: async () => accountClaims(user) };
  },
  ttl: {
    AccessToken: config.access_token_ttl_s,
    IdToken: config.access_token_ttl_s,
    Session: 8 * 3600,
    Interaction: 3600,
    Grant: 8 * 3600,
    AuthorizationCode: 60,
    DeviceCode: config.device_code_ttl_s,
    RefreshToken: 8 * 3600,
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Sign-in error', `<p class="error">${escape(out.error)}: ${escape(out.error_description ?? '')}</p>`);
  },
});
provider.proxy = config.behind_proxy;

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:26em;margin:3em auto}label{display:block;margin-top:1em}
input{width:100%;padding:.4em}button{margin-top:1.5em;padding:.5em 2em}.error{color:#a00}
#user-code{font-size:1.6em;letter-spacing:.1em}</style>
</head><body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function deviceInputMessage(err) {
  if (!err) return '<p>Enter the code that <code>cvmfs-svc login</code> shows.</p>';
  if (err.name === 'AbortedError') return '<p class="error" role="alert">The sign-in was denied.</p>';
  if (err.name === 'ExpiredError') {
    return '<p class="error" role="alert">That code has expired: run <code>cvmfs-svc login</code> again.</p>';
  }
  if (err.name === 'AlreadyUsedError') {
    return '<p class="error" role="alert">That code was already used: run <code>cvmfs-svc login</code> again.</p>';
  }
  if (err.userCode || err.name === 'NoCodeError') {
    return '<p class="error" role="alert">No such code: check it and try again.</p>';
  }
  return '<p class="error" role="alert">The code could not be checked: try again.</p>';
}

function loginForm(uid, clientName, username = '', error = '') {
  return page('Sign in', `
<p>to ${escape(clientName)} (local identity provider of the cvmfs-svc stack)</p>
${error ? `<p class="error" role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
<label for="username">Username</label>
<input id="username" name="username" value="${escape(username)}" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" required>
<button type="submit">Sign in</button>
</form>`);
}

async function readForm(req, limit = 16 * 1024) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new errors.InvalidRequest('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The consent step is skipped for the registered (first-party) clients: everything they ask
// for is granted, as IAM does for clients an administrator registered.
async function grantEverything(details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/device' || ctx.path.startsWith('/device/')) {
    ctx.set('Cache-Control', 'no-store');
    ctx.set('Content-Security-Policy', devicePagePolicy);
    return next();
  }
  const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
  if (!match) return next();
  ctx.set('Cache-Control', 'no-store');
  ctx.set('Content-Security-Policy', loginPagePolicy);
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== match[1]) throw new errors.InvalidRequest('interaction mismatch');
  const client = await provider.Client.find(details.params.client_id);
  const clientName = client?.clientName ?? details.params.client_id;
  if (details.prompt.name === 'consent') {
    const grantId = await grantEverything(details);
    ctx.respond = false;
    return provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (!match[2]) {
    ctx.type = 'html';
    ctx.body = loginForm(details.uid, clientName);
    return undefined;
  }
  if (ctx.method !== 'POST') throw new errors.InvalidRequest('the login form is sent with POST');
  const form = await readForm(ctx.req);
  const username = form.get('username') ?? '';
  const user = users.get(username);
  if (!user || !passwordMatches(user, form.get('password') ?? '')) {
    log('login_refused', { username: JSON.stringify(username.slice(0, 64)) });
    ctx.status = 401;
    ctx.type = 'html';
    ctx.body = loginForm(details.uid, clientName, username, 'Wrong username or password.');
    return undefined;
  }
  log('login', { username });
  ctx.respond = false;
  return provider.interactionFinished(
    ctx.req,
    ctx.res,
    { login: { accountId: user.subject } },
    { mergeWithLastSubmission: false },
  );
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  log('listening', { issuer: config.issuer, port: config.port });
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
