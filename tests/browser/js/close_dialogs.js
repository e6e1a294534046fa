// Close the dialogs whose keys are in arguments[0] (all when it is null) through the dialog store.
const keys = arguments[0];
const d = store('dialog');
const closed = [];
if (d) {
  for (const k of [...dialogKeys()]) {
    if (keys === null || keys.includes(k)) { d.closeDialog({key: k}); closed.push(k); }
  }
}
return JSON.stringify({closed, left: dialogKeys()});
