// What /health reports, in a human form.
import {api} from './app.js';
import {h, badge, problemBlock} from './dom.js';

export async function render(main) {
  main.append(h('h1', {}, 'Health'));
  let health;
  try {
    health = await api('/health');
  } catch (error) {
    health = error.problem && error.problem.dependencies ? error.problem : null;
    if (!health) { main.append(problemBlock(error)); return; }
  }
  main.append(
    h('p', {id: 'health-summary'}, badge(health.status === 'ok' ? 'completed' : 'failed', health.status), ' ',
      health.status === 'ok' ? 'Everything answers.' : 'Something does not answer (see below).'),
    h('dl', {class: 'facts'},
      h('dt', {}, 'Service'), h('dd', {}, health.service),
      h('dt', {}, 'Version'), h('dd', {}, health.version),
      h('dt', {}, 'Up for'), h('dd', {}, health.uptime),
      h('dt', {}, 'Event log'), h('dd', {}, health.backends.event_log),
      h('dt', {}, 'Read models'), h('dd', {}, health.backends.read_models)),
    h('h2', {}, 'Dependencies'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Dependency'), h('th', {scope: 'col'}, 'State'))),
      h('tbody', {}, Object.entries(health.dependencies).map(([name, state]) => h('tr', {},
        h('td', {}, name.replaceAll('_', ' ')),
        h('td', {}, state === 'ok' ? badge('completed', 'ok') : h('span', {class: 'error'}, state)))))));
}
