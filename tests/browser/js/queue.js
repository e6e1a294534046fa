// Queue the current graph with app.queuePrompt(0, 1), what the Run button's command calls. api.queuePrompt
// (POST /prompt) is wrapped for the duration to capture the server's answer or error body.
const H = window.__scgHarness;
if (H) H.reset();
const before = dialogKeys();
let response = null, error = null, ok = null, thrown = null;
const orig = api.queuePrompt;
api.queuePrompt = async function (...args) {
  try {
    return (response = await orig.apply(this, args));
  } catch (e) {
    error = {message: String(e && e.message || e), response: safe(e && e.response || null)};
    throw e;
  }
};
try {
  ok = await app.queuePrompt(0, 1);
} catch (e) {
  thrown = String(e && e.stack || e);
} finally {
  api.queuePrompt = orig;
}
// the node errors the frontend keeps: in the 'execution' store in older frontends, in a store of
// its own in newer ones; whichever store holds lastNodeErrors
const holders = storesWith('lastNodeErrors');
const nodeErrors = holders.map(s => s.lastNodeErrors).find(v => v && Object.keys(v).length) || null;
// a refused prompt: older frontends open the 'global-error' dialog, newer ones keep lastPromptError
const promptError = storesWith('lastPromptError').map(s => s.lastPromptError).find(Boolean) || null;
return JSON.stringify({
  ok, response: safe(response), error, thrown,
  nodeErrors: safe(nodeErrors), promptError: safe(promptError),
  newDialogs: dialogKeys().filter(k => !before.includes(k)),
  toasts: H ? H.rec.toasts : [],
});
