"""SCG for ComfyUI: the entry point ComfyUI imports (V3 API).

Importing this file does nothing and needs no ComfyUI (so tools and tests can import the pack);
ComfyUI calls :func:`comfy_entrypoint`, which registers ``models/scg`` and hands over the node list.
"""


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import NODES
    from .nodes.common import register_model_folder

    register_model_folder()

    class SCGExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODES)

    return SCGExtension()
