// What the frontend shows about missing models after a load, as text:
// * panel: newer frontends (1.58) list them in the right side panel's errors tab, one row per file with
//   its folder ("Unknown" when the frontend cannot tell); the tab is opened here as the toast's "View
//   details" does, read, and closed again;
// * dialog: older frontends (1.35) open the "missing models" dialog, listing "folder / file" for the
//   entries that carry a download link.
// arguments: how long to wait for the panel (ms).
const [waitMs] = arguments;
const out = {panel: null, dialog: null};
const dialogs = [...document.querySelectorAll('[role=dialog]')].map(d => d.innerText);
out.dialog = dialogs.find(t => /missing models/i.test(t)) || null;
const side = store('rightSidePanel');
if (side && typeof side.openPanel === 'function') {
  side.openPanel('errors');
  const until = performance.now() + waitMs;
  let group = null;
  while (!(group = document.querySelector('[data-testid="error-group-missing-model"]')) && performance.now() < until) {
    await frames(2);
  }
  if (group) out.panel = group.innerText;
  side.closePanel();
  await frames(2);
}
return JSON.stringify(out);
