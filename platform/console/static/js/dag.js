// A workflow's DAG as SVG, laid out by dagre (vendored), nodes coloured by state.
import {s, clear, fill} from './dom.js';

export const NODE_STATES = ['pending', 'running', 'waiting', 'completed', 'failed', 'skipped', 'retrying'];
const NODE_HEIGHT = 44;
const PAD_X = 10;  // text inset on each side of a node's box
const MIN_WIDTH = 90;
const MAX_WIDTH = 300;
// The fonts of svg.dag .node-id and .node-type in console.css.
const ID_FONT = '600 13px ui-monospace, "DejaVu Sans Mono", monospace';
const TYPE_FONT = '12px system-ui, sans-serif';

let measurer = null;
/** The rendered width of `text` in `font`, in px (canvas metrics: the SVG's own fonts). */
function textWidth(text, font) {
  measurer = measurer || document.createElement('canvas').getContext('2d');
  measurer.font = font;
  return measurer.measureText(text).width;
}

/** `text`, cut with an ellipsis to fit in `width` px. */
function fit(text, font, width) {
  if (textWidth(text, font) <= width) return text;
  let low = 0;
  let high = text.length;
  while (low < high) {  // the longest prefix that fits with its ellipsis
    const mid = Math.ceil((low + high) / 2);
    if (textWidth(`${text.slice(0, mid)}…`, font) <= width) low = mid; else high = mid - 1;
  }
  return `${text.slice(0, low)}…`;
}

/** The two lines of a node's box: its id, and its type (with the patch that added it). */
export function nodeLabels(node, patch) {
  const room = MAX_WIDTH - 2 * PAD_X;
  const id = fit(String(node.id), ID_FONT, room);
  const tail = patch ? ` · patch ${String(patch).slice(0, 8)}` : '';
  const type = fit(String(node.type || ''), TYPE_FONT, room - textWidth(tail, TYPE_FONT)) + tail;
  return {id, type};
}

function nodeWidth(labels) {
  const text = Math.max(textWidth(labels.id, ID_FONT), textWidth(labels.type, TYPE_FONT));
  return Math.min(MAX_WIDTH, Math.max(MIN_WIDTH, Math.ceil(text) + 2 * PAD_X));
}

/** Positions of a definition's nodes and edges: {nodes: {id: {x, y, width, height,
 *  labels}}, edges: [{from, to, points}], width, height}; `marks` maps node ids added by
 *  a patch to its id (their label names it, so their box is wider). */
export function layoutGraph(definition, marks = {}) {
  const graph = new window.dagre.graphlib.Graph({multigraph: true});
  graph.setGraph({rankdir: 'LR', nodesep: 18, ranksep: 46, marginx: 12, marginy: 12});
  graph.setDefaultEdgeLabel(() => ({}));
  const nodes = Array.isArray(definition && definition.nodes) ? definition.nodes : [];
  const ids = new Set();
  for (const node of nodes) {
    if (!node || typeof node.id !== 'string' || ids.has(node.id)) continue;
    ids.add(node.id);
    const labels = nodeLabels(node, marks[node.id]);
    graph.setNode(node.id, {width: nodeWidth(labels), height: NODE_HEIGHT, labels});
  }
  const edges = (Array.isArray(definition && definition.edges) ? definition.edges : [])
    .filter((e) => e && ids.has(e.from) && ids.has(e.to));
  edges.forEach((edge, i) => graph.setEdge(edge.from, edge.to, {}, `e${i}`));
  window.dagre.layout(graph);
  const laid = {nodes: {}, edges: [], width: graph.graph().width || 0, height: graph.graph().height || 0};
  for (const id of ids) laid.nodes[id] = graph.node(id);
  edges.forEach((edge, i) => {
    laid.edges.push({...edge, index: i, points: graph.edge(edge.from, edge.to, `e${i}`).points});
  });
  return laid;
}

