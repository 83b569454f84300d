// One run: its live DAG (from the run's SSE stream, resumed after a disconnect), the
// event timeline beside it, node details, cancel, fork from an event, and patch review.
// The stream asks for the agents' live output too (deltas=true, docs/streaming.md): its
// ids are then cursors, and the live-output panel shows tokens as they arrive.
import {api, can, streamUrl} from './app.js';
import {DagView} from './dag.js';
import {h, clear, fill, badge, when, duration, jsonBlock, problemBlock} from './dom.js';
import {renderPatches} from './patches.js';

// Every event name the stream sends (aob.platform.fanout.SSE_NAMES, then snake_case).
const STREAM_EVENTS = ['workflow_started', 'node_scheduled', 'node_started', 'node_completed',
  'node_failed', 'node_skipped', 'approval_required', 'approval_decided', 'patch_proposed',
  'patch_applied', 'patch_rejected', 'cancel_requested', 'workflow_completed', 'workflow_failed',
  'workflow_cancelled', 'timer_set', 'timer_fired', 'patch_review_requested', 'patch_reviewed',
  'agent_usage_recorded', 'expression_requested', 'expression_evaluated', 'record_dead_lettered',
  'approval_voted', 'approval_escalated', 'signal_received'];
const FINISHED = new Set(['completed', 'failed', 'cancelled']);
const RECONNECT_MS = 1000;
const TICK_MS = 1000;  // how often an unfinished node's Duration moves on
const NODE_DONE = new Set(['completed', 'failed', 'skipped']);

