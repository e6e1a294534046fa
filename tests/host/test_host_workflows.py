"""The shipped workflows: converted UI -> API and validated by the host; workflow 1 executed end to end;
the templates' model metadata; the example images placed on first load."""
import asyncio
import json
import logging
import os
import uuid

import pytest
import torch

from scg_models import minmax
from scg_models.geometry import HintGeometry
from scg_testing import workflows
from scg_testing.host import execute_prompt, node_output, random_ae, save_authors_pth
from scg_testing.ui_workflow import ConversionError, ui_to_api

WORKFLOWS = workflows.names()
SD15 = [n for n in WORKFLOWS if "(SD1.5)" in n]
#: the SD1.5 checkpoint entry exactly as core's templates give it (comfyui-workflow-templates, default.json)
CORE_SD15_CHECKPOINT = {
    "name": "v1-5-pruned-emaonly-fp16.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
           "v1-5-pruned-emaonly-fp16.safetensors?download=true",
    "directory": "checkpoints"}
AUTHORS_REPOS = ("https://github.com/BAAI-Brain-Inspired-Group/OPEN-Vis-ControlSD",
                 "https://github.com/BAAI-Brain-Inspired-Group/BrainSee-SCG")


def load(host, name):
    return json.loads((host.root / "workflows" / f"{name}.json").read_text())


def loaders(workflow):
    """(node, model folder) of each SD1.5 weights loader in a UI workflow."""
    return [(n, workflows.SD15_LOADERS[n["type"]]) for n in workflow["nodes"] if n["type"] in workflows.SD15_LOADERS]


@pytest.fixture(scope="module")
def stand_in_files(host):
    """Empty files with the names the workflows use: validation only checks that they are listed."""
    made = []
    for name in WORKFLOWS:
        for node, folder in loaders(workflows.read(name)):
            path = host.dirs.models[folder] / node["widgets_values"][0]
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
        assert ckpt["widgets_values"] == [CORE_SD15_CHECKPOINT["name"]]


def test_workflow_shapes(host):
    wfs = {name: load(host, name) for name in WORKFLOWS}
    assert "SaveImage" not in node_types(wfs["SCG hypercolumn preview"])  # previews only, no SD weights
    assert not {"CheckpointLoaderSimple", "KSampler"} & node_types(wfs["SCG hypercolumn preview"])
    assert {"Canny", "ControlNetLoader", "ControlNetApplyAdvanced"} <= node_types(wfs["SCG with Canny (SD1.5)"])
    gains = sorted(n["widgets_values"][4] for n in wfs["SCG colour manipulation (SD1.5)"]["nodes"] if n["type"] == "SCGControlApply")
    assert gains == ["", "0.5", "1.5"]


