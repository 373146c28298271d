"""The endpoint handler's choices, without a GPU: how it loads the weights (dtype, devices), what
its requirements file asks for, and a string ``inputs`` read as one user turn."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from packaging.requirements import Requirement

from servecheck.reference.model import BUILTIN
from servecheck.servers.endpoint.server import REQUIREMENTS, write_files


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """handler.py as written for an endpoint repository, imported from that file alone."""
    folder = tmp_path_factory.mktemp("endpoint-repo")
    write_files("builtin", folder)
    spec = importlib.util.spec_from_file_location("endpoint_handler", folder / "handler.py")
    assert spec and spec.loader
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture(scope="module")
def handler(module: ModuleType):
    return module.EndpointHandler(str(BUILTIN))


@pytest.mark.parametrize("config_dtype", [torch.bfloat16, "bfloat16", torch.float16, None])
def test_cpu_loads_float32(module: ModuleType, config_dtype) -> None:
    assert module.load_options(False, config_dtype) == {"dtype": torch.float32}


@pytest.mark.parametrize(("config_dtype", "dtype"), [
    (torch.bfloat16, torch.bfloat16), ("bfloat16", torch.bfloat16),
    ("torch.float16", torch.float16), (torch.float32, torch.float32),
    (None, "auto"), ("not-a-dtype", "auto")])
def test_gpu_loads_the_checkpoints_dtype_over_the_gpus(module: ModuleType, config_dtype,
                                                       dtype) -> None:
    assert module.load_options(True, config_dtype) == {"device_map": "auto", "dtype": dtype}


def test_handler_asks_with_cuda_and_the_configs_dtype(module: ModuleType,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler passes whether CUDA is there and the checkpoint's dtype to load_options,
    and loads with what it answers (here float32 on CPU, as there is no GPU to load onto)."""
    asked = []

    def options(cuda_available, config_dtype):
        asked.append((cuda_available, config_dtype))
        return {"dtype": torch.float32}

    monkeypatch.setattr(module, "load_options", options)
    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: True)
    built = module.EndpointHandler(str(BUILTIN))
    assert asked == [(True, torch.float32)]  # the built-in checkpoint is float32
    (answer,) = built({"inputs": "Hi.", "parameters": {"temperature": 0, "max_new_tokens": 3}})
    assert answer["token_ids"]


def test_handler_on_cpu_is_float32(handler) -> None:
    assert handler.model.dtype == torch.float32 and handler.model.device.type == "cpu"


def test_requirements_are_ranges(tmp_path: Path) -> None:
    """No exact pins (torch==… would replace the endpoint image's CUDA build); torch at least
    what transformers 5 runs on; accelerate, which device_map="auto" needs; and the versions
    installed here (the ones tested) inside every range."""
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    reqs = {r.name: r for r in (Requirement(line) for line in lines
                                if line and not line.startswith("#"))}
    assert {"torch", "transformers", "accelerate"} <= set(reqs)
    assert all(s.operator not in ("==", "===") for r in reqs.values() for s in r.specifier)
    assert "2.6" in reqs["torch"].specifier and "2.5.1" not in reqs["torch"].specifier
    assert "2.13.0" in reqs["torch"].specifier and "3.0" in reqs["torch"].specifier
    for name, req in reqs.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # accelerate: only on a GPU
        assert req.specifier.contains(installed, prereleases=True), (name, installed)
    written = write_files("builtin", tmp_path)
    assert written[1].read_text() == REQUIREMENTS.read_text()


@pytest.mark.parametrize("text", ["Tell me a story about the fox.", "<start_of_turn>model\nHi"])
def test_string_inputs_is_one_user_turn(handler, text: str) -> None:
    """A string is templated as ``[{"role": "user", "content": s}]`` with the generation
    prompt, as a list holding that one message is; the answer says how it was read."""
    params = {"temperature": 1.0, "seed": 5, "max_new_tokens": 8}
    user = [{"role": "user", "content": text}]
    expected = handler.tokenizer.apply_chat_template(user, tokenize=False,
                                                     add_generation_prompt=True)
    (a,) = handler({"inputs": text, "parameters": params})
    assert a["prompt_text"] == expected != text
    assert a["inputs_as"] == "user_turn"
    assert a["prompt_token_ids"] == handler.tokenizer(
        expected, add_special_tokens=False)["input_ids"]
    assert a["prompt_token_ids"].count(handler.tokenizer.bos_token_id) == 1
    (b,) = handler({"inputs": user, "parameters": params})
    assert a == {**b, "inputs_as": "user_turn"}


def test_raw_prompt_errors(handler) -> None:
    with pytest.raises(ValueError, match="raw_prompt"):
        handler({"inputs": [{"role": "user", "content": "Hi."}],
                 "parameters": {"raw_prompt": True}})
    with pytest.raises(ValueError, match="raw_prompt"):
        handler({"inputs": "Hi.", "parameters": {"raw_prompt": "yes"}})
    with pytest.raises(ValueError, match="inputs"):
        handler({"inputs": {"prompt": "Hi.", "extra": 1}})


def test_string_inputs_without_a_chat_template(handler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler.tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match=r"no chat template.*raw_prompt"):
        handler({"inputs": "Hi."})
    (raw,) = handler({"inputs": {"prompt": "Hi."}, "parameters": {"max_new_tokens": 2}})
    assert raw["prompt_text"] == "Hi." and raw["inputs_as"] == "raw_prompt"
