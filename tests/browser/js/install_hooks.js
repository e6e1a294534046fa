// Recorder hooks, installed once per page. They observe and call through, never change behaviour:
// * an extension with the afterConfigureGraph(missingNodeTypes) hook, which loadGraphData calls with
//   the node types LiteGraph does not know (strings, or {type, hint} in subgraphs);
// * the missing-nodes report: the action surfaceMissingNodes of whichever store has it (newer
//   frontends: the errors overlay), else app.showMissingNodesError (older ones: the "missing nodes" dialog);
// * the missing-models report: app.showMissingModelsError where it exists, else the action
//   setMissingModels of whichever store has it;
// * toast store actions (validation warnings, load errors) and console.warn / console.error.
if (window.__scgHarness) return 'already';
const H = window.__scgHarness = {
  rec: null,
  reset() { this.rec = {afterConfigure: [], missingNodesCalls: [], missingModelsCalls: [], toasts: [], console: []}; },
};
H.reset();
app.registerExtension({
  name: 'SCG.BrowserTestHarness',
  async afterConfigureGraph(missingNodeTypes) { H.rec.afterConfigure.push(safe(missingNodeTypes || [])); },
});
const wrap = (obj, name, record) => {
  const orig = obj[name];
  obj[name] = function (...args) { record(args); return orig.apply(this, args); };
};
const typesOf = (list) => (list || []).map(t => typeof t === 'string' ? t : t.type);
const surfacing = storesWith('surfaceMissingNodes');
for (const s of surfacing) {
  s.$onAction(({name, args}) => {
    if (name === 'surfaceMissingNodes' && (args[0] || []).length) H.rec.missingNodesCalls.push(typesOf(args[0]));
  });
}
if (!surfacing.length) wrap(app, 'showMissingNodesError', (args) => H.rec.missingNodesCalls.push(typesOf(args[0])));
if (typeof app.showMissingModelsError === 'function') {
  wrap(app, 'showMissingModelsError', (args) => H.rec.missingModelsCalls.push(safe(args[0])));
}
for (const s of storesWith('setMissingModels')) {
  // set more than once per load (candidates, then verified): the last report counts
  s.$onAction(({name, args}) => { if (name === 'setMissingModels') H.rec.missingModelsCalls = [safe(args[0])]; });
}
const toast = app.extensionManager.toast;
if (toast && toast.$onAction) {
  toast.$onAction(({name, args}) => {
    if (name === 'add' || name === 'addAlert') H.rec.toasts.push({action: name, args: safe(args)});
  });
}
const text = (a) => {
  if (a instanceof Error) return a.stack || String(a);
  if (typeof a === 'object') { try { return JSON.stringify(a); } catch (e) { return String(a); } }
  return String(a);
};
for (const level of ['warn', 'error']) {
  const orig = console[level].bind(console);
  console[level] = (...args) => {
    if (H.rec.console.length < 200) H.rec.console.push({level, text: args.map(text).join(' ')});
    return orig(...args);
  };
}
return 'installed';
