// Load a workflow like the user does; report what the frontend said and the graph it built.
// arguments: workflow (UI format) | null, file name, mode ('drop' | 'loadGraphData' | 'template'),
// template {module, name} | null.
const [workflow, filename, mode, template] = arguments;
const H = window.__scgHarness;
H.reset();
let error = null;
try {
  if (mode === 'template') {
    // what the template browser does: fetch /api/workflow_templates/<module>/<name>.json, then
    // app.loadGraphData(json, true, true, name, {openSource: 'template'})
    const resp = await fetch(api.apiURL(`/workflow_templates/${encodeURIComponent(template.module)}/${encodeURIComponent(template.name)}.json`));
    if (!resp.ok) throw new Error(`template fetch failed: HTTP ${resp.status}`);
    await app.loadGraphData(await resp.json(), true, true, template.name, {openSource: 'template'});
  } else if (mode === 'drop') {
    // the call the canvas drop handler makes
    await app.handleFile(new File([JSON.stringify(workflow)], filename, {type: 'application/json'}), 'file_drop');
  } else {
    await app.loadGraphData(workflow, true, true, filename.replace(/\.json$/, ''), {});
  }
} catch (e) {
  error = String(e && e.stack || e);
}
await new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)));  // let dialogs and toasts settle
// The frontend keeps invalid widget values silently (the server rejects them only on queue), so
// check them against the widgets' own options (from /object_info).
const widgetProblems = [];
for (const n of app.graph.nodes) {
  if (!(n.constructor && n.constructor.nodeData)) continue;  // stand-in of a missing node type
  for (const w of (n.widgets || [])) {
    const o = w.options || {};
    const p = {node: String(n.id), type: n.type, widget: w.name, value: safe(w.value)};
    if (w.type === 'combo' && Array.isArray(o.values) && !o.values.includes(w.value)) {
      widgetProblems.push({...p, problem: 'not in list'});
    } else if (w.type === 'number' && typeof w.value !== 'number') {
      widgetProblems.push({...p, problem: 'not a number'});
    } else if (w.type === 'number' && ((typeof o.min === 'number' && w.value < o.min) || (typeof o.max === 'number' && w.value > o.max))) {
      widgetProblems.push({...p, problem: 'out of range'});
    }
  }
}
const nodes = app.graph.nodes.map(n => ({
  id: String(n.id),  // numbers in older frontends, strings in newer ones
  type: n.type,
  title: n.title,
  has_errors: !!n.has_errors,
  widgets: Object.fromEntries((n.widgets || []).filter(w => w.name).map(w => [w.name, safe(w.value)])),
}));
return JSON.stringify({error, widgetProblems, rec: H.rec, dialogs: dialogKeys(), nodes});
