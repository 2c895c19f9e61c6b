"""Training config: JSON sections, --key=value overrides, type checks, unknown keys."""

import json
from pathlib import Path

import pytest

from nano_train.config import ConfigError, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, obj):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


def test_file_then_overrides(tmp_path):
    p = write(tmp_path, {"model": {"n_layer": 3, "dropout": 0.1}, "optim": {"learning_rate": 1e-3, "max_iters": 10}})
    cfg, explicit = load_config(p, ["--max_iters=20", "--optim.min_lr=1e-5", "--compile=true",
                                    "--n_hidden=none", "--sample_prompts=[\"你好\"]", "--seed=3"])
    assert cfg.model.n_layer == 3 and cfg.model.dropout == 0.1
    assert cfg.optim.learning_rate == 1e-3 and cfg.optim.max_iters == 20 and cfg.optim.min_lr == 1e-5
    assert cfg.system.compile is True and cfg.system.seed == 3 and cfg.eval.sample_prompts == ["你好"]
    assert cfg.model.n_hidden is not None  # None -> derived by ModelConfig
    assert {"model.n_layer", "optim.max_iters", "system.compile"} <= explicit
    assert "data.batch_size" not in explicit
    d = cfg.to_dict()
    assert set(d) == {"model", "run", "data", "optim", "eval", "system", "lora"}
    assert d["optim"]["max_iters"] == 20


def test_ints_are_accepted_for_floats_but_not_the_reverse(tmp_path):
    cfg, _ = load_config(write(tmp_path, {"optim": {"learning_rate": 1}}))
    assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)
    with pytest.raises(ConfigError, match=r"optim.max_iters: expected an integer, got 1.5"):
        load_config(write(tmp_path, {"optim": {"max_iters": 1.5}}))
    with pytest.raises(ConfigError, match=r"system.compile: expected true or false"):
        load_config(write(tmp_path, {"system": {"compile": 1}}))
    with pytest.raises(ConfigError, match=r"data.batch_size: expected an integer"):
        load_config(write(tmp_path, {"data": {"batch_size": True}}))


@pytest.mark.parametrize("obj,message", [
    ({"optim": {"learning_rat": 1e-3}}, "unknown key optim.learning_rat"),
    ({"optimizer": {}}, "unknown section 'optimizer'"),
    ({"model": {"n_layers": 2}}, "unknown key model.n_layers"),
    ({"optim": []}, "must be a JSON object"),
    ([1], "JSON object of sections"),
    ({"system": {"dtype": "fp8"}}, "system.dtype must be one of"),
    ({"system": {"device": "tpu"}}, "system.device must be"),
    ({"system": {"attention_backend": "fast"}}, "attention_backend must be one of"),
    ({"system": {"compile_mode": "fast"}}, "compile_mode must be one of"),
    ({"system": {"loss": "fused"}}, r"system.loss must be one of \('auto', 'blocked', 'plain'\)"),
    ({"run": {"task": "rlhf"}}, "run.task must be one of"),
    ({"optim": {"min_lr": 1.0, "learning_rate": 0.1}}, r"optim.min_lr must be in \[0, learning_rate = 0.1\], got 1$"),
    ({"model": {"n_embd": 30, "n_head": 4}}, "n_head"),
    ({"optim": {"time_budget": -1}}, "optim.time_budget must be >= 0"),
    ({"system": {"threads": -2}}, "system.threads must be >= 0"),
    ({"system": {"dist_timeout": -1}}, r"system.dist_timeout must be 0 \(torch's default\) or in \[1, 1e\+09\] seconds, got -1$"),
    ({"system": {"threads": 99999}}, "system.threads must be at most 1024"),  # set_num_threads(99999) segfaults
    ({"system": {"seed": -1}}, r"system.seed must be in \[0, 2\^63\), got -1"),  # numpy's traceback, else
    ({"system": {"seed": 2**64}}, "system.seed must be in"),
    # JSON's Infinity and NaN parse as floats: no setting means anything there
    ({"optim": {"learning_rate": float("inf")}}, "optim.learning_rate: expected a finite number, got inf"),
    ({"optim": {"weight_decay": float("nan")}}, "optim.weight_decay: expected a finite number, got nan"),
    ({"optim": {"time_budget": float("inf")}}, "optim.time_budget: expected a finite number"),
    ({"model": {"dropout": float("nan")}}, "model.dropout: expected a finite number"),
])
def test_bad_configs_name_the_key(tmp_path, obj, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, obj))


