// Redraw the canvas before a screenshot.
app.canvas.setDirty(true, true);
app.canvas.draw(true, true);
await frames(1);
return 'ok';
