"""Values a notebook passes naturally (a pathlib.Path, numpy's numbers) mean what they
say, and the packages install only from this repository (install audit)."""

import json
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency, tomli, reads TOML the same way
    import tomli as tomllib

import numpy as np
import pytest

from nano_train.config import Config, ConfigError, DataConfig, OptimConfig, RunConfig, check
from nano_train.model import ModelConfig
from nano_train.problems import evaluate
from nano_train.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGES = Path(__file__).resolve().parents[2]


def test_model_config_takes_numpy_integers_as_python_ones():
    # (was: ValueError "ModelConfig.block_size must be a positive integer, got np.int64(8)")
    c = ModelConfig(block_size=np.int64(8), vocab_size=np.int32(16), n_layer=np.int64(1), n_head=np.int16(2),
                    n_kv_head=np.int64(1), n_embd=np.uint8(8), n_hidden=np.int64(16))
    values = [c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.n_hidden]
    assert values == [8, 16, 1, 2, 1, 8, 16]
    assert all(type(v) is int for v in values)
    with pytest.raises(ValueError, match=r"ModelConfig\.n_layer must be a positive integer, got np\.True_"):
        ModelConfig(n_layer=np.bool_(True))


def test_n_kv_head_defaults_to_n_head():
    # (was: 4, so n_head=2 was an error and n_head=8 silently grouped-query attention)
    assert ModelConfig(n_head=8, n_embd=64).n_kv_head == 8
    assert ModelConfig(n_head=2, n_embd=64).n_kv_head == 2
    assert ModelConfig(n_head=8, n_kv_head=2, n_embd=64).n_kv_head == 2


def test_a_config_built_in_code_takes_paths_and_numpy_numbers(tmp_path, small_pretrain, tiny_config):
    # (was: "ConfigError: run.out_dir: Object of type PosixPath is not JSON serializable")
    cfg = tiny_config(small_pretrain, max_iters=2)
    cfg.run.out_dir = tmp_path / "run"
    cfg.data.dataset = Path(small_pretrain)
    cfg.data.batch_size = np.int64(2)
    cfg.optim.learning_rate = np.float32(1e-3)
    result = train(cfg, progress=lambda record: None)
    assert result.step == 2
    assert (cfg.run.out_dir, cfg.data.batch_size) == (str(tmp_path / "run"), 2)
    assert type(cfg.data.batch_size) is int and type(cfg.optim.learning_rate) is float
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert start["config"]["run"]["out_dir"] == str(tmp_path / "run")


@pytest.mark.parametrize("kind", ["directory", "dangling link"])
def test_resuming_from_python_names_what_latest_pt_is(tmp_path, small_pretrain, tiny_config, kind):
    # (was: "checkpoint .../latest.pt does not exist" for a folder; the command said what it was)
    from nano_train.checkpoint import CheckpointError

    cfg = tiny_config(small_pretrain, out_dir=tmp_path / "run", init_from="resume")
    (tmp_path / "run").mkdir()
    if kind == "directory":
        (tmp_path / "run" / "latest.pt").mkdir()
    else:
        (tmp_path / "run" / "latest.pt").symlink_to(tmp_path / "gone.pt")
    what = "a directory" if kind == "directory" else "a symbolic link to nothing"
    with pytest.raises(CheckpointError, match=f"latest.pt is {what}, not a checkpoint file"):
        train(cfg, progress=lambda record: None)


@pytest.mark.parametrize("section, key, value, shown", [
    ("run", "out_dir", object(), "got object <object object at "),
    ("data", "batch_size", np.float64(2.0), "expected an integer, got 2.0"),
    ("optim", "learning_rate", np.array([1e-3]), "expected a number, got ndarray array([0.001])"),
    ("data", "dataset", 7, "expected a string, got 7"),
])
def test_a_value_of_another_kind_names_its_type(section, key, value, shown):
    cfg = Config(run=RunConfig(), data=DataConfig(), optim=OptimConfig())
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError) as e:
        check(cfg)
    assert str(e.value).startswith(f"{section}.{key}: ") and shown in str(e.value), str(e.value)
    assert "JSON serializable" not in str(e.value)


def test_no_nano_program_tells_a_python_caller_what_to_pass(monkeypatch):
    monkeypatch.setattr(evaluate, "repo_root", lambda: None)
    with pytest.raises(evaluate.EngineError, match=r"Options\(nano=PATH\).*Options\(use_c=False\)"):
        evaluate.find_nano()


def test_our_packages_pin_each_other_exactly():
    """pip must never pick someone else's project of the same name from an index
    (PyPI's nano-tokenizer is not ours): a dependency on a sibling is its exact version."""
    meta = {p.name: tomllib.loads((p / "pyproject.toml").read_text(encoding="utf-8"))["project"]
            for p in PACKAGES.iterdir() if (p / "pyproject.toml").is_file()}
    assert {"nano-format", "nano-tokenizer", "nano-train"} <= set(meta)
    pins = 0
    for project in meta.values():
        for dep in project.get("dependencies", []):
            name = dep.split("=")[0].split(">")[0].split("<")[0].strip()
            if name in meta:
                assert dep == f"{name}=={meta[name]['version']}", (project["name"], dep)
                pins += 1
    assert pins == 3
    assert (PACKAGES.parent / "LICENSE").is_file() and all(p["license"] == "MIT" for p in meta.values())


def test_each_package_ships_the_license_text():
    """The MIT terms travel with every copy: hatchling puts a package's own LICENSE file into
    its wheel (dist-info/licenses) and its sdist, and a package can only name files inside
    its folder (a link to the root's would reach an sdist's users dangling). Was: no LICENSE
    in any wheel. The copies are the root's, byte for byte."""
    root = (PACKAGES.parent / "LICENSE").read_bytes()
    packages = [p for p in PACKAGES.iterdir() if (p / "pyproject.toml").is_file()]
    assert len(packages) >= 3
    for p in packages:
        copy = p / "LICENSE"
        assert copy.is_file() and not copy.is_symlink(), f"{p.name} has no LICENSE file of its own"
        assert copy.read_bytes() == root, f"{p.name}/LICENSE differs from the repository's LICENSE"
