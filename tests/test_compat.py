"""Compatibility: a folder saved by release 0.1.0 (flat layout) gives the outputs it gave then, with this project
installed and through its own remote code; a folder re-saved today loads through remote code where the project is
absent; the task-less pipeline; loading without the remote-code prompt; the deprecated `onnx_mtl` name; and
canaries for upstream behaviour the project works around."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from transformers import pipeline

import pipeline_mtl  # noqa: F401  (registers "multitask")
from modeling_mtl import MultiTaskModel
from tests.utils import BUNDLE, FIXTURES, REPO, run_python, saved_model

RELEASE = FIXTURES / "release-0.1.0"
# The fixture's own code, run again in a fresh process, differs from its recorded values by up to 3.7e-9 (CPU kernel
# rounding): 1e-6 leaves room for that and for nothing more.
ATOL = 1e-6


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((RELEASE / "expected.json").read_text(encoding="utf-8"))


def as_json(value):
    return json.loads(json.dumps(value))


def assert_answers_close(got, expected, where: str = "answer") -> None:
    """The same structure, labels, words and offsets; floats (scores) equal to ATOL."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), (where, got, expected)
        for key in expected:
            assert_answers_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for i, (ours, theirs) in enumerate(zip(got, expected)):
            assert_answers_close(ours, theirs, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=ATOL), where
    else:
        assert got == expected, where


