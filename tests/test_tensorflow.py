"""Real TensorFlow in worker processes: the tiny model proves what the child really applied; one ResNet-50 burst."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import THREADS_SPACE
from tuner.errors import WorkerExited
from tuner.policy import MeasurementPolicy
from tuner.runner import SubprocessRunner, TrialSpec
from tuner.settings import Settings
from tuner.topology import physical_cores
from tuner.workload import Workload

pytestmark = pytest.mark.tensorflow
QUICK = MeasurementPolicy("quick", warmup=1, timed=3, timeout_s=300.0)
CORES = physical_cores()


def test_child_runs_with_requested_threads_and_core_set() -> None:
    cores = tuple(CORES[:2])
    spec = TrialSpec(
        Settings(intra_op=len(cores), inter_op=1, data_format="NHWC"), Workload("tiny", "train"), cores, QUICK
    )
    m = SubprocessRunner().run(spec)
    # TensorFlow itself reports the pools we asked for, and the process ran on exactly the requested CPUs.
    assert m.facts["intra_op"] == len(cores) and m.facts["inter_op"] == 1
    assert m.facts["cpus"] == list(cores)
    # Raw timed steps are kept, one per timed step of the policy, and the version is recorded.
    assert len(m.timed_seconds) == 3 and m.facts["framework_version"].startswith("2.")
    assert m.facts["threads"] >= 1 and isinstance(m.facts["onednn"], bool)
    # Keras ran in float32 from the run's own empty Keras folder, and the trial records it.
    assert m.facts["floatx"] == "float32" and m.facts["dtype_policy"] == "float32"


def test_a_keras_folder_planted_in_tmp_changes_nothing(tmp_path: Path) -> None:
    planted = Path("/tmp/tuner-keras-home")  # the folder every worker once shared: whoever made it first won
    planted.mkdir(exist_ok=True)
    (planted / "keras.json").write_text('{"floatx": "float16", "backend": "tensorflow"}')
    home = tmp_path / "home" / ".keras"
    home.mkdir(parents=True)
    (home / "keras.json").write_text('{"floatx": "float16", "backend": "tensorflow"}')
    try:
        runner = SubprocessRunner(parent_env={**os.environ, "HOME": str(tmp_path / "home")})
        m = runner.run(TrialSpec(Settings(1, 1), Workload("tiny", "infer"), tuple(CORES[:1]), QUICK))
    finally:
        (planted / "keras.json").unlink()
    # Neither a planted shared folder nor the user's ~/.keras switches the model to float16.
    assert m.facts["floatx"] == "float32"


def test_stray_shell_variables_do_not_reach_the_child() -> None:
    cores = tuple(CORES[:1])
    workload = Workload("tiny", "infer")
    clean = SubprocessRunner(parent_env={"PATH": os.environ["PATH"]})
    stray = SubprocessRunner(parent_env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "OMP_NUM_THREADS": "7"})
    base = clean.run(TrialSpec(Settings(1, 1), workload, cores, QUICK))
    leaked = stray.run(TrialSpec(Settings(1, 1), workload, cores, QUICK))
    off = clean.run(TrialSpec(Settings(1, 1, env_knobs=(("onednn", False),)), workload, cores, QUICK))
    # The user's TF_ENABLE_ONEDNN_OPTS=0 is dropped: oneDNN is as in a clean environment, and never recorded.
    assert leaked.facts["onednn"] == base.facts["onednn"]
    assert "OMP_NUM_THREADS" not in leaked.facts["child_env"]
    assert "TF_ENABLE_ONEDNN_OPTS" not in leaked.facts["child_env"]
    # The same variable set as a knob does reach the child, and TensorFlow reports oneDNN off.
    assert off.facts["child_env"]["TF_ENABLE_ONEDNN_OPTS"] == "0" and off.facts["onednn"] is False


def test_both_onednn_paths_run_on_any_cpu() -> None:
    """Forced off, oneDNN is off whatever the CPU (the AVX2 machine's default); forced on, it is on (the
    AVX-512 machine's default). So both paths of the stock space run here, whichever CPU CI lands on."""
    cores = tuple(CORES[:1])
    workload = Workload("tiny", "infer")
    runner = SubprocessRunner()
    with pytest.raises(WorkerExited) as failed:
        runner.run(TrialSpec(Settings(1, 1, "NCHW", env_knobs=(("onednn", False),)), workload, cores, QUICK))
    # Plain Eigen has no NCHW convolution: the worker fails, and its one line says why.
    assert "NHWC tensor format on the CPU" in str(failed.value)
    on = runner.run(TrialSpec(Settings(1, 1, "NCHW", env_knobs=(("onednn", True),)), workload, cores, QUICK))
    # With oneDNN forced on, NCHW runs, and TensorFlow reports oneDNN on.
    assert on.facts["onednn"] is True and on.facts["child_env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"


def _count(db: Path, state: TrialState) -> int:
    from tuner.storage import open_storage

    storage = open_storage(f"sqlite:///{db}", create=False)  # retries while the tool is creating the schema
    return sum(
        len(storage.get_all_trials(s._study_id, deepcopy=False, states=(state,))) for s in storage.get_all_studies()
    )


def test_signals_mid_study_keep_finished_trials_and_the_same_command_resumes(tmp_path: Path) -> None:
    """Ctrl-C, then SIGTERM on the resumed run, each landing mid-trial; then the same command finishes. One
    study for both signals: they take the same path. Search only (--no-confirm): the signals land in the
    search, and confirmation's nine real worker runs (3 settings x 3 rounds) would double the test's time;
    a resume that ends in a verdict is test_cli's (fake workers, signals at random moments)."""
    db = tmp_path / "t.db"
    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--model", "tiny", "--cores", "1", "--mode", "infer",
           "--trials", "4", "--no-confirm", "--space", THREADS_SPACE, "--storage", f"sqlite:///{db}"]  # fmt: skip
    finished = 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (db.exists() and _count(db, TrialState.COMPLETE) > finished):
            time.sleep(0.5)
        time.sleep(1.0)  # land mid-trial: a worker is starting or measuring now
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
        before, finished = finished, _count(db, TrialState.COMPLETE)
        # The run stops promptly with exit 130, says how to resume, leaves nothing RUNNING, and every trial
        # finished before (this run's and the interrupted run's) is still there.
        assert process.returncode == 130, (sig, err)
        assert "run the same command to resume" in err
        assert _count(db, TrialState.RUNNING) == 0 and finished > before
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # The same command resumes: every finished trial is still there and the study reaches its count.
    assert again.returncode == 0, again.stderr
    assert _count(db, TrialState.COMPLETE) >= max(4, finished)
    assert "importances:" in again.stderr  # what the search-only study prints once its search is over


@pytest.mark.resnet50
def test_one_real_resnet50_inference_burst() -> None:
    cores = tuple(CORES)
    policy = MeasurementPolicy("resnet-test", warmup=1, timed=3, timeout_s=600.0)
    m = SubprocessRunner().run(TrialSpec(Settings(), Workload("resnet50", "infer", 32), cores, policy))
    # A real Keras ResNet-50 ran three timed batches of 32 on all cores; the trace is timed apart.
    assert len(m.timed_seconds) == 3 and m.facts["first_step_seconds"] > 0
    assert m.facts["cpus"] == list(cores)
    # Sanity bounds only (the machine is shared): a 224x224 ResNet-50 batch takes between 0.05 s and 60 s.
    assert 0.05 < m.median_step_seconds < 60


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_multi_replica_path_on_logical_cpu_devices(tmp_path: Path, mode: str) -> None:
    """The GPU code path (MirroredStrategy, one replica per device, batch per replica) on the CPU split into
    two logical devices, through the real CLI: what `tuner benchmark --device gpu` runs, minus the GPUs."""
    from tuner import benchmark
    from tuner.cli import main
    from tuner.storage import open_storage

    url = f"sqlite:///{tmp_path / 'b.db'}"
    argv = ["benchmark", "--model", "tiny", "--cores", str(min(2, len(CORES))), "--mode", mode, "--replicas", "2"]
    argv += ["--batch-size", "8", "--warmup", "1", "--timed", "3", "--settings", "tf-default", "--storage", url]
    assert main(argv) == 0
    (record,) = benchmark.records(open_storage(url, create=False))
    # Two replicas of 8: the global batch is 16 and the rate counts all 16 images of each step.
    assert record["replicas"] == 2 and record["global_batch"] == 16 and record["batch_size"] == 8
    rates = record["round_rates"][0]
    assert len(rates) == 3 and record["images_per_sec"] > 0
    # The strategy really ran two replicas in sync (read back from TensorFlow, not echoed).
    assert record["replicas_in_sync"] == 2


def test_flops_and_matmul_tasks_measure_from_the_graph_and_the_hardware() -> None:
    from tuner.runner import TaskSpec

    runner = SubprocessRunner()
    flops = runner.compute(TaskSpec("flops", Settings(), tuple(CORES[:1]), model="tiny"))["flops_per_image"]
    # Counted from the graphs: a training step (forward, two gradient passes) costs two to four forwards.
    assert flops["infer"] > 1e5 and 2 * flops["infer"] < flops["train"] < 4 * flops["infer"]
    peak = runner.compute(TaskSpec("matmul", Settings(intra_op=1, inter_op=1), tuple(CORES[:1])))
    # Five timed 4096x4096 matmuls on one core, each a positive GFLOP/s figure below 10 TFLOP/s.
    assert len(peak["gflops"]) == 5 and all(0 < g < 10_000 for g in peak["gflops"]) and peak["cpus"] == CORES[:1]


def test_benchmark_on_gpu_without_one_skips_with_the_reason(tmp_path: Path) -> None:
    """The real command with the project's own TensorFlow, which sees no GPU (tensorflow-cpu has no CUDA): the
    worker's read-back of the GPU stack runs, and finds none. (The default GPU runtime, tensorflow-gpu, is
    refused before any worker where no NVIDIA driver is loaded: tests/test_gpu.py.)"""
    url = f"sqlite:///{tmp_path / 'g.db'}"
    argv = ["benchmark", "--device", "gpu", "--runtime", "tensorflow", "--gpu-counts", "1,2", "--mode", "train",
            "--cores", "1", "--storage", url]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "tuner.cli", *argv], capture_output=True, text=True, timeout=300)
    # Exit 0, one line per GPU count saying why it was skipped.
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "skipped" in line]
    assert len(lines) == 2 and all("sees 0 GPUs" in line for line in lines)