export async function render(main, runId) {
  const path = `/api/v1/runs/${encodeURIComponent(runId)}`;
  let run = await api(path);
  const nodes = new Map();  // node id -> what the timeline told about it
  const marks = {};  // node id -> id of the patch that added it
  const approvalNodes = new Map();  // approval id -> its node id
  const patchCalls = new Map();  // patch id -> the agent's patch_workflow call that proposed it
  let selected = null;
  let lastId = -1;
  let lastCursor = null;  // the stream's last id (a cursor): where a new stream resumes
  let lastDelta = -1;  // the last delta's position shown
  let source = null;
  let retryTimer = null;
  let stopped = false;

  const statusEl = h('span', {id: 'run-status'});
  const actions = h('div', {class: 'actions', id: 'run-actions'});
  const notice = h('div', {role: 'status', id: 'run-notice'});
  const live = h('span', {class: 'muted', id: 'live', 'aria-live': 'polite'});
  const graphEl = h('div', {class: 'graph', id: 'dag'});
  const detail = h('section', {class: 'card detail', id: 'node-detail', 'aria-label': 'Node detail'},
    h('p', {class: 'muted'}, 'Select a node to see its inputs, output, attempts and timings.'));
  const timeline = h('ol', {class: 'timeline', id: 'timeline', 'aria-label': 'Event timeline'});
  const patchesEl = h('section', {id: 'patches', 'aria-label': 'Patches'});
  const liveOutput = h('section', {class: 'card live-output', id: 'live-output',
    'aria-label': 'Live output', hidden: true}, h('h2', {}, 'Live output'));
  const outputs = new Map();  // "node/iteration/attempt" -> its block's parts
  const dag = new DagView(graphEl, {onSelect: (id) => { selected = id; dag.select(id); showNode(); }});

  main.append(
    h('h1', {}, 'Run ', h('code', {}, runId), ' ', statusEl),
    h('p', {class: 'muted'}, workflowLine(run), ' · submitted ', when(run.submitted_at),
      ' by ', run.submitted_by || '—', ' · ', live),
    actions, notice,
    h('div', {class: 'run-grid'},
      h('div', {}, h('h2', {}, 'Graph'), legend(), graphEl, detail),
      h('div', {}, h('h2', {}, 'Timeline'), timeline)),
    liveOutput, patchesEl);
  // LLM tokens and cost per agent node and for the run, from the usage events (budgets.md).
  const usageEl = h('section', {class: 'card', id: 'run-usage', 'aria-label': 'LLM usage', hidden: true});
  main.append(usageEl);

  let streamStatus = null;  // the run's status as the stream last told it
  let parentId = null;  // the run this one was forked from (its RunSubmitted's checkpoint)
  api(`${path}/events?limit=1`).then((page) => {
    const checkpoint = page.items.length ? page.items[0].data.checkpoint : null;
    if (checkpoint && checkpoint.run_id) { parentId = checkpoint.run_id; drawActions(); }
  }).catch(() => {});
  drawRun();
  const refreshPatches = () => renderPatches(patchesEl, runId, run, () => refreshRun());
  refreshPatches();
  connect();

  function workflowLine(r) {
    if (r.workflow_id) return `workflow ${r.workflow_id} v${r.version}${r.tag ? ` (tag ${r.tag})` : ''}`;
    return `inline workflow ${r.definition && r.definition.name ? r.definition.name : ''}`;
  }

  function drawRun() {
    fill(statusEl, badge(run.status));
    dag.setDefinition(run.definition || {nodes: [], edges: []}, marks);
    for (const [id, info] of nodes) dag.setState(id, info.status);
    dag.refreshEdges();
    if (selected) dag.select(selected);
    drawActions();
  }

  function drawActions() {
    clear(actions);
    if (can('operate') && !FINISHED.has(run.status)) {
      actions.append(h('button', {type: 'button', id: 'cancel', class: 'danger', onclick: cancel}, 'Cancel run'));
    }
    if (can('operate')) {
      actions.append(h('button', {type: 'button', id: 'replay', onclick: () => fork(null)}, 'Replay from the start'));
    }
    if (parentId) {  // a fork: compare.js shows it beside the run it was forked from
      actions.append(h('a', {class: 'button', id: 'compare-parent',
        href: `#/compare/${encodeURIComponent(parentId)}/${encodeURIComponent(runId)}`}, 'Compare with parent'));
    }
  }

  async function refreshRun() {
    try {
      const fetched = await api(path);
      // The read model may lag the stream, which has every event in order: a status
      // the stream told (the run ended, say) stands over an older one fetched.
      if (streamStatus) fetched.status = streamStatus;
      run = fetched;
      drawRun();
      refreshPatches();
    } catch (error) {
      fill(notice, problemBlock(error));
    }
  }

  async function cancel() {
    if (!confirm(`Cancel run ${runId}?`)) return;
    try {
      await api(`${path}/cancel`, {method: 'POST', body: {reason: 'cancelled from the console'}});
      fill(notice, 'Cancellation requested.');
    } catch (error) {
      fill(notice, problemBlock(error));
    }
  }

  async function fork(fromEvent) {
    try {
      const body = fromEvent === null ? {} : {from_event: fromEvent};
      const forked = await api(`${path}/replay`, {method: 'POST', body});
      location.hash = `#/runs/${encodeURIComponent(forked.run_id)}`;
    } catch (error) {
      fill(notice, problemBlock(error));
    }
  }

  // --- the stream ------------------------------------------------------------------

  function connect() {
    if (stopped) return;
    const params = lastCursor ? {deltas: 'true', cursor: lastCursor} : {deltas: 'true', from: 'start'};
    source = new EventSource(streamUrl(runId, params));
    source.onopen = () => { live.textContent = 'live'; };
    const onEvent = (message) => {
      const event = JSON.parse(message.data);
      lastCursor = message.lastEventId || lastCursor;
      receive(Number(event.id), event);
    };
    for (const name of STREAM_EVENTS) source.addEventListener(name, onEvent);
    source.addEventListener('llm_delta', (message) => {
      lastCursor = message.lastEventId || lastCursor;
      receiveDelta(JSON.parse(message.data));
    });
    source.addEventListener('end', () => {
      live.textContent = 'run finished';
      source.close();
    });
    source.onerror = () => {
      // The browser reconnects by itself (with Last-Event-ID) unless the stream was
      // refused; then reconnect here, after the last event seen.
      live.textContent = 'reconnecting…';
      if (source.readyState === EventSource.CLOSED && !stopped) {
        retryTimer = setTimeout(connect, RECONNECT_MS);
      }
    };
  }

  function receive(id, event) {
    if (id <= lastId) return;  // a resumed stream never repeats, but be sure
    lastId = id;
    apply(event);
    appendToTimeline(id, event);
  }

  // --- live output of agent nodes -----------------------------------------------------

  function receiveDelta(delta) {
    if (delta.position <= lastDelta) return;  // shown before a reconnect
    lastDelta = delta.position;
    const out = outputBlock(delta);
    const d = delta.data || {};
    if (delta.kind === 'text') {
      out.text.append(d.text);
    } else if (delta.kind === 'tool_call') {
      if (d.name) out.steps.append(h('li', {class: 'step'}, 'calls ', h('code', {}, d.name)));
    } else if (delta.kind === 'tool_result') {
      out.steps.append(h('li', {class: 'step'}, h('code', {}, d.name), ` answered in ${d.elapsed_ms} ms`));
    } else if (delta.kind === 'truncated') {
      out.steps.append(h('li', {class: 'step'}, 'live output truncated; the final answer is in the node output'));
    }
  }

  function outputBlock(delta) {
    const key = `${delta.node_id}/${delta.iteration}/${delta.attempt}`;
    if (!outputs.has(key)) {
      const state = badge('running');
      const text = h('pre', {class: 'live-text', 'aria-live': 'polite'});
      const steps = h('ul', {class: 'live-steps'});
      const block = h('div', {class: 'live-node', dataset: {node: delta.node_id, attempt: delta.attempt}},
        h('h3', {}, 'Node ', h('code', {}, delta.node_id), ` attempt ${delta.attempt} `, state), text, steps);
      outputs.set(key, {block, text, steps, state});
      liveOutput.hidden = false;
      liveOutput.append(block);
    }
    return outputs.get(key);
  }

  function settleOutput(d, status) {
    const out = outputs.get(`${d.node_id}/${d.iteration}/${d.attempt}`);
    if (!out) return;
    const settled = badge(status);
    out.state.replaceWith(settled);
    out.state = settled;
  }

  function node(id) {
    if (!nodes.has(id)) nodes.set(id, {status: 'pending', attempts: 0, events: 0});
    return nodes.get(id);
  }

  function setNode(id, status, changes = {}) {
    const info = Object.assign(node(id), changes, {status});
    dag.setState(id, info.status);
    dag.refreshEdges();
    if (selected === id) showNode();
  }

  function apply(event) {
    const d = event.data || {};
    const at = event.occurred_at;
    switch (event.type) {
      case 'NodeScheduled':
        setNode(d.node_id, 'running', {type: d.node_type, iteration: d.iteration, attempts: d.attempt,
          input: d.input, scheduled_at: at, started_at: null, finished_at: null, error: null});
        break;
      case 'NodeStarted': setNode(d.node_id, 'running', {started_at: at, worker: d.worker}); break;
      case 'ApprovalRequested':
        approvalNodes.set(d.approval_id, d.node_id);
        setNode(d.node_id, 'waiting', {approval: {message: d.message, approvers: d.approvers, votes: [], level: 0}});
        setRunStatus('waiting');
        break;
      case 'ApprovalDecided':
        // The first decision wins (a later one lost a race): it may be a signal's.
        noteApproval(d.approval_id, (a) => { a.decided = a.decided || {...d, at}; });
        if (approvalNodes.has(d.approval_id)) setNode(approvalNodes.get(d.approval_id), 'running');
        setRunStatus('running');
        break;
      case 'ApprovalVoted':
        noteApproval(d.approval_id, (a) => a.votes.push({...d, at}));
        break;
      case 'ApprovalEscalated':
        noteApproval(d.approval_id, (a) => Object.assign(a, {level: d.level, approvers: d.approvers}));
        break;
      case 'NodeCompleted':
        setNode(d.node_id, 'completed', {output: d.output, finished_at: at});
        settleOutput(d, 'completed');
        break;
      case 'NodeFailed':
        setNode(d.node_id, 'failed', {error: d.error, finished_at: at});
        settleOutput(d, 'failed');
        break;
      case 'NodeSkipped': setNode(d.node_id, 'skipped', {skip_reason: d.reason, finished_at: at}); break;
      case 'TimerSet':
        if (d.purpose === 'retry') setNode(d.node_id, 'retrying', {retry_at: d.fire_at});
        break;
      case 'AgentUsageRecorded': {
        const info = node(d.node_id);
        info.usage = d;
        info.usages = [...(info.usages || []), d];  // one per attempt
        if (selected === d.node_id) showNode();
        drawUsage();
        break;
      }
      case 'PatchProposed':
        if (d.node_id) recordPatchCall(d, at);
        refreshPatches();
        break;
      case 'PatchApplied':
        for (const added of d.added_nodes || []) marks[added] = d.patch_id;
        settlePatchCall(d.patch_id, `applied (revision ${d.revision}${(d.added_nodes || []).length ? `, added ${d.added_nodes.join(', ')}` : ''})`, at);
        refreshRun();
        break;
      case 'PatchRejected':
        settlePatchCall(d.patch_id, `rejected: ${(d.reasons || []).join('; ')}`, at);
        refreshPatches();
        break;
      case 'PatchReviewRequested':
        settlePatchCall(d.patch_id, 'awaiting review', null);
        refreshPatches();
        break;
      case 'PatchReviewed':
        settlePatchCall(d.patch_id, `${d.decision === 'approve' ? 'approved' : 'rejected'} by ${d.reviewed_by}${d.reason ? `: ${d.reason}` : ''}`, null);
        refreshPatches();
        break;
      case 'RunCompleted': setRunStatus('completed'); break;
      case 'RunFailed': setRunStatus('failed'); break;
      case 'RunCancelled': setRunStatus('cancelled'); break;
      default: break;
    }
  }

  // An agent's patch_workflow tool calls are the one kind of tool call the events record
  // (PatchProposed names the agent node, with the call's arguments as proposed).
  function recordPatchCall(d, at) {
    const call = {name: 'patch_workflow', patch_id: d.patch_id, attempt: d.attempt,
      arguments: {operations: d.operations, reason: d.reason}, result: 'proposed', called_at: at, settled_at: null};
    patchCalls.set(d.patch_id, {node: d.node_id, call});
    const info = node(d.node_id);
    info.calls = [...(info.calls || []), call];
    if (selected === d.node_id) showNode();
  }

  function settlePatchCall(patchId, result, at) {
    const found = patchCalls.get(patchId);
    if (!found) return;
    found.call.result = result;
    if (at) found.call.settled_at = at;
    if (selected === found.node) showNode();
  }

  function setRunStatus(status) {
    streamStatus = status;
    if (run.status === status) return;
    run.status = status;
    fill(statusEl, badge(status));
    drawActions();
  }

  function appendToTimeline(id, event) {
    const summary = h('summary', {},
      h('span', {class: 'offset'}, `#${id}`), ' ',
      h('span', {class: 'etype'}, event.type), ' ',
      event.node_id ? h('code', {}, event.node_id) : null, ' ',
      h('span', {class: 'muted'}, when(event.occurred_at), ' · ', event.actor || ''));
    const item = h('li', {dataset: {offset: id, type: event.type, node: event.node_id || ''}},
      h('details', {}, summary, jsonBlock(event.data, `${event.type} data`)));
    if (can('operate')) {
      item.append(h('button', {type: 'button', class: 'small fork', dataset: {offset: id},
        'aria-label': `Fork from here: a new run from event ${id}`, onclick: () => fork(id)}, 'Fork from here'));
    }
    timeline.append(item);
  }

  function showNode() {
    const info = nodes.get(selected) || {status: 'pending', attempts: 0};
    const defined = ((run.definition && run.definition.nodes) || []).find((n) => n.id === selected) || {};
    const output = info.output;
    const agent = (info.type || defined.type) === 'agent';
    fill(detail, 
      h('h3', {}, 'Node ', h('code', {}, selected), ' ', badge(info.status)),
      marks[selected] ? h('p', {class: 'patched-note'}, 'Added by patch ', h('code', {}, marks[selected])) : null,
      h('dl', {class: 'facts'},
        fact('Type', info.type || defined.type || '—'),
        fact('Iteration', info.iteration ?? '—'),
        fact('Attempts', info.attempts || 0),
        fact('Worker', info.worker || '—'),
        fact('Scheduled', when(info.scheduled_at)),
        fact('Started', when(info.started_at)),
        fact('Finished', when(info.finished_at)),
        fact('Duration', nodeDuration(info))),
      info.error ? h('div', {class: 'error'}, h('strong', {}, 'Error: '), info.error) : null,
      info.skip_reason ? h('p', {}, h('strong', {}, 'Skipped: '), info.skip_reason) : null,
      info.approval ? approvalBlock(info.approval) : null,
      agent && info.usage ? usageBlock(info.usage, info.usages || []) : null,
      agent ? toolCallsBlock(info.calls || [], info.usages || []) : null,
      agent && output && Array.isArray(output.patches) && output.patches.length
        ? [h('h4', {}, 'Patches proposed'), jsonBlock(output.patches, 'patches proposed')] : null,
      h('h4', {}, 'Input'), jsonBlock(info.input, 'node input'),
      h('h4', {}, 'Output'), jsonBlock(output, 'node output'),
      h('h4', {}, 'Config'), jsonBlock(defined.config, 'node config'));
  }

  // Quorum votes, escalation and what ended a hitl node's wait (docs/semantics.md).
  function noteApproval(approvalId, change) {
    const id = approvalNodes.get(approvalId);
    const approval = id === undefined ? null : node(id).approval;
    if (!approval) return;
    change(approval);
    if (selected === id) showNode();
  }

  function approvalBlock(a) {
    const decided = a.decided;
    const signal = decided && decided.signal;
    return h('div', {class: 'approval-detail', id: 'approval-detail'},
      h('p', {}, h('strong', {}, 'Approval: '), a.message),
      a.level ? h('p', {id: 'approval-level'}, `Escalated to level ${a.level}: `, (a.approvers || []).join(', ')) : null,
      a.votes.length
        ? h('table', {class: 'votes', id: 'approval-votes'}, h('caption', {}, 'Votes'),
          h('tr', {}, ['Voter', 'Vote', 'When', 'Comment'].map((c) => h('th', {scope: 'col'}, c))),
          a.votes.map((v) => h('tr', {dataset: {voter: v.voter}},
            [v.voter, v.decision, when(v.at), v.comments || ''].map((c) => h('td', {}, c)))))
        : null,
      signal
        ? h('div', {id: 'approval-signal'}, h('p', {}, 'Wait ended by signal ', h('code', {}, signal.name),
          ` sent by ${signal.sent_by || 'unknown'} at `, when(signal.sent_at)), jsonBlock(signal.payload, 'signal payload'))
        : null,
      decided ? h('p', {id: 'approval-decided'}, `Decided: ${decided.decision} by ${decided.decided_by}`) : null);
  }

  function drawUsage() {
    const rows = [...nodes].filter(([, info]) => info.usages).map(([id, info]) => [id, ...spentBy(info.usages)]);
    const all = rows.flatMap(([, , , usages]) => usages);
    const total = ['Total', ...spentBy(all)];
    usageEl.hidden = rows.length === 0;
    fill(usageEl, h('h2', {}, 'LLM usage'), h('table', {class: 'usages', id: 'run-usage-table'},
      h('tr', {}, ['Node', 'Tokens', 'Cost (USD)'].map((c) => h('th', {}, c))),
      [...rows, total].map(([id, tokens, cost]) => h('tr', {}, [id, tokens, cost].map((v) => h('td', {}, String(v)))))));
  }

  function usageBlock(usage, usages) {
    return h('div', {class: 'usage', id: 'agent-usage'}, h('h4', {}, 'Token usage'),
      h('dl', {class: 'facts'}, fact('Model', usage.model), fact('LLM calls', usage.llm_calls),
        fact('Prompt tokens', usage.prompt_tokens), fact('Cached prompt tokens', usage.cached_tokens ?? 0),
        fact('Completion tokens', usage.completion_tokens),
        fact('Total tokens', usage.total_tokens), fact('Tool calls', usage.tool_calls),
        fact('Outcome', usage.outcome || '—')),
      usages.length > 1
        ? h('table', {class: 'usages'}, h('caption', {}, 'Each attempt'),
          h('tr', {}, ['Attempt', 'LLM calls', 'Total tokens', 'Tool calls', 'Outcome'].map((c) => h('th', {scope: 'col'}, c))),
          usages.map((u) => h('tr', {}, [u.attempt, u.llm_calls, u.total_tokens, u.tool_calls, u.outcome].map((v) => h('td', {}, String(v ?? '—'))))))
        : null);
  }

  function toolCallsBlock(patchCalls, usages) {
    // Every call an attempt made, as its AgentUsageRecorded keeps it (texts cut at 1,000
    // characters, at most 100 calls per attempt); patch_workflow calls also carry what
    // became of the patch (PatchProposed and after).
    const recorded = usages.flatMap((u) => (u.calls || []).map((c) => ({...c, attempt: u.attempt})));
    const counted = usages.reduce((n, u) => n + (u.tool_calls || 0), 0);
    return h('div', {class: 'tool-calls', id: 'tool-calls'}, h('h4', {}, 'Tool calls'),
      recorded.length
        ? h('ol', {}, recorded.map((call) => h('li', {class: 'tool-call', dataset: {tool: call.name}},
          h('strong', {}, call.name), ` (attempt ${call.attempt ?? '—'}) · ${call.elapsed_ms ?? '—'} ms`,
          h('div', {}, 'Arguments: ', h('code', {class: 'tool-arguments'}, call.arguments || '')),
          h('div', {}, 'Result: ', h('code', {class: 'tool-result'}, call.result || '')))))
        : h('p', {class: 'muted'}, 'None.'),
      counted > recorded.length ? h('p', {class: 'muted'}, `${counted} tool call(s) in all; the first ${recorded.length} are shown.`) : null,
      patchCalls.length
        ? [h('h4', {}, 'Patches it proposed'),
          h('ol', {}, patchCalls.map((call) => h('li', {class: 'patch-call', dataset: {patch: call.patch_id}},
            h('strong', {}, call.name), ` (attempt ${call.attempt ?? '—'}) · ${when(call.called_at)}`,
            call.settled_at ? ` · settled after ${duration(call.called_at, call.settled_at)}` : '',
            h('div', {}, 'Outcome: ', h('span', {class: 'patch-outcome'}, call.result)),
            jsonBlock(call.arguments, `${call.name} arguments`))))]
        : null);
  }

  // A node still at work has no event to redraw it: its Duration moves on by itself.
  const ticker = setInterval(() => {
    const info = selected !== null && nodes.get(selected);
    if (document.hidden || !info || NODE_DONE.has(info.status) || FINISHED.has(run.status)) return;
    const cell = detail.querySelector('dd[data-fact="Duration"]');
    if (cell) cell.textContent = nodeDuration(info);
  }, TICK_MS);

  return () => {
    stopped = true;
    clearInterval(ticker);
    clearTimeout(retryTimer);
    if (source) source.close();
  };
}

function nodeDuration(info) {
  return info.scheduled_at ? duration(info.started_at || info.scheduled_at, info.finished_at) : '—';
}

// Tokens and cost of usage events: the cost is unknown for models without a price.
function spentBy(usages) {
  const tokens = usages.reduce((n, u) => n + (u.total_tokens || 0), 0);
  const priced = usages.filter((u) => u.cost_nano_usd !== null && u.cost_nano_usd !== undefined);
  const nano = priced.reduce((n, u) => n + u.cost_nano_usd, 0);
  const cost = priced.length ? (nano / 1e9).toFixed(nano < 1e7 ? 6 : 2) : 'unknown';
  return [tokens, priced.length < usages.length && priced.length ? `${cost} + unknown` : cost, usages];
}

function fact(label, value) {
  return [h('dt', {}, label), h('dd', {dataset: {fact: label}}, String(value))];
}

function legend() {
  return h('ul', {class: 'legend', 'aria-label': 'Node states'},
    ['pending', 'running', 'waiting', 'completed', 'failed', 'skipped', 'retrying'].map(
      (state) => h('li', {}, h('span', {class: `swatch st-${state}`}), state)));
}
