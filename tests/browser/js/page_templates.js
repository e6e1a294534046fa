// What the template browser knows: the workflowTemplates store (created by opening the browser once).
let st = store('workflowTemplates');
let opened = false;
if (!st) {
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  opened = true;
  for (let i = 0; i < 100 && !(st = store('workflowTemplates')); i++) await new Promise(r => setTimeout(r, 50));
}
if (!st) return JSON.stringify({error: 'workflowTemplates store not found'});
await st.loadWorkflowTemplates();
if (opened) { const d = store('dialog'); if (d) d.closeDialog({key: arguments[0]}); }
const custom = {};
for (const t of st.enhancedTemplates) {
  if (t.sourceModule && t.sourceModule !== 'default') (custom[t.sourceModule] ||= []).push(t.name);
}
const categories = [];
const groups = {};  // the left column's headed groups: title -> the labels of their entries
for (const g of st.navGroupedTemplates) {
  for (const item of (g.items || [g])) if (item && item.id) categories.push(item.id);
  if (g.title && g.items) groups[g.title] = g.items.map(item => item.label);
}
return JSON.stringify({loaded: st.isLoaded, custom, categories, groups});
