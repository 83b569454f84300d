// Workflows: versions and tags, moving a tag, the definition as YAML (validated live
// by the API, errors at their paths) and as a graph, submitting a run by tag.
import {api, can} from './app.js';
import {DagView} from './dag.js';
import {h, clear, fill, when, problemBlock} from './dom.js';

const VALIDATE_DELAY_MS = 300;

export async function render(main, workflowId) {
  const [workflows, tags] = await Promise.all([api('/api/v1/workflows'), api('/api/v1/tags')]);
  main.append(h('h1', {}, 'Workflows'));
  const list = h('table', {}, h('thead', {}, h('tr', {},
    ['Workflow', 'Latest version', 'Name', 'Tags', 'Created'].map((c) => h('th', {scope: 'col'}, c)))),
  h('tbody', {id: 'workflows-body'}, workflows.items.map((w) => h('tr', {},
    h('td', {}, h('a', {href: `#/workflows/${encodeURIComponent(w.workflow_id)}`}, w.workflow_id)),
    h('td', {}, `v${w.version}`),
    h('td', {}, (w.definition && w.definition.name) || ''),
    h('td', {}, tags.items.filter((t) => t.workflow_id === w.workflow_id).map((t) => `${t.tag} → v${t.version}`).join(', ')),
    h('td', {}, when(w.created_at))))));
  main.append(workflows.items.length ? list : h('p', {class: 'muted'}, 'No workflows yet.'));
  const editorHost = h('section', {id: 'editor-section'});
  main.append(editorHost);
  let stop = () => {};
  if (workflowId) stop = await renderWorkflow(editorHost, workflowId, tags.items);
  else stop = renderEditor(editorHost, null, exampleDefinition(), tags.items);
  return () => stop();
}

function exampleDefinition() {
  return {name: 'hello', nodes: [
    {id: 'greet', type: 'transform', config: {expr: '"hello " + (.inputs.name // "world")'}}], edges: [],
  output: '.nodes.greet'};
}

async function renderWorkflow(host, workflowId, tags) {
  const latest = await api(`/api/v1/workflows/${encodeURIComponent(workflowId)}`);
  const versions = h('select', {id: 'version'});
  for (let v = latest.version; v >= 1; v -= 1) versions.append(h('option', {value: String(v)}, `v${v}`));
  const body = h('div', {});
  const show = async () => {
    const chosen = await api(`/api/v1/workflows/${encodeURIComponent(workflowId)}?version=${versions.value}`);
    stopEditor();
    stopEditor = renderEditor(clear(body), chosen, chosen.definition, tags);
  };
  let stopEditor = () => {};
  versions.addEventListener('change', show);
  host.append(h('h2', {}, 'Workflow ', h('code', {}, workflowId)),
    h('label', {}, 'Version ', versions), body);
  await show();
  return () => stopEditor();
}

function renderEditor(host, workflow, definition, tags) {
  const yamlText = window.jsyaml.dump(definition, {lineWidth: 100});
  const editor = h('textarea', {id: 'yaml', class: 'code', rows: '22', spellcheck: 'false',
    'aria-describedby': 'validation'}, yamlText);
  const validation = h('div', {id: 'validation', role: 'status', 'aria-live': 'polite'});
  const graphEl = h('div', {class: 'graph', id: 'workflow-graph'});
  const dag = new DagView(graphEl);
  const notice = h('div', {role: 'status', id: 'workflow-notice'});
  let timer = null;
  let parsed = definition;

  const validate = async () => {
    clear(validation);
    try {
      parsed = window.jsyaml.load(editor.value);
    } catch (error) {
      validation.append(h('p', {class: 'error'}, `YAML: ${error.message}`));
      return;
    }
    try {
      dag.setDefinition(parsed && typeof parsed === 'object' ? parsed : {nodes: [], edges: []});
    } catch (error) {
      /* a half-typed definition has no graph yet */
    }
    try {
      await api('/api/v1/workflows/validate', {method: 'POST', body: {definition: parsed}});
      validation.append(h('p', {class: 'ok'}, '✓ valid'));
    } catch (error) {
      validation.append(problemBlock(error));
    }
  };
  editor.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(validate, VALIDATE_DELAY_MS); });

  host.append(
    h('div', {class: 'run-grid'},
      h('div', {}, h('h3', {}, workflow ? `Definition (v${workflow.version})` : 'New workflow'),
        h('label', {for: 'yaml', class: 'sr-only'}, 'Workflow definition (YAML)'), editor, validation,
        can('operate') ? saveForm(() => parsed, notice) : null),
      h('div', {}, h('h3', {}, 'Graph'), graphEl)),
    notice,
    workflow && can('operate') ? tagForm(workflow, tags, notice) : null,
    workflow ? submitForm(workflow, tags, notice) : null);
  validate();
  return () => clearTimeout(timer);
}

