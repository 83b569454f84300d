// A run's patches: a readable diff against the run's current workflow (jsdiff, vendored),
// approve or reject one awaiting review with a reason, and the policy in force.
import {api, can} from './app.js';
import {h, clear, fill, badge, when, problemBlock} from './dom.js';

/** The definition the patch would produce, from the API's structured diff. */
function patched(current, diff) {
  const removed = new Set(diff.removed_nodes || []);
  const changed = new Map((diff.changed_nodes || []).map((c) => [c.id, c.after]));
  const nodes = (current.nodes || []).filter((n) => !removed.has(n.id))
    .map((n) => (changed.has(n.id) ? changed.get(n.id) : n)).concat(diff.added_nodes || []);
  const gone = new Set((diff.removed_edges || []).map((e) => JSON.stringify(e)));
  const edges = (current.edges || []).filter((e) => !gone.has(JSON.stringify(e)))
    .concat(diff.added_edges || []);
  return {...current, nodes, edges};
}

function diffView(current, diff) {
  if (!diff.applies) return h('p', {class: 'error'}, 'Does not apply: ', diff.problem || '');
  const before = window.jsyaml.dump({nodes: current.nodes || [], edges: current.edges || []}, {lineWidth: 100});
  const afterDef = patched(current, diff);
  const after = window.jsyaml.dump({nodes: afterDef.nodes, edges: afterDef.edges}, {lineWidth: 100});
  const lines = [];
  for (const part of window.Diff.diffLines(before, after)) {
    const kind = part.added ? 'add' : part.removed ? 'del' : 'same';
    const sign = part.added ? '+' : part.removed ? '-' : ' ';
    const text = part.value.replace(/\n$/, '').split('\n');
    // Unchanged stretches are folded to their edges, as a unified diff shows them.
    const shown = kind === 'same' && text.length > 6 ? [...text.slice(0, 3), '…', ...text.slice(-3)] : text;
    for (const line of shown) lines.push(h('span', {class: `diff-${kind}`}, `${sign} ${line}\n`));
  }
  return [
    h('pre', {class: 'diff', tabindex: '0', 'aria-label': 'Diff against the current workflow'}, lines),
    (diff.other_changes || []).length
      ? h('p', {}, 'Other changes: ', diff.other_changes.join(', ')) : null,
  ];
}

const renders = new WeakMap();  // container -> number of the latest render

/** Draws a run's patches into `container`; of overlapping calls (events come in
 *  bursts), only the latest one's drawing is shown. */
export async function renderPatches(container, runId, run, onDecided) {
  const mine = (renders.get(container) || 0) + 1;
  renders.set(container, mine);
  const drawn = h('div', {});
  await drawPatches(drawn, runId, run, onDecided);
  if (renders.get(container) === mine) clear(container).append(...drawn.childNodes);
}

async function drawPatches(container, runId, run, onDecided) {
  const base = `/api/v1/runs/${encodeURIComponent(runId)}/patches`;
  let items;
  try {
    items = (await api(base)).items;
  } catch (error) {
    fill(container, problemBlock(error));
    return;
  }
  const policy = (run.definition && run.definition.patch_policy) || 'auto';
  fill(container, h('h2', {}, 'Patches'),
    h('p', {class: 'muted', id: 'patch-policy'}, `Patch policy in force: ${policy}`,
      policy === 'review' ? ' (agents\u2019 patches wait for a person to approve them)' : ''));
  if (!items.length) { container.append(h('p', {class: 'muted'}, 'No patches.')); return; }
  for (const item of items) {
    const card = h('article', {class: 'card patch', dataset: {patchId: item.patch_id}},
      h('h3', {}, 'Patch ', h('code', {}, item.patch_id), ' ', badge(item.status),
        item.review ? [' review: ', badge(item.review)] : null),
      h('p', {class: 'muted'}, item.node_id ? `proposed by agent node ${item.node_id}` : 'proposed by a person',
        item.reason ? ` · reason: ${item.reason}` : '',
        item.reviewed_by ? ` · reviewed by ${item.reviewed_by}${item.review_reason ? `: ${item.review_reason}` : ''}` : ''));
    container.append(card);
    if (item.status !== 'proposed') {
      if (item.reasons && item.reasons.length) card.append(h('p', {}, item.reasons.join('; ')));
      continue;
    }
    try {
      const shown = await api(`${base}/${encodeURIComponent(item.patch_id)}`);
      if (shown.diff) fill(card, ...card.childNodes, diffView(run.definition || {}, shown.diff));
    } catch (error) {
      card.append(problemBlock(error));
    }
    if (item.review === 'pending' && can('approve')) card.append(reviewForm(base, item, onDecided));
  }
}

function reviewForm(base, item, onDecided) {
  const reason = h('textarea', {id: `reason-${item.patch_id}`, rows: '2', maxlength: '2000'});
  const status = h('div', {role: 'status'});
  const decide = async (decision) => {
    try {
      await api(`${base}/${encodeURIComponent(item.patch_id)}/${decision}`, {
        method: 'POST', body: {reason: reason.value}});
      fill(status, `Patch ${decision === 'approve' ? 'approved' : 'rejected'}.`);
      onDecided();
    } catch (error) {
      fill(status, problemBlock(error));
    }
  };
  return h('div', {class: 'review'},
    h('label', {for: `reason-${item.patch_id}`}, 'Reason'), reason,
    h('div', {class: 'actions'},
      h('button', {type: 'button', class: 'primary approve-patch', onclick: () => decide('approve')}, 'Approve patch'),
      h('button', {type: 'button', class: 'danger reject-patch', onclick: () => decide('reject')}, 'Reject patch')),
    status);
}
