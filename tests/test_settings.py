"""Settings: every knob validated on construction, parsed without evaluation, and an allowlisted environment."""

from __future__ import annotations

from typing import Any

import pytest

from tuner.errors import InvalidSettings
from tuner.settings import ENV_ALLOWLIST, ENV_FIXED, Settings


def test_defaults_let_tensorflow_choose() -> None:
    settings = Settings()
    # 0 threads means "TensorFlow chooses", NHWC is TensorFlow's own default layout, and no env knob is set.
    assert settings.params() == {"intra_op": 0, "inter_op": 0, "data_format": "NHWC"}
    assert settings.knob_environ() == {}


@pytest.mark.parametrize(
    "params",
    [
        {"intra_op": -1},
        {"inter_op": -3},
        {"intra_op": 4097},
        {"intra_op": "2"},
        {"intra_op": 2.0},
        {"intra_op": None},
        {"intra_op": True},
        {"inter_op": False},
        {"data_format": "nhwc"},
        {"data_format": "channels_last"},
        {"data_format": ""},
        {"OMP_NUM_THREADS": 0},
        {"OMP_NUM_THREADS": -1},
        {"OMP_NUM_THREADS": True},
        {"OMP_NUM_THREADS": "4"},
        {"KMP_BLOCKTIME": -1},
        {"KMP_BLOCKTIME": True},
        {"KMP_BLOCKTIME": "30"},
        {"KMP_BLOCKTIME": "INFINITE"},
        {"KMP_BLOCKTIME": 2_147_483_648},
        {"onednn": 1},
        {"onednn": "true"},
        {"onednn": None},
    ],
    ids=repr,
)
def test_bad_knob_values_are_refused(params: dict[str, Any]) -> None:
    # Wrong types, bools posing as ints, out-of-range counts and unknown layouts never become a Settings.
    with pytest.raises(InvalidSettings):
        Settings.from_params(params)


@pytest.mark.parametrize(
    "affinity",
    [
        "; rm -rf /",
        "$(x)",
        "`id`",
        "compact; rm -rf /",
        "compact && true",
        "compact|cat",
        "compact,1,0,0",
        "granularity=fine",
        "granularity=socket,compact",
        "compact,1000",
        "",
        "COMPACT",
        " compact",
        "compact,\u0661\u0662",  # Arabic-Indic digits: a regex \d would take them, the OpenMP runtime would not
    ],
)
def test_bad_affinity_strings_are_refused(affinity: str) -> None:
    # KMP_AFFINITY is free text in the OpenMP runtime; only the documented grammar may reach a child.
    with pytest.raises(InvalidSettings, match="KMP_AFFINITY"):
        Settings.from_params({"KMP_AFFINITY": affinity})


def test_affinity_must_be_a_string() -> None:
    # A number is not an affinity string, even though it would print as one.
    with pytest.raises(InvalidSettings):
        Settings.from_params({"KMP_AFFINITY": 1})


@pytest.mark.parametrize(
    "affinity",
    ["compact", "scatter", "balanced", "none", "disabled", "granularity=fine,compact,1,0", "verbose,scatter"],
)
def test_supported_affinity_strings_pass(affinity: str) -> None:
    # The documented forms are accepted and passed through unchanged.
    assert Settings.from_params({"KMP_AFFINITY": affinity}).knob_environ() == {"KMP_AFFINITY": affinity}


def test_affinity_with_trailing_newline_is_refused() -> None:
    # A newline is not part of any affinity grammar and should not reach the child's environment.
    with pytest.raises(InvalidSettings):
        Settings.from_params({"KMP_AFFINITY": "compact\n"})


def test_blocktime_accepts_infinite_and_integers() -> None:
    # "infinite" is the one text value KMP_BLOCKTIME takes; integers are written as their decimal text.
    assert Settings.from_params({"KMP_BLOCKTIME": "infinite"}).knob_environ() == {"KMP_BLOCKTIME": "infinite"}
    assert Settings.from_params({"KMP_BLOCKTIME": 0}).knob_environ() == {"KMP_BLOCKTIME": "0"}