function saveForm(current, notice) {
  const tag = h('input', {id: 'save-tag', placeholder: 'tag (optional)', maxlength: '128'});
  return h('form', {class: 'inline', onsubmit: async (e) => {
    e.preventDefault();
    try {
      const body = {definition: current()};
      if (tag.value.trim()) body.tag = tag.value.trim();
      const created = await api('/api/v1/workflows', {method: 'POST', body});
      location.hash = `#/workflows/${encodeURIComponent(created.workflow_id)}`;
    } catch (error) {
      fill(notice, problemBlock(error));
    }
  }}, h('label', {for: 'save-tag'}, 'Tag '), tag,
  h('button', {type: 'submit', id: 'save-workflow'}, 'Save as a new version'));
}

function tagForm(workflow, tags, notice) {
  const name = h('input', {id: 'tag-name', required: true, maxlength: '128', pattern: '[A-Za-z0-9_.:\\-]+'});
  const version = h('input', {id: 'tag-version', type: 'number', min: '1', value: String(workflow.version)});
  const own = tags.filter((t) => t.workflow_id === workflow.workflow_id);
  return h('section', {class: 'card'}, h('h3', {}, 'Tags'),
    h('ul', {id: 'tags'}, own.map((t) => h('li', {}, h('code', {}, t.tag), ` → v${t.version}`))),
    h('form', {class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api(`/api/v1/tags/${encodeURIComponent(name.value)}/move`, {method: 'POST',
          body: {workflow_id: workflow.workflow_id, version: Number(version.value)}});
        fill(notice, `Tag ${name.value} now points at v${version.value}.`);
        location.reload();
      } catch (error) {
        fill(notice, problemBlock(error));
      }
    }}, h('label', {for: 'tag-name'}, 'Move tag '), name, h('label', {for: 'tag-version'}, ' to version '), version,
    h('button', {type: 'submit', id: 'move-tag'}, 'Move tag')));
}

function submitForm(workflow, tags, notice) {
  if (!can('operate')) return null;
  const own = tags.filter((t) => t.workflow_id === workflow.workflow_id);
  const ref = h('select', {id: 'submit-ref'},
    own.map((t) => h('option', {value: `tag:${t.tag}`}, `tag ${t.tag} (v${t.version})`)),
    h('option', {value: `version:${workflow.version}`}, `this version (v${workflow.version})`));
  const inputs = h('textarea', {id: 'submit-inputs', class: 'code', rows: '5', spellcheck: 'false'}, '{}');
  return h('section', {class: 'card'}, h('h3', {}, 'Submit a run'),
    h('form', {onsubmit: async (e) => {
      e.preventDefault();
      let parsedInputs;
      try {
        parsedInputs = JSON.parse(inputs.value || '{}');
      } catch (error) {
        fill(notice, h('p', {class: 'error', role: 'alert'}, `Inputs are not JSON: ${error.message}`));
        return;
      }
      const [kind, value] = ref.value.split(/:(.*)/s);
      const body = kind === 'tag' ? {tag: value, inputs: parsedInputs}
        : {workflow_id: workflow.workflow_id, version: Number(value), inputs: parsedInputs};
      try {
        const accepted = await api('/api/v1/runs', {method: 'POST', body});
        location.hash = `#/runs/${encodeURIComponent(accepted.run_id)}`;
      } catch (error) {
        fill(notice, problemBlock(error));
      }
    }},
    h('label', {for: 'submit-ref'}, 'Run '), ref,
    h('label', {for: 'submit-inputs'}, 'Inputs (JSON)'), inputs,
    h('button', {type: 'submit', id: 'submit-run', class: 'primary'}, 'Submit run')));
}
