"""SCG for ComfyUI: the entry point ComfyUI imports (V3 API).

Registers ComfyUI/models/scg and hands ComfyUI the node list; nothing else happens at import.
"""
from comfy_api.latest import ComfyExtension, io

from .nodes import NODES
from .nodes.common import register_model_folder

register_model_folder()


class SCGExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> SCGExtension:
    return SCGExtension()
