// For the node ids in arguments[0]: the images the frontend keeps for the node (app.nodeOutputs)
// and the <img> elements the node draws.
const out = {};
for (const id of arguments[0]) {
  const node = app.graph.getNodeById(id) || app.graph.getNodeById(Number(id));
  const stored = (app.nodeOutputs || {})[String(id)] || {};
  out[id] = {
    outputs: (stored.images || []).map(i => i.filename),
    imgs: ((node && node.imgs) || []).map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),
  };
}
return JSON.stringify(out);
