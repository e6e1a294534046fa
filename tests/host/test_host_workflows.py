"""The shipped workflows: converted UI -> API and validated by the host; workflow 1 executed end to end."""
import asyncio
import json
import uuid

import pytest
import torch

from scg_models import minmax
from scg_models.geometry import HintGeometry
from scg_testing.host import execute_prompt, node_output, random_ae, save_authors_pth
from scg_testing.ui_workflow import ConversionError, ui_to_api

WORKFLOWS = ["SCG hypercolumn preview", "SCG text to image (SD1.5)", "SCG with Canny (SD1.5)", "SCG colour manipulation (SD1.5)"]


def load(host, name):
    return json.loads((host.root / "workflows" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def stand_in_files(host):
    """Empty files with the names the workflows use: validation only checks that they are listed."""
    made = []
    for kind, name in (("checkpoints", "v1-5-pruned-emaonly.safetensors"),
                       ("controlnet", "0_epoch=10-step=325291.ckpt"), ("controlnet", "1_epoch=10-step=325291.ckpt"),
                       ("controlnet", "control_v11p_sd15_canny_fp16.safetensors")):
        path = host.dirs.models[kind] / name
        if not path.exists():
            path.write_bytes(b"")
            made.append(path)
    yield
    for path in made:
        path.unlink()


def node_types(workflow):
    return {n["type"] for n in workflow["nodes"]}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_validates_in_the_host(host, stand_in_files, name):
    workflow = load(host, name)
    prompt = ui_to_api(workflow, host.nodes.NODE_CLASS_MAPPINGS)
    ok, error, outputs, node_errors = asyncio.run(host.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    assert ok, json.dumps({"error": error, "node_errors": node_errors}, indent=1, default=str)
    assert not node_errors
    output_nodes = {k for k, v in prompt.items() if v["class_type"] in ("SaveImage", "PreviewImage")}
    assert output_nodes and set(outputs) == output_nodes  # every output validated, none ignored
    ours = {"LoadSCGAutoencoder", "LoadSCGControlNet", "HypercolumnExtract", "SCGControlApply"}
    assert node_types(workflow) & ours
    if name != "SCG hypercolumn preview":
        assert "SCGControlApply" in node_types(workflow)
        ckpt = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")
        assert ckpt["widgets_values"] == ["v1-5-pruned-emaonly.safetensors"]


def test_workflow_shapes(host):
    wfs = {name: load(host, name) for name in WORKFLOWS}
    assert "SaveImage" not in node_types(wfs["SCG hypercolumn preview"])  # previews only, no SD weights
    assert not {"CheckpointLoaderSimple", "KSampler"} & node_types(wfs["SCG hypercolumn preview"])
    assert {"Canny", "ControlNetLoader", "ControlNetApplyAdvanced"} <= node_types(wfs["SCG with Canny (SD1.5)"])
    gains = sorted(n["widgets_values"][4] for n in wfs["SCG colour manipulation (SD1.5)"]["nodes"] if n["type"] == "SCGControlApply")
    assert gains == ["", "0.5", "1.5"]


def test_converter_gives_new_widgets_their_defaults(host):
    """Workflows saved before HypercolumnExtract had ``resolution`` get its default, as the frontend does."""
    wf = load(host, "SCG hypercolumn preview")
    extract = next(n for n in wf["nodes"] if n["type"] == "HypercolumnExtract")
    values = list(extract["widgets_values"])
    prompt = ui_to_api(wf, host.nodes.NODE_CLASS_MAPPINGS)
    inputs = prompt[str(extract["id"])]["inputs"]
    assert [inputs[k] for k in ("modules", "gains", "grid")] == values[:3]
    assert inputs["resolution"] == (values[3] if len(values) > 3 else 512)


def test_converter_rejects_what_it_cannot_map(host):
    wf = load(host, "SCG hypercolumn preview")
    wf["nodes"][0]["widgets_values"].append("extra")
    with pytest.raises(ConversionError, match="widget values"):
        ui_to_api(wf, host.nodes.NODE_CLASS_MAPPINGS)
    wf = load(host, "SCG hypercolumn preview")
    wf["nodes"][0]["type"] = "NoSuchNode"
    with pytest.raises(ConversionError, match="unknown node type"):
        ui_to_api(wf, host.nodes.NODE_CLASS_MAPPINGS)


def test_a_wrong_value_fails_host_validation(host, stand_in_files):
    wf = load(host, "SCG hypercolumn preview")
    extract = next(n for n in wf["nodes"] if n["type"] == "HypercolumnExtract")
    extract["widgets_values"][2] = "sideways"  # not a grid option
    prompt = ui_to_api(wf, host.nodes.NODE_CLASS_MAPPINGS)
    ok, error, outputs, node_errors = asyncio.run(host.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    assert str(extract["id"]) in node_errors  # (ok stays True: the other outputs still validate)
    assert "grid: 'sideways' not in" in json.dumps(node_errors, default=str)


def test_hypercolumn_preview_runs_end_to_end(host, stand_in_files):
    """With the shipped autoencoder, as a user without any download runs it."""
    wf = load(host, "SCG hypercolumn preview")
    loader = next(n for n in wf["nodes"] if n["type"] == "LoadSCGAutoencoder")
    assert loader["widgets_values"] == ["scg_default.safetensors"]
    prompt = ui_to_api(wf, host.nodes.NODE_CLASS_MAPPINGS)
    ex = execute_prompt(host, prompt)
    errors = [m for m in ex.status_messages if m[0] == "execution_error"]
    assert ex.success, errors
    previews = [k for k, v in prompt.items() if v["class_type"] == "PreviewImage"]
    ui = ex.history_result["outputs"]
    assert set(previews) <= set(ui) and all(ui[k]["images"] for k in previews)
    for img in (i for k in previews for i in ui[k]["images"]):
        assert (host.dirs.temp / img["subfolder"] / img["filename"]).is_file()
    # the grid holds the input and all ten groups; the gain branches differ from the unchanged one
    extracts = {v["_meta"]["title"]: k for k, v in prompt.items() if v["class_type"] == "HypercolumnExtract"}
    grid = node_output(ex, extracts["Every group (grid)"], 2)
    assert grid.shape[0] == 1 and grid.shape[-1] == 3 and 0 <= grid.min() and grid.max() <= 1
    image = node_output(ex, next(k for k, v in prompt.items() if v["class_type"] == "LoadImage"), 0)
    assert image.shape == (1, 512, 512, 3)
    hints = {t: node_output(ex, k, 0) for t, k in extracts.items()}
    base = hints["HC0+HC1, gains 1"]
    assert base.shape == (1, 512, 512, 3)  # the hint image at the default resolution (the hint is 509x509)
    for label in ("colour x2", "colour x0.3"):
        assert not torch.allclose(hints[f"HC0+HC1, {label}"], base)
    preview = node_output(ex, extracts["HC0+HC1, colour x2"], 1)
    assert preview.shape == (1, 509, 509, 3)
    raw = HintGeometry(21, 4, 10).from_canvas(hints["HC0+HC1, colour x2"].movedim(-1, 1), encoded=True)
    assert torch.allclose(preview, minmax(raw).movedim(1, -1), atol=1e-4)


def test_autoencoder_is_loaded_once_across_runs(host, stand_in_files):
    prompt = ui_to_api(load(host, "SCG hypercolumn preview"), host.nodes.NODE_CLASS_MAPPINGS)
    loader = next(k for k, v in prompt.items() if v["class_type"] == "LoadSCGAutoencoder")
    path = host.dirs.models["scg"] / "equ_nv16_vl4_rn1_Bipolar_norm.pth"  # the authors' layout, random weights
    save_authors_pth(random_ae(seed=21), path)
    prompt[loader]["inputs"]["autoencoder_name"] = path.name

    def cached(ex):
        return {n for event, data in ex.status_messages if event == "execution_cached" for n in data["nodes"]}

    ex = execute_prompt(host, prompt)
    first = node_output(ex, loader, 0)
    ex = execute_prompt(host, prompt, ex)
    assert ex.success and loader in cached(ex) and node_output(ex, loader, 0) is first
    save_authors_pth(random_ae(seed=22), path)
    ex = execute_prompt(host, prompt, ex)  # the file changed: loaded again
    assert ex.success and loader not in cached(ex) and node_output(ex, loader, 0) is not first
    path.unlink()