@pytest.mark.parametrize("arg,message", [
    ("--learning_rat=1", "unknown key 'learning_rat'"),
    ("--optim.nope=1", "unknown key optim.nope"),
    ("--foo.max_iters=1", "unknown section 'foo'"),
    ("--max_iters=ten", "expected an integer"),
    ("--compile=maybe", "expected true or false"),
    ("max_iters=1", "expected --key=value"),
    ("--max_iters", "expected --key=value"),
    ("--learning_rate=inf", "expected a finite number, got inf"),
    ("--weight_decay=nan", "expected a finite number, got nan"),
    ("--grad_clip=1e999", "expected a finite number, got inf"),
    ("--overwrite=maybe", "expected true or false"),
])
def test_bad_overrides(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([arg])


def test_keys_may_be_spelled_with_hyphens():
    cfg, explicit = load_config(None, ["--max-iters=7", "--optim.learning-rate=0.01", "--n-layer=3"])
    assert (cfg.optim.max_iters, cfg.optim.learning_rate, cfg.model.n_layer) == (7, 0.01, 3)
    assert {"optim.max_iters", "optim.learning_rate", "model.n_layer"} <= explicit


@pytest.mark.parametrize("arg,message", [
    ("--learning_rat=1", r"unknown key 'learning_rat' \(did you mean learning_rate\?\)$"),
    ("--optim.learnin_rate=1", r"unknown key optim.learnin_rate \(did you mean learning_rate\?\)$"),
    ("--optim.batch_size=8", r"unknown key optim.batch_size \(batch_size is a key of data, not of optim\)$"),
    ("--zzz=1", r"unknown key 'zzz'$"),  # nothing close: no guess
])
def test_an_unknown_key_names_what_was_meant(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([arg])


def test_a_key_in_the_wrong_section_of_a_file_names_its_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key optim.batch_size \(batch_size is a key of data, not of optim\); "
                                          "optim keys are learning_rate, "):
        load_config(write(tmp_path, {"optim": {"batch_size": 8}}))


def test_overwrite_is_a_run_key():
    cfg, explicit = load_config(None, ["--overwrite=true"])
    assert cfg.run.overwrite is True and "run.overwrite" in explicit
    assert load_config(None)[0].run.overwrite is False
    assert load_config(None, ["--threads=1024", "--seed=0"])[0].system.threads == 1024


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.json")
    p = tmp_path / "broken.json"
    p.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(p)


def test_shipped_configs_load():
    names = sorted(p.name for p in CONFIGS.glob("*.json"))
    assert {"psycho_small.json", "sft_self_id.json", "lora_example.json"} <= set(names)
    for name in names:
        cfg, _ = load_config(CONFIGS / name)
        assert cfg.data.dataset and cfg.run.out_dir


# ---------------------------------------------------------------------------
# Files and values that used to escape as tracebacks, or were silently misread


def test_deeply_nested_config_is_one_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text('{"model": ' + "[" * 50_000 + "]" * 50_000 + "}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"deep\.json: .*nested too deeply"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"override '--sample_prompts=\[\[.*\.\.\..*expected a JSON list"):
        load_config(None, ["--sample_prompts=" + "[" * 50_000])


def test_config_that_is_not_utf8_is_one_error(tmp_path):
    p = tmp_path / "utf16.json"
    p.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match=r"utf16\.json: not UTF-8"):
        load_config(p)


def test_duplicate_keys_are_refused(tmp_path):
    p = tmp_path / "dup.json"
    p.write_text('{"model": {"n_layer": 2, "n_layer": 3}}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup\.json: not valid JSON: duplicate key 'n_layer': it appears twice"):
        load_config(p)
    p.write_text('{"model": {"n_layer": 2}, "model": {"n_head": 2}}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"duplicate key 'model': it appears twice"):
        load_config(p)


@pytest.mark.parametrize("where, file_value, override", [
    ("run.out_dir", {"run": {"out_dir": "\ud800"}}, "--out_dir=runs/\udcff"),
    ("eval.sample_prompts", {"eval": {"sample_prompts": ["ok", "\udfff"]}}, '--sample_prompts=["\udcff"]'),
    ("data.dataset", {"data": {"dataset": "d\ud800"}}, "--dataset=\udcffx"),
])
def test_strings_that_are_not_utf8_are_refused(tmp_path, where, file_value, override):
    # JSON "\ud800" decodes to a lone surrogate; a non-UTF-8 byte on the command line
    # reaches Python as a surrogate escape (\udcff for b"\xff"). Neither can be
    # written to log.jsonl, so the run must not start with them.
    p = tmp_path / "c.json"
    p.write_text(json.dumps(file_value), encoding="utf-8")  # json.dumps writes the \ud800 escape
    with pytest.raises(ConfigError, match=rf"{where}: .* is not valid UTF-8 text"):
        load_config(p)
    with pytest.raises(ConfigError, match=rf"{where}: .* is not valid UTF-8 text"):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("--n_layer=99999999999999999999999999999", r"n_layer must be at most 1024"),
    ("--block_size=1048577", r"block_size must be at most 1048576"),
    ("--vocab_size=4194305", r"vocab_size must be at most 4194304"),
    ("--n_head=4097", r"n_head must be at most 4096"),
    ("--n_embd=2097152", r"n_embd must be at most 1048576"),
    ("--n_hidden=1048577", r"n_hidden must be at most 1048576"),
    ("--batch_size=99999999999999999999", r"data.batch_size must be at most 2147483647"),
    ("--batch_size=4194305", r"data.batch_size \* model.block_size .* at most 2147483647"),
    ("--max_iters=2147483648", r"optim.max_iters must be at most 2147483647"),
    ("--eval_interval=2147483648", r"eval.eval_interval must be at most 2147483647"),
    ("--lora_rank=1048577", r"lora.lora_rank must be at most 1048576"),
])
def test_absurd_sizes_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_sizes_at_the_format_limits_are_accepted():
    from nano_format import spec

    cfg, _ = load_config(None, [f"--block_size={spec.MAX_DIM}", "--batch_size=2047", f"--n_layer={spec.MAX_LAYERS}",
                                f"--max_iters={2**31 - 1}"])
    assert cfg.model.block_size == spec.MAX_DIM and cfg.model.n_layer == spec.MAX_LAYERS


@pytest.mark.parametrize("value", [12.5, 2**32, 2**32 + 0.0, 1e30, 0, 0.5, -16])
def test_lora_alpha_must_be_what_the_lora_file_can_store(tmp_path, value):
    """The LoRA file stores alpha as a uint32: a fractional or huge alpha trained,
    then `export --lora-out` could not write it."""
    message = r"lora.lora_alpha must be a whole number in \[1, 4294967295\]"
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, {"lora": {"lora_alpha": value}}))
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"--lora_alpha={value}"])


