// Prepended to every script the harness runs in the page (see scg_testing/browser.py: run_js).
// Only the frontend's own objects are used:
//   window.comfyAPI.app.app -- the ComfyApp instance (the same object as window.app)
//   window.comfyAPI.api.api -- the ComfyApi instance
//   pinia stores of the Vue app mounted on #vue-app, found by id or by what they hold (ids and
//   the store that owns a field change between frontend versions, so look for the field).
const app = window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app;
const api = window.comfyAPI && window.comfyAPI.api && window.comfyAPI.api.api;
const pinia = (() => {
  const el = document.querySelector('#vue-app');
  return el && el.__vue_app__ && el.__vue_app__.config.globalProperties.$pinia;
})();
const store = (id) => (pinia && pinia._s.get(id)) || null;
// every store that has `key` (a state field, getter or action)
const storesWith = (key) => pinia ? [...pinia._s.values()].filter(s => key in s) : [];
const dialogKeys = () => { const d = store('dialog'); return d ? d.dialogStack.map(x => x.key) : []; };
const safe = (v) => { try { return JSON.parse(JSON.stringify(v === undefined ? null : v)); } catch (e) { return String(v); } };
const frames = (n) => new Promise(r => { const step = (k) => k ? requestAnimationFrame(() => step(k - 1)) : r(); step(n); });
