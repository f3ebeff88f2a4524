"""The CLI shows every setting: nested flags with choices and defaults, strict booleans, hidden test hooks,
`raytt config show`, and shipped configs usable from any directory."""

import pytest

from raytt import cli, shipped
from raytt.errors import ConfigError
from raytt.flags import overrides_from_args
from raytt.training.config import TrainConfig


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        cli.parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def test_train_help_lists_every_section_with_choices_and_defaults(capsys):
    text = _help(capsys, "train")
    for flag in ("--optim.lr", "--loss.tau", "--data.batch-size", "--mining.actor-cpus", "--tower.query"):
        assert flag in text, flag
    assert "{last,mean,exp,gru,lstm,transformer,mix,ssm}" in text and "--use-gpu, --no-use-gpu" in text
    assert "(default: 0.002)" in text
    assert "--fail-at-step" not in text and "--mining.fault" not in text, "test hooks stay out of --help"


def test_nested_flags_and_booleans_become_overrides_flags_last():
    args = cli.parser().parse_args(
        ["train", "--set", "optim.lr=0.1", "--optim.lr", "0.3", "--no-use-gpu", "--tower.query", "mix"]
    )
    assert overrides_from_args(args)[0] == "optim.lr=0.1"
    assert {"optim.lr=0.3", "use_gpu=false", "tower.query=mix"} <= set(overrides_from_args(args)[1:])
    cfg = cli.config_from_args(TrainConfig, args)
    assert cfg.optim.lr == 0.3 and cfg.tower.query == "mix" and cfg.use_gpu is False


def test_hidden_hooks_still_take_a_flag():
    args = cli.parser().parse_args(["train", "--fail-at-step", "7"])
    assert "fail_at_step=7" in overrides_from_args(args)


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["train", "--use-gpu", "yes"], "unrecognized arguments: yes"),
        (["train", "--tower.query", "cnn"], "invalid choice: 'cnn'"),
    ],
)
def test_bad_flag_values_are_refused_by_the_parser(capsys, argv, problem):
    with pytest.raises(SystemExit) as exit_info:
        cli.parser().parse_args(argv)
    assert exit_info.value.code == 2 and problem in capsys.readouterr().err


def test_yes_is_not_a_boolean_anywhere(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("use_gpu: yes\n")
    from raytt import config

    with pytest.raises(ConfigError, match="use_gpu must be true or false, got 'yes'"):
        config.load(TrainConfig, path)
    with pytest.raises(ConfigError, match="must be true or false, got 'on'"):
        config.load(TrainConfig, None, ["data.cache=on"])


def test_config_show_prints_the_resolved_config(capsys):
    cli.run(["config", "show", "--config", "demo", "--set", "optim.lr=0.0123"])
    out = capsys.readouterr().out
    assert "lr: 0.0123" in out and "query: mix" in out and "mining:" in out


def test_shipped_configs_list_copy_and_resolve_from_anywhere(tmp_path, monkeypatch, capsys):
    cli.run(["configs", "list"])
    assert "demo.yaml" in capsys.readouterr().out
    cli.run(["configs", "copy", "demo", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "demo.yaml").read_text() == shipped.path("demo").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        shipped.copy("demo", tmp_path / "mine")
    with pytest.raises(ConfigError, match="no shipped config 'nope'; shipped: .*demo.yaml"):
        shipped.copy("nope", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve("configs/demo.yaml") == shipped.path("demo")
    assert shipped.resolve("mine/demo.yaml").resolve() == (tmp_path / "mine" / "demo.yaml").resolve()
