// Two runs side by side (#/compare/A/B): the definition diff (jsdiff, vendored, over
// the YAML of each), the inputs, every node's status in A and in B, and the diff of each
// output that differs (from GET /api/v1/runs/{a}/diff/{b}, which cuts huge values).
import {api} from './app.js';
import {h, badge, when} from './dom.js';

const FOLD_AT = 6;  // unchanged stretches longer than this are folded to their edges

const runLink = (id) => h('a', {href: `#/runs/${encodeURIComponent(id)}`}, h('code', {}, id));

/** A unified diff (text, as the API gives it) with its lines coloured. */
function unified(text, label, id) {
  const lines = text.split('\n').map((line) => {
    const header = /^(\+\+\+|---|@@)/.test(line);  // file names and hunk ranges
    const kind = header ? 'same' : line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : 'same';
    return h('span', {class: `diff-${kind}`}, `${line}\n`);
  });
  return h('pre', {class: 'diff', tabindex: '0', 'aria-label': label, id}, lines);
}

/** The definitions' diff, computed here with jsdiff over their YAML. */
function definitionDiff(before, after) {
  const dump = (d) => window.jsyaml.dump(d || {}, {lineWidth: 100});
  const lines = [];
  for (const part of window.Diff.diffLines(dump(before), dump(after))) {
    const kind = part.added ? 'add' : part.removed ? 'del' : 'same';
    const sign = part.added ? '+' : part.removed ? '-' : ' ';
    const text = part.value.replace(/\n$/, '').split('\n');
    const shown = kind === 'same' && text.length > FOLD_AT ? [...text.slice(0, 3), '…', ...text.slice(-3)] : text;
    for (const line of shown) lines.push(h('span', {class: `diff-${kind}`}, `${sign} ${line}\n`));
  }
  return h('pre', {class: 'diff', tabindex: '0', id: 'compare-definition',
    'aria-label': 'Definition diff, A to B'}, lines);
}

function forkLine(run) {
  const fork = run.fork;
  if (!fork) return null;
  const at = fork.from_event === null ? 'from its start' : `after event ${fork.from_event}`;
  const edits = Object.keys(fork.edits || {}).filter((k) => k !== 'rerun' && k !== 'reason');
  return h('p', {class: 'muted fork-of'}, 'forked from ', runLink(fork.run_id), ` ${at}`,
    edits.length ? ` · edits: ${edits.join(', ')}` : '',
    fork.edits && fork.edits.reason ? ` · reason: ${fork.edits.reason}` : '');
}

function runCard(label, run) {
  const workflow = run.workflow_id ? `${run.workflow_id} v${run.version}` : 'inline workflow';
  return h('section', {class: 'card', id: `compare-${label.toLowerCase()}`, 'aria-label': `Run ${label}`},
    h('h2', {}, `${label}: `, runLink(run.run_id), ' ', badge(run.status)),
    h('p', {class: 'muted'}, workflow, ' · submitted ', when(run.submitted_at)),
    forkLine(run), run.error ? h('p', {class: 'error'}, run.error) : null);
}

function nodeCell(node) {
  if (!node) return h('td', {}, '—');
  return h('td', {}, badge(node.status), node.carried_from ? h('span', {class: 'muted'}, ' carried over') : null);
}

function nodeTable(nodes) {
  return h('table', {class: 'runs', id: 'compare-nodes'},
    h('thead', {}, h('tr', {}, ['Node', 'A', 'B', 'Output'].map((c) => h('th', {scope: 'col'}, c)))),
    h('tbody', {}, nodes.map((n) => h('tr', {dataset: {nodeId: n.node_id}},
      h('td', {}, h('code', {}, n.node_id)), nodeCell(n.a), nodeCell(n.b),
      h('td', {class: n.output_equal ? 'muted' : 'differs'}, n.output_equal ? 'same' : 'differs')))));
}

export async function render(main, a, b) {
  const enc = encodeURIComponent;
  const [diff, runA, runB] = await Promise.all([
    api(`/api/v1/runs/${enc(a)}/diff/${enc(b)}`), api(`/api/v1/runs/${enc(a)}`), api(`/api/v1/runs/${enc(b)}`)]);
  const outputs = diff.nodes.filter((n) => n.output_diff).map((n) =>
    h('details', {open: true, class: 'output-diff', dataset: {nodeId: n.node_id}},
      h('summary', {}, 'Output of ', h('code', {}, n.node_id)),
      unified(n.output_diff, `Output diff of node ${n.node_id}`)));
  main.append(h('div', {class: 'compare'},  // h() skips nulls and flattens arrays
    h('h1', {}, 'Compare runs'),
    h('p', {id: 'compare-verdict', role: 'status'}, diff.identical
      ? 'The runs are the same: definition, inputs, node statuses and outputs.'
      : 'The runs differ.', diff.truncated ? ' Large values were cut (see the markers).' : ''),
    h('div', {class: 'run-grid'}, runCard('A', diff.a), runCard('B', diff.b)),
    h('h2', {}, 'Definition ', diff.definition.equal ? h('span', {class: 'muted'}, '(same)') : null),
    diff.definition.equal ? null : definitionDiff(runA.definition, runB.definition),
    h('h2', {}, 'Inputs ', diff.inputs.equal ? h('span', {class: 'muted'}, '(same)') : null),
    diff.inputs.equal ? null : unified(diff.inputs.diff, 'Inputs diff', 'compare-inputs'),
    h('h2', {}, 'Nodes'), nodeTable(diff.nodes),
    outputs.length ? [h('h2', {}, 'Output diffs'), outputs] : null,
    diff.output.equal ? null : [h('h2', {}, 'Run output'), unified(diff.output.diff, 'Run output diff', 'compare-output')]));
}