def test_unknown_knob_is_refused_by_name() -> None:
    # A typo must not be silently ignored; the message names the unknown knob.
    with pytest.raises(InvalidSettings, match="'intra_ops'"):
        Settings.from_params({"intra_ops": 2})


def test_unknown_env_knob_is_refused_on_direct_construction() -> None:
    # env_knobs is validated too, so an arbitrary variable cannot be smuggled in past from_params.
    with pytest.raises(InvalidSettings, match="LD_PRELOAD"):
        Settings(env_knobs=(("LD_PRELOAD", "/tmp/x.so"),))


def test_from_params_and_params_round_trip() -> None:
    params = {
        "intra_op": 4,
        "inter_op": 1,
        "data_format": "NCHW",
        "OMP_NUM_THREADS": 4,
        "KMP_BLOCKTIME": 1,
        "KMP_AFFINITY": "granularity=fine,compact,1,0",
        "onednn": False,
    }
    settings = Settings.from_params(params)
    # params() is the inverse of from_params, so the same dict comes back and rebuilds an equal Settings.
    assert settings.params() == params
    assert Settings.from_params(settings.params()) == settings


def test_from_params_is_independent_of_key_order() -> None:
    # Env knobs are stored sorted, so the same knobs in another order give an equal (and equally hashed) Settings.
    one = Settings.from_params({"KMP_BLOCKTIME": 0, "OMP_NUM_THREADS": 2})
    two = Settings.from_params({"OMP_NUM_THREADS": 2, "KMP_BLOCKTIME": 0})
    assert one == two
    assert hash(one) == hash(two)


def test_framework_calls_map_layout_to_keras_names() -> None:
    calls = Settings(intra_op=2, inter_op=1, data_format="NCHW").framework_calls()
    # The worker applies Keras' data_format names, not the NHWC/NCHW shorthand.
    assert calls == {"intra_op": 2, "inter_op": 1, "data_format": "channels_first", "precision": "fp32"}


def test_parse_comma_form_types_values() -> None:
    settings = Settings.parse("intra_op=2, inter_op=1 ,data_format=NCHW,onednn=false,KMP_BLOCKTIME=30")
    # Integers and booleans are typed from text, strings stay strings, spaces around items are ignored.
    assert settings.params() == {
        "intra_op": 2,
        "inter_op": 1,
        "data_format": "NCHW",
        "KMP_BLOCKTIME": 30,
        "onednn": False,
    }


def test_parse_semicolon_form_keeps_commas_in_affinity() -> None:
    settings = Settings.parse("KMP_AFFINITY=granularity=fine,compact,1,0; intra_op=2;")
    # With ';' as separator the affinity's commas and '=' stay inside its value; a trailing ';' is harmless.
    assert settings.params()["KMP_AFFINITY"] == "granularity=fine,compact,1,0"
    assert settings.intra_op == 2


def test_parse_comma_form_cannot_hold_affinity_commas() -> None:
    # Split on ',' the affinity's tail "1" is an item without '=', which is reported rather than guessed at.
    with pytest.raises(InvalidSettings, match="'1' is not name=value"):
        Settings.parse("KMP_AFFINITY=compact,1")


@pytest.mark.parametrize("text", ["intra_op", "=2", " =2", "intra_op=2,inter_op"])
def test_parse_malformed_items(text: str) -> None:
    # Every item must be name=value with a non-empty name.
    with pytest.raises(InvalidSettings, match="is not name=value"):
        Settings.parse(text)


@pytest.mark.parametrize(
    "text", ["intra_op=two", "intra_op=-1", "intra_op=1.5", "bogus=1", "KMP_AFFINITY=$(x)", "onednn=1"]
)
def test_parse_refuses_bad_values(text: str) -> None:
    # Parsed values go through the same validation as any other: nothing is evaluated or coerced loosely.
    with pytest.raises(InvalidSettings):
        Settings.parse(text)


def test_parse_empty_text_is_the_default() -> None:
    # No items means no knobs changed.
    assert Settings.parse("") == Settings()


def test_label_lists_every_knob() -> None:
    label = Settings.from_params({"intra_op": 2, "KMP_BLOCKTIME": 0}).label()
    # The label is the flat params as name=value text, framework knobs first, joined with ';'.
    assert label == "intra_op=2;inter_op=0;data_format=NHWC;KMP_BLOCKTIME=0"


