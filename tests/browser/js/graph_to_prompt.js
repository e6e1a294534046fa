// The frontend's own UI -> API conversion of the current graph.
const p = await app.graphToPrompt();
return JSON.stringify({output: p.output, workflow: p.workflow});
