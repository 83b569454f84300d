// Runs: newest first, filtered by status, workflow and time, a page at a time (the
// API's cursor), statuses refreshed while the page is shown.
import {api} from './app.js';
import {h, clear, fill, badge, when, duration, problemBlock} from './dom.js';

const PAGE_SIZE = 50;
const REFRESH_MS = 2000;
const STATUSES = ['running', 'waiting', 'completed', 'failed', 'cancelled'];
const SINCE = [['', 'any time'], ['3600000', 'last hour'], ['86400000', 'last 24 hours'],
  ['604800000', 'last 7 days']];

// Kept across visits to the page, so that going back to the list keeps its filters.
const filters = {status: '', workflow: '', since: ''};

export async function render(main) {
  const cursors = [null];  // cursor of each page seen; the last is the current page's
  let next = null;
  const body = h('tbody', {id: 'runs-body'});
  const pager = h('div', {class: 'pager'});
  const message = h('div', {role: 'status', class: 'muted', id: 'runs-status'});

  const statusSelect = h('select', {id: 'f-status', onchange: () => { filters.status = statusSelect.value; restart(); }},
    h('option', {value: ''}, 'any status'), STATUSES.map((s) => h('option', {value: s}, s)));
  statusSelect.value = filters.status;
  const workflowInput = h('input', {id: 'f-workflow', type: 'search', placeholder: 'workflow id',
    value: filters.workflow, onchange: () => { filters.workflow = workflowInput.value.trim(); restart(); }});
  const sinceSelect = h('select', {id: 'f-since', onchange: () => { filters.since = sinceSelect.value; restart(); }},
    SINCE.map(([v, label]) => h('option', {value: v}, label)));
  sinceSelect.value = filters.since;

  main.append(
    h('h1', {}, 'Runs'),
    h('form', {class: 'filters', onsubmit: (e) => { e.preventDefault(); restart(); }},
      h('label', {}, 'Status ', statusSelect),
      h('label', {}, 'Workflow ', workflowInput),
      h('label', {}, 'Submitted ', sinceSelect)),
    h('table', {class: 'runs'},
      h('thead', {}, h('tr', {},
        ['Run', 'Workflow', 'Status', 'Submitted', 'By', 'Duration'].map((c) => h('th', {scope: 'col'}, c)))),
      body),
    message, pager);

  function query(cursor) {
    const params = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (filters.status) params.set('status', filters.status);
    if (filters.workflow) params.set('workflow_id', filters.workflow);
    if (cursor) params.set('cursor', cursor);
    return `/api/v1/runs?${params}`;
  }

  function recentEnough(run) {
    return !filters.since || run.submitted_at >= Date.now() - Number(filters.since);
  }

  async function load() {
    const page = await api(query(cursors[cursors.length - 1]));
    const shown = page.items.filter(recentEnough);
    // Newest first: once a row is older than the time filter, so are all later pages.
    next = shown.length === page.items.length ? page.next_cursor : null;
    draw(shown);
  }

  function draw(runs) {
    const ids = runs.map((r) => r.run_id).join(' ');
    if (ids === body.dataset.ids) {
      updateInPlace(runs);  // keeps the keyboard focus where it is
    } else {
      rebuild(runs);
      body.dataset.ids = ids;
    }
    fill(message, runs.length ? `${runs.length} run(s) on this page` : 'No runs match.');
    fill(pager, 
      h('button', {type: 'button', id: 'newer', disabled: cursors.length === 1,
        onclick: () => { cursors.pop(); refresh(); }}, '← Newer'),
      h('span', {class: 'muted'}, ` page ${cursors.length} `),
      h('button', {type: 'button', id: 'older', disabled: !next,
        onclick: () => { cursors.push(next); refresh(); }}, 'Older →'));
  }

  function updateInPlace(runs) {
    runs.forEach((run, i) => {
      const cells = body.rows[i].cells;
      if (cells[2].textContent !== run.status) clear(cells[2]).append(badge(run.status));
      cells[5].textContent = duration(run.submitted_at, run.finished_at);
    });
  }

  function rebuild(runs) {
    clear(body);
    for (const run of runs) {
      body.append(h('tr', {dataset: {runId: run.run_id}},
        h('td', {}, h('a', {href: `#/runs/${encodeURIComponent(run.run_id)}`}, run.run_id)),
        h('td', {}, run.workflow_id ? `${run.workflow_id}${run.version ? ` v${run.version}` : ''}` : (run.tag || 'inline')),
        h('td', {}, badge(run.status)),
        h('td', {}, when(run.submitted_at)),
        h('td', {}, run.submitted_by || '—'),
        h('td', {}, duration(run.submitted_at, run.finished_at))));
    }
  }

  async function refresh() {
    try {
      await load();
    } catch (error) {
      fill(message, problemBlock(error));
    }
  }

  function restart() {
    cursors.splice(1);
    refresh();
  }

  await refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  return () => clearInterval(timer);
}
