// Fit the whole graph into the window (the frontend's own command) and redraw.
if (app.canvas.deselectAll) app.canvas.deselectAll();
await app.extensionManager.command.execute('Comfy.Canvas.FitView');
await new Promise(r => setTimeout(r, 400));
app.canvas.setDirty(true, true);
await frames(2);
return JSON.stringify({scale: app.canvas.ds.scale});
