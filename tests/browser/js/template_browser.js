// Open the template browser the way the menu does, pick a pack's category, and report what the user
// sees: the template titles, and the thumbnails that loaded (by alt text, which is the template name).
// arguments: pack (the category label), template names, dialog key of the template browser.
const [pack, names, dialogKey] = arguments;
const sleep = (ms) => new Promise(r => setTimeout(r, ms));
await app.extensionManager.command.execute('Comfy.BrowseTemplates');
const dialog = () => document.querySelector('[role=dialog]');
const leaves = () => dialog() ? [...dialog().querySelectorAll('*')].filter(e => !e.children.length) : [];
let nav = null;
for (let i = 0; i < 100 && !(nav = leaves().find(e => e.textContent.trim() === pack)); i++) await sleep(50);
if (!nav) return JSON.stringify({error: `no category '${pack}' in the template browser`});
nav.click();
const titles = new Set();
const thumbs = {};
const look = () => {
  for (const e of leaves()) if (names.includes(e.textContent.trim())) titles.add(e.textContent.trim());
  for (const img of dialog().querySelectorAll('img')) {
    if (names.includes(img.alt) && img.complete && img.naturalWidth > 0) thumbs[img.alt] = [img.naturalWidth, img.naturalHeight];
  }
};
// cards may render and load lazily (and leave the page when scrolled away): bring each into view in turn
for (const name of names) {
  for (let i = 0; i < 40 && !(name in thumbs); i++) {
    const title = leaves().find(e => e.textContent.trim() === name);
    if (title) title.scrollIntoView({block: 'center'});
    await sleep(100);
    look();
  }
}
const d = store('dialog');
if (d) d.closeDialog({key: dialogKey});
return JSON.stringify({titles: [...titles], thumbs});