function pathOf(points) {
  return points.map((p, i) => `${i ? 'L' : 'M'}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
}

/** The live graph of one run (or a definition's static graph, without states). */
export class DagView {
  constructor(container, {onSelect} = {}) {
    this.container = container;
    this.onSelect = onSelect;
    this.nodeEls = new Map();
    this.edgeEls = [];
    this.states = new Map();
    this.signature = null;
  }

  /** Draws `definition`; `marks` maps node ids added by a patch to that patch's id.
   *  A definition that did not change keeps the drawing (and the states). */
  setDefinition(definition, marks = {}) {
    const signature = JSON.stringify([definition && definition.nodes, definition && definition.edges, marks]);
    if (signature === this.signature) return;
    this.signature = signature;
    const types = new Map((definition.nodes || []).map((n) => [n && n.id, n && n.type]));
    const laid = layoutGraph(definition, marks);
    const svg = s('svg', {
      class: 'dag', role: 'group', 'aria-label': 'Workflow graph',
      viewBox: `0 0 ${Math.max(laid.width, 10)} ${Math.max(laid.height, 10)}`,
      width: Math.max(laid.width, 10), height: Math.max(laid.height, 10),
    });
    svg.append(s('defs', {}, s('marker', {id: 'arrow', viewBox: '0 0 10 10', refX: '9', refY: '5',
      markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse'},
    s('path', {d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead'}))));
    this.edgeEls = laid.edges.map((edge) => {
      const title = `${edge.from} → ${edge.to}${edge.when ? ` when ${edge.when}` : ''}`;
      const el = s('path', {d: pathOf(edge.points), class: 'edge', 'marker-end': 'url(#arrow)',
        dataset: {from: edge.from, to: edge.to}}, s('title', {}, title));
      svg.append(el);
      return {edge, el};
    });
    this.nodeEls.clear();
    for (const [id, box] of Object.entries(laid.nodes)) {
      const patch = marks[id];
      const label = `${id} (${types.get(id) || '?'})${patch ? `, added by patch ${patch}` : ''}`;
      const g = s('g', {
        class: `node st-${this.states.get(id) || 'pending'}${patch ? ' patched' : ''}`,
        transform: `translate(${box.x - box.width / 2},${box.y - box.height / 2})`,
        tabindex: '0', role: 'button', dataset: {nodeId: id, patch: patch || ''},
        'aria-label': label,
      },
      s('title', {}, label),
      s('rect', {width: box.width, height: box.height, rx: '7'}),
      s('text', {x: String(PAD_X), y: '18', class: 'node-id'}, box.labels.id),
      s('text', {x: String(PAD_X), y: '34', class: 'node-type'}, box.labels.type));
      const select = () => this.onSelect && this.onSelect(id);
      g.addEventListener('click', select);
      g.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(); }
      });
      this.nodeEls.set(id, g);
      svg.append(g);
    }
    fill(this.container, svg);
    this.refreshEdges();
  }

  /** Colours a node; `state` is one of NODE_STATES. */
  setState(id, state) {
    this.states.set(id, state);
    const el = this.nodeEls.get(id);
    if (el) {
      el.setAttribute('class', el.getAttribute('class').replace(/\bst-\w+/, `st-${state}`));
      el.dataset.state = state;
    }
  }

  /** Edges are taken when their target ran after their source completed, not taken
   *  when their target was skipped. */
  refreshEdges() {
    const ran = new Set(['running', 'waiting', 'completed', 'failed', 'retrying']);
    for (const {edge, el} of this.edgeEls) {
      const from = this.states.get(edge.from);
      const to = this.states.get(edge.to);
      let state = 'unknown';
      if (from === 'completed' && ran.has(to)) state = 'taken';
      else if ((from === 'completed' || from === 'skipped' || from === 'failed') && to === 'skipped') state = 'not-taken';
      el.setAttribute('class', `edge ${state}`);
      el.dataset.state = state;
    }
  }

  select(id) {
    for (const [nodeId, el] of this.nodeEls) el.classList.toggle('selected', nodeId === id);
  }
}