THREADS_PROBE = """
import collections, os
import tensorflow as tf
x = tf.random.uniform((256, 256))
for _ in range(3):
    tf.linalg.matmul(x, x).numpy()
names = collections.Counter(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
print(names["tf_Compute"], names["python"])
"""


def test_recommended_shell_exports_make_tensorflow_use_the_threads(tmp_path: Path) -> None:
    """Paste `tuner recommend --format shell` into a shell: a TensorFlow program then runs the recommended
    pools. TensorFlow names its inter-op threads tf_Compute; intra-op (Eigen) threads keep the name python."""
    from tests.helpers import make_config
    from tuner.replay import ReplayRunner
    from tuner.storage import open_storage
    from tuner.study import StudyRun

    def winner(spec: TrialSpec) -> bool:
        return (spec.settings.intra_op, spec.settings.inter_op, spec.settings.data_format) == (3, 2, "NHWC")

    url = f"sqlite:///{tmp_path / 'r.db'}"
    # Enough trials to measure every distinct setting of the 2-core space (60 here): the winner is found.
    config = make_config(cores=2, trials=70, candidates=1, workload=Workload("tiny", "infer", 32))
    fake = ReplayRunner.from_rates(lambda spec: 1300.0 if winner(spec) else 1000.0, noise=0.01)
    StudyRun(open_storage(url), config, fake).run()
    argv = ["recommend", "--cores", "2", "--mode", "infer", "--model", "tiny", "--format", "shell", "--storage", url]
    shell = subprocess.run([sys.executable, "-m", "tuner.cli", *argv], capture_output=True, text=True, timeout=120)
    assert shell.returncode == 0, shell.stderr
    (tmp_path / "probe.py").write_text(THREADS_PROBE)
    clean = {"PATH": os.environ["PATH"], "TF_CPP_MIN_LOG_LEVEL": "3"}

    def threads(extra: str = "") -> tuple[int, int]:
        script = f"{shell.stdout}\n{extra}\nexec {sys.executable} {tmp_path / 'probe.py'}\n"
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=clean)
        inter, python = (int(v) for v in done.stdout.split())
        return inter, python

    inter, python = threads()
    _, python_one = threads("export TF_NUM_INTRAOP_THREADS=1")
    # Two inter-op threads; and the intra-op pool is three threads, two more than with an intra-op pool of one
    # (TensorFlow keeps a few other threads named python, whose number depends on the CPUs).
    assert inter == 2 and python - python_one == 2
