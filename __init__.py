"""SCG for ComfyUI: the entry point ComfyUI imports (V3 API).

Importing this file does nothing and needs no ComfyUI (so tools and tests can import the pack);
ComfyUI calls :func:`comfy_entrypoint`, which registers ``models/scg`` (creating it), puts the example image into
ComfyUI's input folder when none of its name is there, and hands over the node list.
"""


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import NODES
    from .nodes.common import register_model_folder
    from .nodes.first_run import first_run_setup

    register_model_folder()
    first_run_setup()

    class SCGExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODES)

    return SCGExtension()
