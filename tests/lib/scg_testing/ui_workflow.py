"""UI-format workflow (what the frontend saves) -> API-format prompt (what the backend runs).

Driven by the host's own node definitions: ``widgets_values`` are positional over each
node's widget inputs in the backend's input order (required, then optional), the way the
frontend fills them; widgets past the saved values (inputs a node gained since) get their defaults. Link-only types take no slot; an INT with ``control_after_generate``
and a combo with ``image_upload`` each carry one extra entry after their value.
"""
from __future__ import annotations

#: nodes that exist only in the frontend
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class ConversionError(ValueError):
    pass


def input_order(spec: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of every input, required first, then optional."""
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, typ, opts))
    return out


def is_widget(typ, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def extra_widget_values(typ, opts: dict) -> int:
    """Entries the frontend adds after a widget's value in ``widgets_values``."""
    n = 0
    if typ == "INT" and opts.get("control_after_generate"):
        n += 1
    if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
        n += 1
    return n


def widget_default(typ, opts: dict):
    """What the frontend puts in a widget the workflow has no value for (a node that gained an input)."""
    if "default" in opts:
        return opts["default"]
    options = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
    return options[0] if options else None


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    """The API prompt of a UI workflow (LiteGraph 0.4 layout); raises ConversionError on what it cannot map."""
    if workflow.get("version") != 0.4 or not isinstance(workflow.get("nodes"), list):
        raise ConversionError("only the 0.4 UI workflow layout is supported")
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0:
            raise ConversionError(f"node {node['id']} ({kind}): muted/bypassed nodes are not supported here")
        if kind not in node_classes:
            raise ConversionError(f"node {node['id']}: unknown node type {kind!r}")
        spec = node_classes[kind].INPUT_TYPES()
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs, pos = {}, 0
        for name, typ, opts in input_order(spec):
            value, has_value = None, False
            if is_widget(typ, opts):
                if pos < len(values):
                    value, has_value = values[pos], True
                elif widget_default(typ, opts) is not None:
                    value, has_value = widget_default(typ, opts), True
                pos += 1 + extra_widget_values(typ, opts)
            if name in linked:
                link = links[linked[name]]
                if link[3] != node["id"]:
                    raise ConversionError(f"link {link[0]} does not end at node {node['id']}")
                inputs[name] = [str(link[1]), link[2]]
            elif has_value:
                inputs[name] = value
        if pos < len(values):
            raise ConversionError(f"node {node['id']} ({kind}): {len(values)} widget values for {pos} widget slots")
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title", kind)}}
    return prompt
