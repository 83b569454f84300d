// The console's shell: login, the API client, the navigation and the hash router.
import {h, clear, problemBlock} from './dom.js';

const TOKEN_KEY = 'aob.token';

export const session = {token: null, me: null};

/** Whether the logged-in credential holds a permission (read, operate, approve, admin). */
export function can(permission) {
  return Boolean(session.me && session.me.permissions.includes(permission));
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? `${problem.title}: ${problem.detail}` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** A JSON request to the API with the session's token; throws ApiError on 4xx/5xx. */
export async function api(path, {method = 'GET', body, token} = {}) {
  const headers = {Accept: 'application/json'};
  const credential = token || session.token;
  if (credential) headers.Authorization = `Bearer ${credential}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get('content-type') || '';
  const data = type.includes('json') ? await response.json() : await response.text();
  if (response.status === 401 && !token) {
    logout('Your session ended: log in again.');
  }
  if (!response.ok) throw new ApiError(response.status, typeof data === 'object' ? data : null);
  return data;
}

/** The URL of a run's SSE stream (EventSource cannot send headers: the token rides along). */
export function streamUrl(runId, params = {}) {
  const query = new URLSearchParams({...params, access_token: session.token});
  return `/api/v1/runs/${encodeURIComponent(runId)}/stream?${query}`;
}

/** The URL of the tenant's runs feed (GET /api/v1/streams/runs). */
export function feedUrl(params = {}) {
  const query = new URLSearchParams({...params, access_token: session.token});
  return `/api/v1/streams/runs?${query}`;
}

export function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.me = null;
  stopPage();
  renderLogin(message);
}

// --- pages -----------------------------------------------------------------------------

const PAGES = [
  {pattern: /^#\/runs\/([^/]+)$/, load: () => import('./run.js'), nav: 'runs'},
  {pattern: /^#\/compare\/([^/]+)\/([^/]+)$/, load: () => import('./compare.js'), nav: 'runs'},
  {pattern: /^#\/runs(?:\?.*)?$/, load: () => import('./runs.js'), nav: 'runs'},
  {pattern: /^#\/approvals$/, load: () => import('./approvals.js'), nav: 'approvals'},
  {pattern: /^#\/workflows(?:\/([^/]+))?$/, load: () => import('./workflows.js'), nav: 'workflows'},
  {pattern: /^#\/health$/, load: () => import('./health.js'), nav: 'health'},
];

let stopCurrent = null;
let routing = 0;

function stopPage() {
  if (stopCurrent) {
    try { stopCurrent(); } catch (error) { console.error(error); }
  }
  stopCurrent = null;
}

async function route() {
  if (!session.me) return;
  const hash = location.hash || '#/runs';
  const page = PAGES.find((p) => p.pattern.test(hash));
  if (!page) { location.hash = '#/runs'; return; }
  const params = hash.match(page.pattern).slice(1).map((p) => p && decodeURIComponent(p));
  const mine = ++routing;
  stopPage();
  renderNav(page.nav);
  const main = clear(document.getElementById('main'));
  const module = await page.load();
  if (mine !== routing) return;
  try {
    stopCurrent = (await module.render(main, ...params)) || null;
  } catch (error) {
    main.append(problemBlock(error));
  }
}

function renderNav(active) {
  const top = clear(document.getElementById('top'));
  const link = (name, label) => h('a', {
    href: `#/${name}`, class: active === name ? 'active' : null,
    'aria-current': active === name ? 'page' : null,
  }, label);
  const me = session.me;
  top.append(h('nav', {'aria-label': 'Main'},
    h('span', {class: 'brand'}, 'aob'),
    link('runs', 'Runs'), link('approvals', 'Approvals'), link('workflows', 'Workflows'),
    link('health', 'Health'),
    h('a', {href: '/docs', target: '_blank', rel: 'noopener'}, 'API docs'),
    h('span', {class: 'who', id: 'who'},
      `${me.name} · tenant ${me.tenant} · ${me.roles.join(', ')}`),
    h('button', {type: 'button', id: 'logout', onclick: () => logout()}, 'Log out')));
}

function renderLogin(message) {
  clear(document.getElementById('top'));
  const main = clear(document.getElementById('main'));
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true,
    placeholder: 'aob_…', 'aria-describedby': 'token-help',
  });
  const status = h('div', {id: 'login-status', role: 'status'});
  const form = h('form', {class: 'login card', onsubmit: async (event) => {
    event.preventDefault();
    clear(status);
    try {
      await login(input.value.trim());
    } catch (error) {
      status.append(problemBlock(error));
    }
  }},
  h('h1', {}, 'aob console'),
  message ? h('p', {class: 'notice', role: 'alert'}, message) : null,
  h('label', {for: 'token'}, 'API token'),
  input,
  h('p', {id: 'token-help', class: 'muted'},
    'An API token (POST /api/v1/admin/tokens, or python -m aob.platform.auth on the server), or a JWT where the server accepts them. ',
    'On a local dev server, open the console link `aob server dev` printed: it logs you ',
    'in as the local admin. The token is kept in this tab only (sessionStorage).'),
  h('button', {type: 'submit', id: 'login', class: 'primary'}, 'Log in'),
  status);
  main.append(form);
  input.focus();
}

async function login(token) {
  const me = await api('/api/v1/me', {token});
  session.token = token;
  session.me = me;
  sessionStorage.setItem(TOKEN_KEY, token);
  if (!location.hash || location.hash.startsWith('#token=')) {
    history.replaceState(null, '', `${location.pathname}#/runs`);
  }
  await route();
}

async function start() {
  // `aob server dev` prints the console's URL with the local admin's token in the
  // fragment (never sent to a server): take it, and drop it from the address bar.
  const fragment = location.hash.match(/^#token=([^&]+)$/);
  if (fragment) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(fragment[1]));
    history.replaceState(null, '', `${location.pathname}#/runs`);
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) { renderLogin(); return; }
  try {
    await login(saved);
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    renderLogin(error instanceof ApiError ? error.message : String(error));
  }
}

window.addEventListener('hashchange', route);
start();
