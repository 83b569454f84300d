// The approvals inbox: pending approvals with their message, payload and who may decide;
// approve or reject with a comment; past decisions with who decided and when.
import {api, can, session} from './app.js';
import {h, clear, fill, badge, when, jsonBlock, problemBlock} from './dom.js';

const REFRESH_MS = 2000;

export async function render(main) {
  const pending = h('div', {id: 'pending'});
  const past = h('tbody', {id: 'past'});
  const notice = h('div', {role: 'status', id: 'approvals-notice'});
  main.append(h('h1', {}, 'Approvals'), notice,
    h('h2', {}, 'Pending'), pending,
    h('h2', {}, 'Decided'),
    h('table', {}, h('thead', {}, h('tr', {},
      ['Run', 'Node', 'Message', 'Decision', 'By', 'When', 'Comment'].map((c) => h('th', {scope: 'col'}, c)))), past));

  let shownIds = '';

  async function refresh() {
    try {
      const [open, all] = await Promise.all([
        api('/api/v1/approvals?status=pending'), api('/api/v1/approvals?status=any')]);
      // Votes and escalation levels count as changes too: the quorum progress redraws.
      const ids = open.items.map((a) => `${a.approval_id}:${(a.votes || []).length}:${a.level || 0}`).join(' ');
      if (ids !== shownIds) {  // redraw only on change: a comment being typed stays
        shownIds = ids;
        drawPending(open.items);
      }
      drawPast(all.items.filter((a) => a.status !== 'pending'));
    } catch (error) {
      fill(notice, problemBlock(error));
    }
  }

  function drawPending(items) {
    clear(pending);
    if (!items.length) { pending.append(h('p', {class: 'muted'}, 'Nothing waits for a decision.')); return; }
    for (const approval of items) pending.append(card(approval));
  }

  function card(approval) {
    const id = approval.approval_id;
    const comment = h('textarea', {id: `comment-${id}`, rows: '2', maxlength: '4000'});
    const status = h('div', {role: 'status'});
    const decide = async (decision) => {
      try {
        await api(`/api/v1/approvals/${encodeURIComponent(id)}/decide`, {
          method: 'POST', body: {decision, comments: comment.value}});
        const result = await api(`/api/v1/approvals/${encodeURIComponent(id)}`);
        fill(notice, result.status === 'pending'
          ? `Vote recorded: ${progress(result)}.`
          : `${decision === 'approve' ? 'Approved' : 'Rejected'}: the run continues.`);
        shownIds = '';
        refresh();
      } catch (error) {
        fill(status, problemBlock(error));
      }
    };
    const deciders = approval.approvers && approval.approvers.length
      ? approval.approvers.join(', ') : 'anyone who may approve in this tenant';
    return h('article', {class: 'card approval', dataset: {approvalId: id, runId: approval.run_id}},
      h('h3', {class: 'message'}, approval.message),
      h('p', {class: 'muted'}, 'Run ', h('a', {href: `#/runs/${encodeURIComponent(approval.run_id)}`}, approval.run_id),
        ' · node ', h('code', {}, approval.node_id), ' · requested ', when(approval.requested_at),
        approval.deadline ? ` · deadline ${when(approval.deadline)} (then ${approval.on_timeout})` : ''),
      h('p', {}, h('strong', {}, 'May decide: '), deciders),
      quorumOf(approval) > 1 ? h('p', {class: 'quorum'}, h('strong', {}, 'Quorum: '), progress(approval)) : '',
      approval.level ? h('p', {class: 'escalated'}, `Escalated to level ${approval.level}`) : '',
      signalsOf(approval).length ? h('p', {}, h('strong', {}, 'Or a signal: '), signalsOf(approval).join(', ')) : '',
      h('h4', {}, 'Payload'), jsonBlock(approval.payload, 'approval payload'),
      can('approve') ? h('div', {class: 'review'},
        h('label', {for: `comment-${id}`}, 'Comment'), comment,
        h('div', {class: 'actions'},
          h('button', {type: 'button', class: 'primary approve', onclick: () => decide('approve')}, 'Approve'),
          h('button', {type: 'button', class: 'danger reject', onclick: () => decide('reject')}, 'Reject')),
        status)
        : h('p', {class: 'muted'}, `${session.me.name} may not decide approvals (roles: ${session.me.roles.join(', ')}).`));
  }

  function quorumOf(approval) { return (approval.policy && approval.policy.quorum) || 1; }
  function signalsOf(approval) { return (approval.policy && approval.policy.signals) || []; }

  // "1 of 2 approvals (ann)", with who rejected: the progress of a quorum approval.
  function progress(approval) {
    const votes = approval.votes || [];
    const yes = votes.filter((v) => v.decision === 'approve').map((v) => v.voter);
    const no = votes.filter((v) => v.decision !== 'approve').map((v) => v.voter);
    return `${yes.length} of ${quorumOf(approval)} approvals` + (yes.length ? ` (${yes.join(', ')})` : '')
      + (no.length ? `, rejected by ${no.join(', ')}` : '');
  }

  function drawPast(items) {
    clear(past);
    for (const a of items.sort((x, y) => (y.decided_at || 0) - (x.decided_at || 0)).slice(0, 200)) {
      past.append(h('tr', {dataset: {approvalId: a.approval_id}},
        h('td', {}, h('a', {href: `#/runs/${encodeURIComponent(a.run_id)}`}, a.run_id)),
        h('td', {}, a.node_id), h('td', {}, a.message), h('td', {}, badge(a.status)),
        h('td', {}, a.decided_by || '—'), h('td', {}, when(a.decided_at)), h('td', {}, a.comments || '')));
    }
  }

  await refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  return () => clearInterval(timer);
}
