"""Search spaces: the shipped TOML file, and every malformed file refused as one SearchSpaceError line."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

from tuner.errors import SearchSpaceError
from tuner.space import SPACES_DIR, SearchSpace, load, resolve_path

# A small valid space; the malformed cases below are variations of it.
VALID = """
[knobs.intra_op]
type = "int"
low = 0
high = "2*cores"

[knobs.inter_op]
type = "int"
low = 0
high = "cores"

[knobs.data_format]
type = "categorical"
choices = ["NHWC", "NCHW"]

[baselines.b]
intra_op = "cores"
inter_op = 1
data_format = "NCHW"
"""


def write(tmp_path: Path, text: str, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, max_cores: int = 2) -> str:
    """Load ``path`` expecting a SearchSpaceError; return its message."""
    with pytest.raises(SearchSpaceError) as info:
        load(str(path), max_cores)
    return str(info.value)


# -- the shipped space ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensorflow() -> SearchSpace:
    return load("tensorflow", 2)


def test_bare_name_resolves_to_the_shipped_file(tensorflow: SearchSpace) -> None:
    # A bare name means search_spaces/NAME.toml, and the space is named after its file.
    assert resolve_path("tensorflow") == SPACES_DIR / "tensorflow.toml"
    assert tensorflow.path == SPACES_DIR / "tensorflow.toml"
    assert tensorflow.name == "tensorflow"


def test_tensorflow_distributions_at_one_core(tensorflow: SearchSpace) -> None:
    dists = tensorflow.distributions(1)
    # "2*cores" and "cores" resolve against the core count; 0 (TensorFlow chooses) stays in range.
    assert dists == {
        "intra_op": IntDistribution(0, 2),
        "inter_op": IntDistribution(0, 1),
        "data_format": CategoricalDistribution(["NHWC", "NCHW"]),
        "onednn": CategoricalDistribution(["default", True, False]),
        "instances": IntDistribution(1, 1),
        "allocator": CategoricalDistribution(["system", "tcmalloc", "jemalloc"]),
        "precision": CategoricalDistribution(["fp32", "bf16"]),
    }


def test_tensorflow_distributions_at_two_cores(tensorflow: SearchSpace) -> None:
    dists = tensorflow.distributions(2)
    # Doubling the cores doubles both thread bounds; the layout choice does not depend on cores.
    assert dists["intra_op"] == IntDistribution(0, 4)
    assert dists["inter_op"] == IntDistribution(0, 2)
    assert dists["data_format"] == CategoricalDistribution(["NHWC", "NCHW"])


def test_tensorflow_baselines_are_resolved(tensorflow: SearchSpace) -> None:
    # tf-default is all zeros, NHWC and oneDNN as TensorFlow chooses; heuristic's intra_op is "cores",
    # resolved to the core count; onednn-on is tf-default with oneDNN forced on; all one process, glibc, fp32.
    baselines = tensorflow.baselines(2)
    one = {"instances": 1, "allocator": "system", "precision": "fp32"}
    assert baselines["tf-default"] == {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": "default", **one}
    assert baselines["heuristic"] == {"intra_op": 2, "inter_op": 1, "data_format": "NCHW", "onednn": "default", **one}
    assert baselines["onednn-on"] == {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": True, **one}
    assert tensorflow.baselines(1)["heuristic"]["intra_op"] == 1


def test_launcher_recipes_resolve_per_core_count_and_socket(tensorflow: SearchSpace) -> None:
    def shape(cores: int, sockets: int = 1) -> dict[str, tuple[int, int, int, str]]:
        recipes = ("run_cpu-throughput", "run_cpu-latency", "model-zoo", "openvino-small")
        found = tensorflow.baselines(cores, sockets)
        return {
            n: (b["instances"], b["intra_op"], b["inter_op"], b["allocator"]) for n, b in found.items() if n in recipes
        }

    # Two cores, one socket: run_cpu's modes are one TCMalloc process (instances of 4 cores cannot split 2),
    # the model-zoo one process with inter_op 1, and OpenVINO's small-CPU rule one single-thread instance per core.
    assert shape(2) == {
        "run_cpu-throughput": (1, 0, 0, "tcmalloc"),
        "run_cpu-latency": (1, 0, 0, "tcmalloc"),
        "model-zoo": (1, 2, 1, "tcmalloc"),
        "openvino-small": (2, 1, 1, "system"),
    }
    # 8 cores on two sockets: one instance per socket; run_cpu's latency mode gives two instances of 4 cores;
    # OpenVINO's rule holds for 4 cores or fewer only, so it is not a baseline here.
    assert shape(8, 2) == {
        "run_cpu-throughput": (2, 0, 0, "tcmalloc"),
        "run_cpu-latency": (2, 0, 0, "tcmalloc"),
        "model-zoo": (2, 4, 1, "tcmalloc"),
    }
    # "cores/4" is the largest whole split: 14 cores cannot be 3 instances, so 2 of 7.
    assert shape(14)["run_cpu-latency"][0] == 2


def test_tensorflow_size(tensorflow: SearchSpace) -> None:
    # 3 intra x 2 inter x 2 layouts x 3 oneDNN switches x 1 instance x 3 allocators x 2 precisions at one core;
    # 5 x 3 x 2 x 3 x 2 x 3 x 2 at two.
    assert tensorflow.size(1) == 216
    assert tensorflow.size(2) == 1080


def test_tensorflow_constrains_only_instances(tensorflow: SearchSpace) -> None:
    # Threads are free (even inter_op above intra_op); only the instances must split the cores and their
    # threads fit an instance's share.
    assert tensorflow.constraints == ["instances_divide_cores", "threads_fit_instance"]
    assert tensorflow.violated({"intra_op": 1, "inter_op": 2, "data_format": "NHWC"}, 2) is None
    # Three instances cannot share 4 cores; two instances of 2 cores take at most 4 intra-op threads each.
    assert tensorflow.violated({"instances": 3}, 4) == "instances_divide_cores"
    assert tensorflow.violated({"instances": 2, "intra_op": 5}, 4) == "threads_fit_instance"
    assert tensorflow.violated({"instances": 2, "intra_op": 4, "inter_op": 2}, 4) is None


# -- bound expressions and steps -----------------------------------------------------------------------


def test_core_multiples_both_ways(tmp_path: Path) -> None:
    path = write(tmp_path, '[knobs.intra_op]\ntype = "int"\nlow = "cores"\nhigh = "cores * 3"\n')
    # "cores" and "cores*N" (spaces allowed) are multiplied out for each core count.
    assert load(str(path), 4).distributions(4)["intra_op"] == IntDistribution(4, 12)


def test_step_trims_high_to_a_reachable_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[knobs.intra_op]\ntype = "int"\nlow = 0\nhigh = 5\nstep = 2\n')
    space = load(str(path), 1)
    # 5 is not reachable from 0 in steps of 2, so the top is 4 and the knob holds 0, 2, 4.
    assert space.distributions(1)["intra_op"] == IntDistribution(0, 4, step=2)
    assert space.size(1) == 3


def test_log_scale_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, '[knobs.intra_op]\ntype = "int"\nlow = 1\nhigh = "cores"\nlog = true\n')
    # A log scale with low >= 1 and step 1 is a valid Optuna distribution and is passed on as such.
    assert load(str(path), 2).distributions(2)["intra_op"] == IntDistribution(1, 2, log=True)


# -- malformed files -----------------------------------------------------------------------------------

INT = '[knobs.intra_op]\ntype = "int"\n'
CAT = '[knobs.data_format]\ntype = "categorical"\n'
AFFINITY = '[knobs.KMP_AFFINITY]\ntype = "categorical"\nchoices = ["compact", "$(x)"]\n'

# (id, file text, max_cores, key the message must name)
MALFORMED = [
    ("unknown-top-level-key", "bogus = 1\n" + VALID, 2, "bogus"),
    ("no-knobs", 'description = "x"\n', 2, "knobs"),
    ("empty-knobs", "[knobs]\n", 2, "knobs"),
    ("unknown-knob", '[knobs.threads]\ntype = "int"\nlow = 0\nhigh = 1\n', 2, "knobs.threads"),
    ("unknown-knob-key", INT + "lo = 0\nlow = 0\nhigh = 1\n", 2, "knobs.intra_op.lo"),
    ("categorical-with-int-key", CAT + 'choices = ["NHWC"]\nlow = 0\n', 2, "knobs.data_format.low"),
    ("missing-type", "[knobs.intra_op]\nlow = 0\nhigh = 1\n", 2, "knobs.intra_op.type"),
    ("unknown-type", '[knobs.intra_op]\ntype = "float"\nlow = 0\nhigh = 1\n', 2, "knobs.intra_op.type"),
    ("knob-not-a-table", "[knobs]\nintra_op = 3\n", 2, "knobs.intra_op.type"),
    ("inverted-bounds", INT + "low = 4\nhigh = 2\n", 2, "knobs.intra_op"),
    ("inverted-at-one-core", INT + 'low = 2\nhigh = "cores"\n', 2, "knobs.intra_op"),
    ("bound-cores-plus-one", INT + 'low = 0\nhigh = "cores+1"\n', 2, "knobs.intra_op.high"),
    ("bound-python-expression", INT + "low = \"__import__('os')\"\nhigh = 1\n", 2, "knobs.intra_op.low"),
    ("bound-float", INT + "low = 0\nhigh = 1.5\n", 2, "knobs.intra_op.high"),
    ("bound-bool", INT + "low = false\nhigh = 1\n", 2, "knobs.intra_op.low"),
    ("bound-negative", INT + "low = -1\nhigh = 1\n", 2, "knobs.intra_op.low"),
    ("bound-missing", INT + "low = 0\n", 2, "knobs.intra_op.high"),
    ("step-zero", INT + "low = 0\nhigh = 1\nstep = 0\n", 2, "knobs.intra_op.step"),
    ("log-not-bool", INT + 'low = 1\nhigh = 2\nlog = "yes"\n', 2, "knobs.intra_op.log"),
    ("log-with-low-zero", INT + "low = 0\nhigh = 4\nlog = true\n", 2, "knobs.intra_op"),
    ("log-with-step", INT + "low = 1\nhigh = 4\nlog = true\nstep = 2\n", 2, "knobs.intra_op"),
    ("empty-choices", CAT + "choices = []\n", 2, "knobs.data_format.choices"),
    ("choices-not-a-list", CAT + 'choices = "NHWC"\n', 2, "knobs.data_format.choices"),
    ("duplicate-choices", CAT + 'choices = ["NHWC", "NCHW", "NHWC"]\n', 2, "knobs.data_format.choices"),
    ("float-choices", CAT + "choices = [1.5, 2.5]\n", 2, "knobs.data_format.choices"),
    ("constraints-not-a-list", 'constraints = "inter_op_not_above_intra_op"\n' + VALID, 2, "constraints"),
    ("unknown-constraint", 'constraints = ["inter_op < intra_op"]\n' + VALID, 2, "constraints"),
    ("baseline-outside-range", VALID.replace('intra_op = "cores"', 'intra_op = "3*cores"'), 2, "baselines.b.intra_op"),
    ("baseline-not-a-choice", VALID.replace('= "NCHW"', '= "CHWN"'), 2, "baselines.b.data_format"),
    ("baseline-wrong-type", VALID.replace("inter_op = 1", 'inter_op = "1"'), 2, "baselines.b.inter_op"),
    ("baseline-missing-knob", VALID.replace("inter_op = 1\n", ""), 2, "baselines.b"),
    ("baseline-unknown-knob", VALID + "threads = 2\n", 2, "baselines.b.threads"),
    # A baseline's name is printed and stored as a candidate's name: letters, digits and . _ + - only.
    ("baseline-name-shell", VALID.replace("[baselines.b]", '[baselines."b; rm"]'), 2, "baselines.b; rm"),
    ("baseline-name-too-long", VALID.replace("[baselines.b]", f"[baselines.{'b' * 59}]"), 2, "baselines." + "b" * 59),
    # A choice that the knob's own validator refuses is caught on the knob, before any baseline uses it.
    ("env-choice-invalid", AFFINITY + '[baselines.b]\nKMP_AFFINITY = "$(x)"\n', 2, "knobs.KMP_AFFINITY"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "max_cores", "key"), [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, max_cores: int, key: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path, max_cores)
    # The CLI prints the message as its one error line, so it must be a single line ...
    assert "\n" not in message
    # ... that starts with the file and then the exact key at fault, so the user knows where to look.
    assert message.startswith(f"{path}: {key}: "), message


def test_inverted_bounds_name_the_core_count(tmp_path: Path) -> None:
    path = write(tmp_path, INT + 'low = 2\nhigh = "cores"\n')
    # Valid at 2 cores but not at 1: every core count up to max_cores is checked, and the message says which.
    assert "at 1 core" in load_error(path, 2) and "at 1 cores" not in load_error(path, 2)


def test_unknown_constraint_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'constraints = ["no_such_rule"]\n' + VALID)
    # The unknown name is quoted so a typo is easy to spot.
    assert "'no_such_rule'" in load_error(path)


def test_baseline_missing_knob_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("inter_op = 1\n", ""))
    # The message says which knob the baseline leaves out.
    assert "'inter_op'" in load_error(path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[knobs.intra_op\ntype = int\n")
    message = load_error(path)
    # A syntax error is reported as one line with the file; there is no key to name.
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid TOML")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = load_error(path)
    # A missing file is a SearchSpaceError naming the path, not a FileNotFoundError traceback.
    assert message == f"{path}: no such search-space file"


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'description = "caf\xe9"\n')
    message = load_error(path)
    # Bytes that are not UTF-8 are reported as an unreadable file on one line.
    assert "\n" not in message
    assert message.startswith(f"{path}: cannot read")


def test_baselines_not_a_table(tmp_path: Path) -> None:
    # `baselines = 5` should be refused as a SearchSpaceError naming "baselines", not a TypeError.
    assert ": baselines: must be a table" in load_error(
        write(tmp_path, "baselines = 5\n" + INT + "low = 0\nhigh = 1\n")
    )


def test_baseline_entry_not_a_table(tmp_path: Path) -> None:
    # `[baselines] b = 3` should be refused as a SearchSpaceError naming "baselines.b", not an AttributeError.
    assert "baselines.b" in load_error(write(tmp_path, INT + "low = 0\nhigh = 1\n[baselines]\nb = 3\n"))


def test_constraint_entry_not_a_string(tmp_path: Path) -> None:
    # `constraints = [[1]]` should be refused as a SearchSpaceError naming "constraints", not a TypeError.
    assert "constraints" in load_error(write(tmp_path, "constraints = [[1]]\n" + VALID))


def test_env_knob_choice_that_settings_refuse(tmp_path: Path) -> None:
    # A choice no Settings can hold should fail at load, not later as an InvalidSettings in the middle of a study.
    text = '[knobs.KMP_AFFINITY]\ntype = "categorical"\nchoices = ["compact", "; rm -rf /"]\n'
    assert "knobs.KMP_AFFINITY" in load_error(write(tmp_path, text))


def test_description_must_be_text(tmp_path: Path) -> None:
    # A TOML date is not text; it should be refused at load rather than make .hash raise TypeError later.
    assert "description" in load_error(write(tmp_path, "description = 1979-05-27\n" + VALID))


# -- hash ----------------------------------------------------------------------------------------------


def test_hash_ignores_comments_and_layout(tmp_path: Path) -> None:
    plain = load(str(write(tmp_path, VALID, "a.toml")), 2)
    noisy_text = "# a comment\n\n" + VALID.replace("low = 0", "low   =   0   # floor").replace("\n\n", "\n\n\n")
    noisy = load(str(write(tmp_path, noisy_text, "b.toml")), 2)
    # The hash is of the parsed content, so comments, spacing and the file name do not change it.
    assert noisy.hash == plain.hash
    # It is a short hex id.
    assert len(plain.hash) == 12
    assert int(plain.hash, 16) >= 0


def test_hash_changes_with_a_bound(tmp_path: Path) -> None:
    before = load(str(write(tmp_path, VALID, "a.toml")), 2)
    after = load(str(write(tmp_path, VALID.replace('high = "cores"', 'high = "2*cores"'), "b.toml")), 2)
    # A different bound is a different space; studies must not mix trials from the two.
    assert after.hash != before.hash


# -- constraints ---------------------------------------------------------------------------------------


@pytest.fixture
def constrained(tmp_path: Path) -> SearchSpace:
    return load(str(write(tmp_path, 'constraints = ["inter_op_not_above_intra_op"]\n' + VALID)), 4)


def test_constraint_is_listed(constrained: SearchSpace) -> None:
    # The declared names are exposed in order.
    assert constrained.constraints == ["inter_op_not_above_intra_op"]


def test_constraint_violated(constrained: SearchSpace) -> None:
    # More inter-op than intra-op threads breaks the constraint, and the broken one is named.
    assert constrained.violated({"intra_op": 1, "inter_op": 2}, 4) == "inter_op_not_above_intra_op"
    # 0 means about one thread per core, so inter_op=0 (4 at 4 cores) is above intra_op=2.
    assert constrained.violated({"intra_op": 2, "inter_op": 0}, 4) == "inter_op_not_above_intra_op"


def test_constraint_satisfied(constrained: SearchSpace) -> None:
    # Equal or fewer inter-op threads are fine, counting 0 as the core count on either side.
    assert constrained.violated({"intra_op": 2, "inter_op": 2}, 4) is None
    assert constrained.violated({"intra_op": 2, "inter_op": 1}, 4) is None
    assert constrained.violated({"intra_op": 0, "inter_op": 4}, 4) is None
    assert constrained.violated({"intra_op": 0, "inter_op": 0}, 4) is None


def test_omp_constraint(tmp_path: Path) -> None:
    text = (
        'constraints = ["omp_threads_match_intra_op"]\n'
        + '[knobs.intra_op]\ntype = "int"\nlow = 0\nhigh = "cores"\n'
        + '[knobs.OMP_NUM_THREADS]\ntype = "int"\nlow = 1\nhigh = "cores"\n'
    )
    space = load(str(write(tmp_path, text)), 4)
    # OMP_NUM_THREADS must equal the effective intra_op (0 counting as the core count) ...
    assert space.violated({"intra_op": 2, "OMP_NUM_THREADS": 2}, 4) is None
    assert space.violated({"intra_op": 0, "OMP_NUM_THREADS": 4}, 4) is None
    assert space.violated({"intra_op": 2, "OMP_NUM_THREADS": 3}, 4) == "omp_threads_match_intra_op"
    # ... and leaving it unset is always fine.
    assert space.violated({"intra_op": 2}, 4) is None


# -- suggest -------------------------------------------------------------------------------------------


def test_suggest_with_fixed_trial(tensorflow: SearchSpace) -> None:
    fixed = {
        "intra_op": 3,
        "inter_op": 1,
        "data_format": "NCHW",
        "onednn": True,
        "instances": 2,
        "allocator": "jemalloc",
        "precision": "fp32",
    }
    # Every knob is suggested by name, so a fixed trial gets back exactly its params.
    assert tensorflow.suggest(optuna.trial.FixedTrial(fixed), 2) == fixed


def test_suggest_in_memory_study_stays_in_space(tensorflow: SearchSpace) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    dists = tensorflow.distributions(2)
    for _ in range(10):
        trial = study.ask()
        params = tensorflow.suggest(trial, 2)
        study.tell(trial, 1.0)
        # Every suggested value lies inside its knob's distribution at this core count.
        assert set(params) == set(dists)
        assert all(dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in params.items())
    # The study records the space's own distributions, so Optuna's samplers see the declared space.
    assert study.trials[0].distributions == dists


def test_baseline_breaking_a_constraint_is_refused(tmp_path: Path) -> None:
    text = (
        'constraints = ["inter_op_not_above_intra_op"]\n'
        '[knobs.intra_op]\ntype = "int"\nlow = 1\nhigh = 4\n'
        '[knobs.inter_op]\ntype = "int"\nlow = 1\nhigh = 4\n'
        "[baselines.b]\nintra_op = 1\ninter_op = 3\n"
    )
    # A baseline the constraints forbid would be skipped on every run and never measured: refused at load.
    assert "baselines.b: breaks constraint inter_op_not_above_intra_op" in load_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ('[knobs.data_format]\ntype = "categorical"\nchoices = ["NHWC", "NCWH"]\n', "data_format"),
        ('[knobs.intra_op]\ntype = "int"\nlow = 0\nhigh = "cores*1000"\n', "intra_op"),
        ('[knobs.onednn]\ntype = "categorical"\nchoices = [true, "yes"]\n', "onednn"),
    ],
)
def test_every_choice_and_bound_is_checked_when_the_file_loads(tmp_path: Path, spec: str, names: str) -> None:
    path = write(tmp_path, spec)
    # A misspelt layout, a bound past what Settings accepts, a bad switch: refused at load, naming the knob,
    # before any trial could be stored with it.
    with pytest.raises(SearchSpaceError, match=f"knobs.{names}"):
        load(str(path), 8)


def test_the_readmes_example_space_loads_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Search spaces") :]
    start = section.index("```toml\n") + len("```toml\n")
    example = section[start : section.index("```", start)]
    path = tmp_path / "readme.toml"
    path.write_text(example, encoding="utf-8")
    space = load(str(path), 2)
    # The README's example is a space a user can copy: it loads, and its baseline resolves at 2 cores. (Before,
    # its `constraints` fell inside the last knob's table and the baseline set a knob it never declared.)
    assert sorted(space.distributions(2)) == ["data_format", "inter_op", "intra_op"]
    assert space.baselines(2) == {
        "tf-default": {"intra_op": 0, "inter_op": 0, "data_format": "NHWC"},
        "heuristic": {"intra_op": 2, "inter_op": 1, "data_format": "NCHW"},
    }