def assert_release_outputs(outputs: dict, expected: dict) -> None:
    """`outputs`: encode, embeddings, task_logits, pipeline and pipeline_pair, as `expected.json` holds them."""
    np.testing.assert_allclose(outputs["encode"], expected["encode"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(outputs["embeddings"], expected["embeddings"], rtol=0, atol=ATOL)
    assert set(outputs["task_logits"]) == set(expected["task_logits"]) == {"sentiment", "ner", "nli", "topics",
                                                                           "stars"}
    for name, logits in expected["task_logits"].items():
        np.testing.assert_allclose(outputs["task_logits"][name], logits, rtol=0, atol=ATOL, err_msg=name)
    assert_answers_close(outputs["pipeline"], expected["pipeline"], "pipeline")
    assert_answers_close(outputs["pipeline_pair"], expected["pipeline_pair"], "pipeline_pair")


def folder_state(folder) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# The outputs of each folder in `folders` through its own remote code, where this project cannot be imported.
REMOTE_OUTPUTS = """
    import json
    import torch
    from transformers import AutoModel, AutoTokenizer, pipeline

    expected = json.load(open({expected!r}, encoding="utf-8"))
    sentences, pair = expected["sentences"], expected["pair"]
    results = {{}}
    for folder in {folders!r}:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            out = model(**tokenizer(sentences, padding=True, return_tensors="pt"))
        pipe = pipeline(model=folder, trust_remote_code=True)
        results[folder] = {{
            "model_module": type(model).__module__,
            "pipeline_module": type(pipe).__module__,
            "encode": model.encode(sentences).tolist(),
            "embeddings": out.embeddings.tolist(),
            "task_logits": {{name: logits.tolist() for name, logits in out.task_logits.items()}},
            "pipeline": json.loads(json.dumps(pipe(sentences))),
            "pipeline_pair": json.loads(json.dumps(pipe(pair))),
        }}
    print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def resaved(tmp_path_factory) -> object:
    """The release folder loaded with today's code and saved again (code files of today's bundle)."""
    model = MultiTaskModel.from_pretrained(RELEASE)
    model.tokenizer = model.tokenizer  # loaded from the folder, so that it is saved with the model
    folder = tmp_path_factory.mktemp("resaved") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def remote_outputs(resaved, tmp_path_factory) -> dict:
    """A clean interpreter (the project unimportable) for each folder, the release one and the re-saved one: in one
    process, the first folder's remote code registers its classes for `model_type` "mtl" and the second folder is
    then read with them."""
    before = folder_state(RELEASE)
    outputs = {}
    for key, folder in (("release", RELEASE), ("resaved", resaved)):
        script = REMOTE_OUTPUTS.format(expected=str(RELEASE / "expected.json"), folders=[str(folder)])
        result = run_python(script, cwd=tmp_path_factory.mktemp("elsewhere"), project_on_path=False)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[key] = json.loads(result.stdout.strip().splitlines()[-1])[str(folder)]
    assert folder_state(RELEASE) == before, "loading through remote code wrote into the fixture"
    return outputs


# ----------------------------------------------------------------------------- release 0.1.0
def test_release_folder_with_the_installed_project(expected):
    model = MultiTaskModel.from_pretrained(RELEASE).eval()
    assert type(model) is MultiTaskModel
    batch = model.tokenizer(expected["sentences"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    pipe = pipeline("multitask", model=str(RELEASE))
    assert type(pipe) is pipeline_mtl.MultiTaskPipeline
    outputs = {
        "encode": model.encode(expected["sentences"]),
        "embeddings": out.embeddings.numpy(),
        "task_logits": {name: logits.numpy() for name, logits in out.task_logits.items()},
        "pipeline": as_json(pipe(expected["sentences"])),
        "pipeline_pair": as_json(pipe(expected["pair"])),
    }
    assert_release_outputs(outputs, expected)


def test_release_folder_through_its_own_remote_code(remote_outputs, expected):
    outputs = remote_outputs["release"]
    assert outputs["model_module"].startswith("transformers_modules") and outputs["model_module"].endswith(
        ".modeling_mtl")
    assert outputs["pipeline_module"].startswith("transformers_modules")
    assert_release_outputs(outputs, expected)


def test_release_folder_resaved_today_through_remote_code(resaved, remote_outputs, expected):
    outputs = remote_outputs["resaved"]
    assert outputs["model_module"].startswith("transformers_modules")
    assert outputs["pipeline_module"].startswith("transformers_modules")
    assert_release_outputs(outputs, expected)
    code = {path.name for path in resaved.glob("*.py")}
    assert code == {f"{name}.py" for name in BUNDLE}  # today's bundle; no modelcard_mtl.py


# ----------------------------------------------------------------------------- remote code, task-less pipeline
def test_pipeline_with_remote_code_where_project_is_missing(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer, bias_label="B-LOC")
    config = json.loads((path / "config.json").read_text())
    assert config["custom_pipelines"]["multitask"]["impl"] == "pipeline_mtl.MultiTaskPipeline"
    script = f"""
        import json
        from transformers import pipeline
        pipe = pipeline(model={str(path)!r}, trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
        print(json.dumps(pipe("Paris and Rome")))
    """
    result = run_python(script, cwd=tmp_path, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert [e["word"] for e in answer["ner"]] == ["Paris", "and", "Rome"]


TASKLESS = """
    import json
    from transformers import AutoModel, pipeline
    path = {path!r}
    answers = []
    for step in ("first", "second", "after AutoModel"):
        if step == "after AutoModel":
            AutoModel.from_pretrained(path, trust_remote_code=True)
        pipe = pipeline(model=path, trust_remote_code=True)
        answers.append([type(pipe).__module__, pipe("Paris and Rome")["ner"][0]["word"]])
    {extra}
    print(json.dumps(answers))
"""


def test_taskless_pipeline_repeats_with_transformers_only(tmp_path, tokenizer):
    source = saved_model(tmp_path, tokenizer)
    clean = tmp_path / "elsewhere"
    shutil.copytree(source, clean / "model")
    result = run_python(TASKLESS.format(path=str(clean / "model"), extra=""), cwd=clean, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(answers) == 3
    for module, word in answers:
        assert module.startswith("transformers_modules") and word == "Paris"
    assert "already registered" not in result.stderr  # no "Overwriting pipeline" on the remote load


def test_taskless_pipeline_where_project_is_installed(tmp_path, tokenizer):
    """The project importable (and imported): the remote pipeline every time, and by name the installed one."""
    path = saved_model(tmp_path, tokenizer)
    extra = """
    import pipeline_mtl
    pipe = pipeline(model=path, trust_remote_code=True)
    answers.append([type(pipe).__module__, pipe("Paris")["ner"][0]["word"]])
    pipe = pipeline("multitask", model=path)
    assert type(pipe) is pipeline_mtl.MultiTaskPipeline, type(pipe)
    answers.append([type(pipe).__module__, pipe("Paris")["ner"][0]["word"]])
    """
    result = run_python(TASKLESS.format(path=str(path), extra=textwrap.dedent(extra).replace("\n", "\n    ")),
                        cwd=REPO, project_on_path=True)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert [word for _, word in answers] == ["Paris"] * 5
    assert "already registered" not in result.stderr


def test_model_loads_its_tokenizer_without_the_remote_code_prompt(tmp_path, tokenizer):
    """Where the project is absent, `encode` with the saved tokenizer must not ask "run the custom code?"."""
    path = saved_model(tmp_path, tokenizer)
    script = f"""
        import builtins
        def refuse(prompt=""):
            raise AssertionError("prompted: " + prompt[:80])
        builtins.input = refuse
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)
        print(model.encode(["hello world"]).shape)
    """
    result = run_python(script, cwd=tmp_path, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(1, 32)" in result.stdout


def test_previously_saved_folder_still_loads(tmp_path, tokenizer):
    """A folder saved before `base_model_prefix` changed (keys `encoder.*`, `heads.*`) loads bit-identically."""
    from safetensors.torch import load_file

    path = saved_model(tmp_path, tokenizer)
    config = json.loads((path / "config.json").read_text())
    config.pop("custom_pipelines", None)
    (path / "config.json").write_text(json.dumps(config))
    stored = load_file(path / "model.safetensors")
    assert {key.split(".")[0] for key in stored} == {"encoder", "heads"}
    model = MultiTaskModel.from_pretrained(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, stored[key], rtol=0, atol=0)


def test_onnx_mtl_is_a_deprecated_alias_of_mtl_st_onnx():
    script = """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import onnx_mtl
        import mtl_st.onnx
        import mtl_st.onnx.__main__
        assert any(issubclass(w.category, FutureWarning) and "mtl_st.onnx" in str(w.message) for w in caught), caught
        assert onnx_mtl.OnnxMultiTaskModel is mtl_st.onnx.OnnxMultiTaskModel
        assert onnx_mtl.export_onnx is mtl_st.onnx.export_onnx and onnx_mtl.main is mtl_st.onnx.__main__.main
        print("ok")
    """
    result = run_python(script, cwd=REPO, project_on_path=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


# ----------------------------------------------------------------------------- upstream canaries
def test_upstream_autotokenizer_reads_config_json_first(tmp_path, tokenizer):
    """Why the README tells users to pass `trust_remote_code` to `AutoTokenizer` where the project is absent:
    transformers 5 loads config.json (and asks about its remote code) before it reads tokenizer_config.json's
    `tokenizer_class`. When this fails, the prompt is gone upstream and the README note can go."""
    path = saved_model(tmp_path, tokenizer)
    script = f"""
        import builtins
        asked = []
        builtins.input = lambda prompt="": asked.append(prompt) or "n"
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained({str(path)!r}, trust_remote_code=False)
        assert not asked, asked
        tok = AutoTokenizer.from_pretrained({str(path)!r})
        print(len(asked), type(tok).__name__)
    """
    result = run_python(script, cwd=tmp_path, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["1", "BertTokenizer"]