def test_a_printed_label_pastes_back_even_with_a_comma_in_a_value() -> None:
    settings = Settings.from_params({"intra_op": 2, "KMP_AFFINITY": "granularity=core,scatter"})
    # The affinity string holds a comma; joined with ';', the label parses back to the same settings.
    assert Settings.parse(settings.label()) == settings


PARENT = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/me",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "64",
    "KMP_BLOCKTIME": "200",
    "KMP_AFFINITY": "scatter",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_NUM_INTRAOP_THREADS": "7",
    "PYTHONPATH": "/evil",
    "LD_PRELOAD": "/evil.so",
    "CUDA_VISIBLE_DEVICES": "0",
}


def test_environ_drops_stray_tuning_variables() -> None:
    env = Settings().environ(PARENT)
    # The parent's threading and Python variables would silently change what is measured: none reach the child.
    for name in ("OMP_NUM_THREADS", "KMP_BLOCKTIME", "KMP_AFFINITY", "TF_ENABLE_ONEDNN_OPTS", "PYTHONPATH"):
        assert name not in env
    assert "TF_NUM_INTRAOP_THREADS" not in env
    assert "LD_PRELOAD" not in env


def test_environ_keeps_allowlisted_and_fixed_variables() -> None:
    env = Settings().environ(PARENT)
    # PATH, HOME and locale are copied so programs and temp space are found; fixed variables are always set.
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] == "/home/me"
    assert env["LANG"] == "C.UTF-8"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    # Nothing else: the environment is exactly allowlist plus fixed.
    assert set(env) == (set(ENV_ALLOWLIST) & set(PARENT)) | set(ENV_FIXED)


def test_environ_sets_knob_variables_over_parent_values() -> None:
    settings = Settings.from_params(
        {"OMP_NUM_THREADS": 2, "KMP_BLOCKTIME": "infinite", "KMP_AFFINITY": "compact", "onednn": True}
    )
    env = settings.environ(PARENT)
    # Knob values replace the parent's, and onednn is written under TensorFlow's variable name as 1/0.
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["KMP_BLOCKTIME"] == "infinite"
    assert env["KMP_AFFINITY"] == "compact"
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert "onednn" not in env
    # The disabled form is "0".
    assert Settings.from_params({"onednn": False}).environ({})["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_environ_does_not_touch_the_parent_mapping() -> None:
    parent = dict(PARENT)
    Settings.from_params({"OMP_NUM_THREADS": 2}).environ(parent)
    # Building the child's environment never mutates the parent's.
    assert parent == PARENT


def test_settings_are_frozen() -> None:
    settings = Settings(intra_op=2)
    # A frozen record cannot be changed after validation, so it cannot become invalid.
    with pytest.raises(AttributeError):
        settings.intra_op = -1  # type: ignore[misc]


def test_unhashable_data_format_is_invalid_settings() -> None:
    # A list (as a TOML baseline could give) is a bad value and should be reported as InvalidSettings.
    with pytest.raises(InvalidSettings):
        Settings.from_params({"data_format": ["NHWC"]})


def test_gpus_are_hidden_from_cpu_runs_and_passed_through_for_gpu_runs() -> None:
    parent = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1,3"}
    # A CPU measurement never sees a GPU, whatever the shell says.
    assert Settings().environ(parent)["CUDA_VISIBLE_DEVICES"] == ""
    # A GPU run gets the user's choice of GPUs; with none chosen, TensorFlow sees them all.
    assert Settings().environ(parent, gpus=True)["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert "CUDA_VISIBLE_DEVICES" not in Settings().environ({"PATH": "/bin"}, gpus=True)


def test_launch_knobs_are_checked_before_their_defaults_are_dropped() -> None:
    # `true` equals 1 in Python: it must be refused as an instance count, not read as the default.
    with pytest.raises(InvalidSettings, match="instances must be an integer"):
        Settings.from_params({"instances": True})
    # At their defaults the launch knobs leave the label as it was; away from them they are named.
    assert Settings.from_params({"instances": 1, "allocator": "system", "precision": "fp32"}) == Settings()
    assert Settings.from_params({"instances": 2}).label().endswith(";instances=2")