def test_whole_lora_alphas_are_accepted_as_integers_or_floats(tmp_path):
    from nano_train.config import help_text

    for value in (16, 16.0, 1, 2**32 - 1):
        assert load_config(write(tmp_path, {"lora": {"lora_alpha": value}}))[0].lora.lora_alpha == value
        assert load_config(None, [f"--lora_alpha={value}"])[0].lora.lora_alpha == value
    line = next(x for x in help_text().splitlines() if x.split()[:1] == ["lora_alpha"])
    assert "a whole number in [1, 4294967295]" in line


def test_help_lists_the_choices_of_every_setting_that_has_them():
    from nano_train import config

    lines = {x.split()[0]: x for x in config.help_text().splitlines() if x.strip() and not x.strip().startswith("[")}
    for key, choices in (("dtype", config.DTYPES), ("compile_mode", config.COMPILE_MODES),
                         ("loss", config.LOSSES), ("attention_backend", config.ATTENTION_BACKENDS),
                         ("dist_backend", config.DIST_BACKENDS), ("device", ("auto", "cpu", "cuda:N", "mps")),
                         ("init_from", ("scratch", "resume", ".bin"))):
        for choice in choices:
            assert choice in lines[key].split("default", 1)[1], (key, choice, lines[key])


@pytest.mark.parametrize("section, value, message", [
    ("data", dict(batch_size=0), "data.batch_size must be >= 1"),
    ("data", dict(batch_size=2.0), "data.batch_size: expected an integer, got 2.0"),
    ("optim", dict(learning_rate="1e-3"), 'optim.learning_rate: expected a number, got "1e-3"'),
    ("optim", dict(learning_rate=float("nan")), "optim.learning_rate: expected a finite number"),
    ("system", dict(compile=1), "system.compile: expected true or false, got 1"),
    ("system", dict(dtype="fp32"), "system.dtype must be one of"),
    ("eval", dict(sample_prompts="你好"), "eval.sample_prompts: expected a list of strings"),
    ("run", dict(task="foo"), "run.task must be one of"),
    ("lora", dict(lora_alpha=2.5), "lora.lora_alpha must be a whole number"),
    ("optim", None, "optim: expected OptimConfig, got NoneType"),
])
def test_a_config_built_in_code_is_checked_as_a_file_is(section, value, message):
    """config.check: what load_config checks in text, checked on a Config made in code."""
    import re

    from nano_train import config as config_module

    cfg = config_module.Config()
    config_module.check(cfg)  # the defaults pass
    part = None if value is None else config_module.SECTIONS[section](**value)
    setattr(cfg, section, part)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_module.check(cfg)
    with pytest.raises(ConfigError, match="expected a nano_train.config.Config, got dict"):
        config_module.check({"run": {}})
