// Building the page from data, safely: every value becomes a text node or an attribute,
// never markup, so what users wrote (node ids, messages, payloads) cannot become HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.setAttribute('class', value);
    } else if (key === 'dataset') {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else if (key === 'value' && 'value' in el) {
      el.value = String(value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h('button', {class: 'x', onclick: f}, 'text', otherNode). */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, as `h`. */
export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** A value as indented JSON text. */
export function jsonBlock(value, label) {
  const text = value === undefined ? '—' : JSON.stringify(value, null, 2);
  return h('pre', {class: 'json', 'aria-label': label || null, tabindex: '0'}, text);
}

export function when(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return d.toLocaleString(undefined, {hour12: false});
}

export function duration(start, end) {
  if (!start) return '—';
  const ms = (end || Date.now()) - start;
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function badge(status, label = status) {
  return h('span', {class: `badge st-${status}`, 'data-status': status}, label);
}

/** A problem+json error as a readable block, errors at their paths. */
export function problemBlock(error) {
  const problem = error && error.problem;
  if (!problem) return h('p', {class: 'error', role: 'alert'}, String(error && error.message || error));
  return h('div', {class: 'error', role: 'alert'},
    h('strong', {}, problem.title || 'Error'), ': ', problem.detail || '',
    Array.isArray(problem.errors) && problem.errors.length
      ? h('ul', {}, problem.errors.map((e) => h('li', {}, h('code', {}, e.path || '/'), ' ', e.message)))
      : null);
}

/** Replaces `el`'s content with `children`, by the rules of `h` (null and false skipped). */
export function fill(el, ...children) {
  clear(el);
  return build(el, {}, children);
}
