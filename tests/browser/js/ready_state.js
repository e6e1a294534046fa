// Start-up state of the page: app ready, dialogs open, active workflow, settings that change start-up.
if (!window.app || !app || !app.vueAppReady || !app.canvas || !app.graph || !pinia) {
  return JSON.stringify({ready: false});
}
const em = app.extensionManager;
const wf = em && em.workflow && em.workflow.activeWorkflow;
return JSON.stringify({
  ready: true,
  dialogs: dialogKeys(),
  activeWorkflow: wf ? wf.path : null,
  tutorialCompleted: em.setting.get('Comfy.TutorialCompleted'),
  spinner: !!em.spinner,
  nodeCount: app.graph.nodes.length,
});