def controls(workflow):
    """Per KSampler (by title), the SCG controls its conditioning went through, from the sampler back:
    (strength, modules, gains, ControlNet file, image file) each. Checks that positive and negative pass
    through the same apply nodes (the authors' unconditional branch gets the same control)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(node, name):
        link = next(i["link"] for i in node["inputs"] if i["name"] == name)
        return nodes[links[link][1]], links[link][2]

    out = {}
    for sampler in (n for n in workflow["nodes"] if n["type"] == "KSampler"):
        chain = []
        node, _ = source(sampler, "positive")
        assert source(sampler, "negative") == (node, 1)
        while node["type"] == "SCGControlApply":
            strength, start, end, modules, gains = node["widgets_values"]
            assert (start, end) == (0.0, 1.0)
            cn, image = source(node, "control_net")[0], source(node, "image")[0]
            assert source(node, "scg_autoencoder") == (cn, 1)  # the autoencoder stored with that ControlNet
            chain.append((strength, modules, gains, cn["widgets_values"][0], image["widgets_values"][0]))
            previous, _ = source(node, "positive")
            if previous["type"] == "SCGControlApply":
                assert source(node, "negative") == (previous, 1)
            node = previous
        out[sampler.get("title", "KSampler")] = chain
    return out


HC0, HC1, HC3 = "0_epoch=10-step=325291.ckpt", "1_epoch=10-step=325291.ckpt", "scg_hc3.ckpt"
#: the paper's uses: per workflow, the SCG controls of each sampler (strength, group, gains, file, input image)
PAPER_USES = {
    "SCG sketch to photo (SD1.5)": {"KSampler": [(1.0, "HC3", "", HC3, "scg_example_sketch.jpg")]},
    "SCG painting to photo (SD1.5)": {"KSampler (HC1)": [(1.0, "HC1", "", HC1, "scg_example_ink.jpg")],
                                      "KSampler (HC3)": [(1.0, "HC3", "", HC3, "scg_example_ink.jpg")]},
    # BrainSee-SCG: the HC0 and HC1 ControlNets mixed with weights 0.75 each (two chained applies)
    "SCG dehaze (SD1.5)": {"KSampler": [(0.75, "HC1", "", HC1, "scg_example_hazy.jpg"),
                                        (0.75, "HC0", "", HC0, "scg_example_hazy.jpg")]},
    "SCG low light (SD1.5)": {"KSampler": [(0.75, "HC1", "", HC1, "scg_example_dark.jpg"),
                                           (0.75, "HC0", "", HC0, "scg_example_dark.jpg")]},
    "SCG contrast (SD1.5)": {f"KSampler (brightness {label})": [(1.0, "HC1", gain, HC1, "scg_example.jpg")]
                             for label, gain in (("x0.5", "0.5"), ("x1", ""), ("x1.5", "1.5"))},
    "SCG colour manipulation (SD1.5)": {f"KSampler (colour {label})": [(1.0, "HC0", gain, HC0, "scg_example.jpg")]
                                        for label, gain in (("x0.5", "0.5"), ("x1", ""), ("x1.5", "1.5"))},
}
AUTHORS_PROMPT = "high-quality,extremely detailed,4K,HQ"  # their prompt files' prefix; BrainSee's restoration prompt
BRAINSEE_NEGATIVE = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
                     "worst quality, low quality")


@pytest.mark.parametrize("name", sorted(PAPER_USES))
def test_paper_use_workflows_wire_the_authors_recipe(host, name):
    wf = load(host, name)
    assert controls(wf) == PAPER_USES[name]
    for sampler in (n for n in wf["nodes"] if n["type"] == "KSampler"):
        # the authors' sampler: DDIM, 50 steps, CFG 9.1, eta 0 (ComfyUI's ddim), full denoise; a fixed seed
        assert sampler["widgets_values"] == [0, "fixed", 50, 9.1, "ddim", "ddim_uniform", 1.0]
    prompts = {n["title"]: n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "CLIPTextEncode"}
    if name in ("SCG dehaze (SD1.5)", "SCG low light (SD1.5)"):  # hyper2img_test*.py: prompt + a_prompt, n_prompt
        assert prompts == {"Positive prompt": AUTHORS_PROMPT + ", best quality, extremely detailed",
                           "Negative prompt": BRAINSEE_NEGATIVE}
    elif name in ("SCG sketch to photo (SD1.5)", "SCG painting to photo (SD1.5)"):  # log_images: empty uncond
        assert prompts["Positive prompt"].startswith(AUTHORS_PROMPT + ",") and prompts["Negative prompt"] == ""
    latent = next(n for n in wf["nodes"] if n["type"] == "EmptyLatentImage")
    assert latent["widgets_values"] == [512, 512, 1]
    outputs = [n for n in wf["nodes"] if n["type"] == "SaveImage"]
    assert outputs and all(n.get("title") for n in outputs)  # titled: the HTTP script names files after them


@pytest.mark.parametrize("name", SD15)
def test_sd15_templates_carry_model_metadata_and_say_what_goes_where(host, name):
    """The frontend's missing-models list reads ``properties.models`` of a loader: every SD1.5 loader names its
    file and folder. The checkpoint entry is core's. A Hugging Face link only where it is the file's exact
    address (frontends download from huggingface.co); the authors' files have none published, so their entry
    links the authors' repository on GitHub, which no frontend downloads from, with the file in the fragment
    (frontend 1.35 requires a URL in each entry and merges entries with the same URL)."""
    wf = load(host, name)
    note = next(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "MarkdownNote")
    for node, folder in loaders(wf):
        file = node["widgets_values"][0]
        entries = node["properties"].get("models", [])
        assert [e for e in entries if e["name"] == file and e["directory"] == folder], (node["type"], entries)
        for entry in entries:
            url = entry["url"]
            if url.startswith("https://huggingface.co/"):
                assert url.split("?")[0].endswith("/resolve/main/" + entry["name"]), url
            else:
                assert node["type"] == "LoadSCGControlNet" and url.split("#")[0] in AUTHORS_REPOS, url
                assert url.split("#")[1] == entry["name"], url
        if node["type"] == "CheckpointLoaderSimple":
            assert entries == [CORE_SD15_CHECKPOINT]
        assert f"**models/{folder}/** `{file}`" in note  # the note says where each file goes
        if node["type"] == "LoadSCGControlNet":
            assert entries[0]["url"].split("#")[0] in note and "huggingface.co/Wistons/" in note, note  # their pages


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


def test_first_run_places_every_example_image_and_keeps_the_users(host, tmp_path, caplog):
    """``first_run_setup`` (run by ComfyUI when it loads the extension) copies each shipped example image into
    the input folder, never over a file of the same name, and a folder it cannot write is logged, not raised."""
    first_run = host.pack.nodes.first_run
    shipped = {os.path.basename(p) for p in first_run.example_images()}
    assert shipped == {"scg_example.jpg"} | {f"scg_example_{k}.jpg" for k in ("sketch", "ink", "hazy", "dark")}
    previous = host.folder_paths.get_input_directory()
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    users = input_dir / "scg_example_hazy.jpg"
    users.write_bytes(b"the user's own picture")
    try:
        host.folder_paths.set_input_directory(str(input_dir))
        first_run.first_run_setup()
        assert {p.name for p in input_dir.iterdir()} == shipped
        assert users.read_bytes() == b"the user's own picture"
        for name in shipped - {users.name}:
            assert (input_dir / name).read_bytes() == (host.root / "workflows" / name).read_bytes()
        mtimes = {p.name: p.stat().st_mtime_ns for p in input_dir.iterdir()}
        first_run.first_run_setup()  # the next start: nothing rewritten
        assert {p.name: p.stat().st_mtime_ns for p in input_dir.iterdir()} == mtimes

        not_a_folder = tmp_path / "input-is-a-file"
        not_a_folder.write_bytes(b"")
        host.folder_paths.set_input_directory(str(not_a_folder))
        with caplog.at_level(logging.WARNING, logger="SCG"):
            first_run.first_run_setup()  # no exception: ComfyUI goes on loading the extension
        assert "first-run setup incomplete" in caplog.text and not_a_folder.read_bytes() == b""
    finally:
        host.folder_paths.set_input_directory(previous)
