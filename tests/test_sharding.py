"""Data parallelism over 4 CPU devices gives one device's training, and bad splits are refused."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def environment(devices):
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]),
    )


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
    env = environment(4)
    script, out_dir = HERE / "multi_device_run.py", tmp_path_factory.mktemp("run")
    done = subprocess.run(
        [sys.executable, str(script), str(out_dir)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-2]), lines[-1]


def test_four_devices_train_like_one(four_device_run):
    result, _ = four_device_run
    assert result["devices"] == 4
    assert result["state_devices"] == [4]  # the state really lives on all four
    assert result["all_reduces"] > 0  # and the step is split: gradients and statistics summed
    for one, four in zip(result["one"], result["four"], strict=True):
        # Global-batch BatchNorm and gradients: the same numbers up to summation order.
        for key in ("train_loss", "val_loss", "val_acc"):
            assert four[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
    assert result["max_param_difference"] < 1e-4
    assert result["one"][-1]["train_loss"] < 0.8 * result["one"][0]["train_loss"]


def test_an_nnx_model_trains_on_four_devices_like_on_one(four_device_run):
    result, _ = four_device_run
    assert result["nnx_state_devices"] == [4]
    for one, four in zip(result["nnx_one"], result["nnx_four"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert four[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
    assert result["nnx_model_matches_the_state"]


def test_a_run_on_four_devices_resumes_exactly(four_device_run):
    result, _ = four_device_run
    assert len(result["resumed"]) == 3
    for key in ("train_loss", "val_loss", "val_acc"):
        assert result["resumed"][-1][key] == pytest.approx(result["four"][-1][key], rel=1e-5, abs=1e-6)


def test_no_compilation_after_the_first_epoch_on_four_devices(four_device_run):
    result, _ = four_device_run
    assert result["compiles_per_epoch"][0] > 0
    assert result["compiles_per_epoch"][1:] == [0, 0]


def test_a_batch_that_does_not_split_over_the_devices_is_refused(four_device_run):
    _, error = four_device_run
    assert error.startswith("error: batch_size 30 does not split evenly over 4 devices: use a multiple of 4")


def test_two_processes_train_like_one_device(four_device_run, tmp_path):
    """Two processes of 2 devices each, joined by jax.distributed as hosts would be; one of them
    signalled mid-run, and the run resumed: the numbers are still one device's."""
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    processes = [
        subprocess.Popen(
            [sys.executable, str(HERE / "multi_process_run.py"), str(i), str(port), str(tmp_path / "run")],
            env=environment(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [r["process"] for r in results] == [0, 1] and {r["devices"] for r in results} == {4}
    # Only process 0 was signalled; both stopped at its next plot point, the end of epoch 2.
    stopped = f"interrupted after epoch 2: checkpoint saved in {tmp_path / 'run' / 'checkpoints' / '16'}"
    assert [r["stopped"] for r in results] == [stopped, stopped]
    assert "SIGTERM: stopping at the next plot point, as every process will, and saving" in outputs[0][1]
    one_device = four_device_run[0]["one"]
    for result in results:
        for mine, reference in zip(result["history"], one_device, strict=True):
            for key in ("train_loss", "val_loss", "val_acc"):
                assert mine[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-5), key
