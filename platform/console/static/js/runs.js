// Runs: newest first, filtered by status, workflow and time (on the server), a page at a
// time (the API's cursor), kept live by the tenant's runs feed (GET /api/v1/streams/runs).
import {api, feedUrl} from './app.js';
import {h, clear, fill, badge, when, duration, problemBlock} from './dom.js';

const PAGE_SIZE = 50;
const RELOAD_DEBOUNCE_MS = 250;  // a burst of new runs reloads the first page once
const RECONNECT_MS = 1000;
const TICK_MS = 1000;  // how often an unfinished run's Duration moves on
const FINISHED = new Set(['completed', 'failed', 'cancelled']);
const STATUSES = ['running', 'waiting', 'completed', 'failed', 'cancelled'];
const SINCE = [['', 'any time'], ['3600000', 'last hour'], ['86400000', 'last 24 hours'],
  ['604800000', 'last 7 days']];

// Kept across visits to the page, so that going back to the list keeps its filters.
const filters = {status: '', workflow: '', since: '', from: '', to: ''};

/** A datetime-local value (local time) in epoch ms; NaN when empty or invalid. */
function instant(value) {
  return value ? new Date(value).getTime() : NaN;
}

export async function render(main) {
  // Two runs picked (the "Compare" column) open side by side in compare.js.
  const picked = [];
  const compareButton = h('button', {type: 'button', id: 'compare-picked', disabled: true,
    onclick: () => { location.hash = `#/compare/${picked.map(encodeURIComponent).join('/')}`; }},
  'Compare the two picked runs');
  const pick = (runId, box) => {
    const at = picked.indexOf(runId);
    if (box.checked && at < 0) picked.push(runId);
    if (!box.checked && at >= 0) picked.splice(at, 1);
    while (picked.length > 2) {  // a third pick drops the oldest
      const dropped = body.querySelector(`input[data-run-id="${CSS.escape(picked.shift())}"]`);
      if (dropped) dropped.checked = false;
    }
    compareButton.disabled = picked.length !== 2;
  };
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
  // A custom window, in local time: <input type=datetime-local> values.
  const fromInput = h('input', {id: 'f-from', type: 'datetime-local', value: filters.from,
    onchange: () => { filters.from = fromInput.value; restart(); }});
  const toInput = h('input', {id: 'f-to', type: 'datetime-local', value: filters.to,
    onchange: () => { filters.to = toInput.value; restart(); }});

  main.append(
    h('h1', {}, 'Runs'),
    h('form', {class: 'filters', onsubmit: (e) => { e.preventDefault(); restart(); }},
      h('label', {}, 'Status ', statusSelect),
      h('label', {}, 'Workflow ', workflowInput),
      h('label', {}, 'Submitted ', sinceSelect),
      h('label', {}, 'from ', fromInput),
      h('label', {}, 'to ', toInput)),
    h('table', {class: 'runs'},
      h('thead', {}, h('tr', {},
        ['Run', 'Workflow', 'Status', 'Submitted', 'By', 'Duration', 'Compare'].map((c) => h('th', {scope: 'col'}, c)))),
      body),
    message, pager, compareButton);

  function query(cursor) {
    const params = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (filters.status) params.set('status', filters.status);
    if (filters.workflow) params.set('workflow_id', filters.workflow);
    const {since, until} = window_();
    if (since !== null) params.set('since', String(since));
    if (until !== null) params.set('until', String(until));
    if (cursor) params.set('cursor', cursor);
    return `/api/v1/runs?${params}`;
  }

  /** The time window in epoch ms (null: open); the later start of the preset and "from". */
  function window_() {
    const starts = [filters.since ? Date.now() - Number(filters.since) : NaN, instant(filters.from)]
      .filter(Number.isFinite);
    const until = instant(filters.to);
    return {since: starts.length ? Math.max(...starts) : null, until: Number.isFinite(until) ? until : null};
  }

  let shown = [];
  async function load() {
    const page = await api(query(cursors[cursors.length - 1]));
    next = page.next_cursor;
    shown = page.items;
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
        h('td', {}, duration(run.submitted_at, run.finished_at)),
        h('td', {}, h('input', {type: 'checkbox', class: 'pick', dataset: {runId: run.run_id},
          checked: picked.includes(run.run_id), 'aria-label': `Pick ${run.run_id} to compare`,
          onchange: (e) => pick(run.run_id, e.target)}))));
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

  // --- live: the runs feed -----------------------------------------------------------
  // Subscribe first, then load: `ready` with resync (always, on a new stream) loads the
  // page, and every change after it arrives on the feed. A change of a run on the page
  // updates its row (never with an older row than it shows); a run not on it reloads the
  // first page if it belongs there.
  let source = null;
  let retryTimer = null;
  let reloadTimer = null;
  let stopped = false;
  const live = h('span', {class: 'muted', id: 'runs-live', 'aria-live': 'polite'});
  message.after(live);

  function follow() {
    if (stopped) return;
    source = new EventSource(feedUrl());
    source.addEventListener('ready', (m) => {
      live.textContent = 'live';
      if (JSON.parse(m.data).resync) refresh();
    });
    source.addEventListener('run', (m) => changed(JSON.parse(m.data)));
    source.onerror = () => {
      live.textContent = 'reconnecting…';
      // The browser reconnects by itself (with Last-Event-ID) unless refused.
      if (source.readyState === EventSource.CLOSED && !stopped) {
        retryTimer = setTimeout(follow, RECONNECT_MS);
      }
    };
  }

  function changed(row) {
    const i = shown.findIndex((r) => r.run_id === row.run_id);
    if (i >= 0) {
      if ((row.updated_at || 0) < (shown[i].updated_at || 0)) return;
      shown[i] = {...shown[i], ...row};
      updateInPlace(shown);
    } else if (cursors.length === 1 && belongsOnFirstPage(row)) {
      clearTimeout(reloadTimer);
      reloadTimer = setTimeout(refresh, RELOAD_DEBOUNCE_MS);
    }
  }

  function belongsOnFirstPage(row) {
    const {since, until} = window_();
    if (filters.status && row.status !== filters.status) return false;
    if (filters.workflow && row.workflow_id !== filters.workflow) return false;
    if (since !== null && row.submitted_at < since) return false;
    if (until !== null && row.submitted_at >= until) return false;
    const oldest = shown[shown.length - 1];
    return shown.length < PAGE_SIZE || !oldest || row.submitted_at >= oldest.submitted_at;
  }

  // An unfinished run's duration grows without any event: its cell moves on by itself.
  const ticker = setInterval(() => {
    if (document.hidden || !shown.some((r) => !FINISHED.has(r.status))) return;
    shown.forEach((run, i) => {
      const row = body.rows[i];
      if (row && !FINISHED.has(run.status)) {
        row.cells[5].textContent = duration(run.submitted_at, run.finished_at);
      }
    });
  }, TICK_MS);

  follow();
  await refresh();  // at once, not after the feed's handshake; `ready` loads it again
  return () => {
    stopped = true;
    clearInterval(ticker);
    clearTimeout(retryTimer);
    clearTimeout(reloadTimer);
    if (source) source.close();
  };
}
