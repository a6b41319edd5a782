"""`ce_gppo_trl.builtin_models`: the `builtin:` names, their cache, and what passes through unchanged."""

from pathlib import Path

import pytest

from ce_gppo_trl import cli
from ce_gppo_trl.builtin_models import TOY_MODEL, resolve_model, toy_model_path


@pytest.mark.parametrize("name", [None, "", "builtin:gpt5"])
def test_bad_model_name_is_refused(name):
    _, training_args, _ = cli.parse_train_args([])
    with pytest.raises(ValueError, match="model_name_or_path="):
        resolve_model(name, training_args, None)


def test_hub_ids_and_local_directories_pass_through(tiny_model_dir):
    _, training_args, _ = cli.parse_train_args([])
    assert resolve_model(tiny_model_dir, training_args, None) == tiny_model_dir
    assert resolve_model("Qwen/Qwen2.5-0.5B", training_args, None) == "Qwen/Qwen2.5-0.5B"


def test_builtin_toy_builds_once_into_the_cache(monkeypatch, tmp_path):
    import ce_gppo_trl.toy as toy

    built = []
    monkeypatch.setattr(toy, "build_toy_model", lambda path, **kw: built.append(path) or path)
    _, training_args, _ = cli.parse_train_args([])
    path = resolve_model(TOY_MODEL, training_args, str(tmp_path))
    assert built == [path] and Path(path).parent == tmp_path and Path(path).name.startswith("toy-model-")
    monkeypatch.setenv("CE_GPPO_CACHE", str(tmp_path / "env"))
    assert Path(toy_model_path()).parent == tmp_path / "env"
