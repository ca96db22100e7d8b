"""data.collection (issue 13): "ahead" collects meta-step t+1's batch with theta_t; "process" computes the same
batches in a forked process while step t trains. Real Nav2D/CartPole tasks throughout."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import RESUME_ARGS, ROOT, SMALL_DATA, TINY, mamldqn
from test_resume import assert_bitwise_equal, params_of

from mamldqn_pl import MetaDQNDataModule
from mamldqn_pl.data.ahead import CollectionProcess

# one worker makes this module's shared run once (`make test`: pytest-xdist, --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_collection")

N_ACTIONS = 9  # nav2d with 8 directions: stay + 8 moves, so a policy can spell the step it acts for


def assert_same(a, b) -> None:
    """Nested dicts/lists of tensors and plain values, equal bitwise."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def stepped_data(collection: str, steps: int, fail_at: int | None = None) -> tuple[list[dict], dict]:
    """Batches and the final data state of a policy that always takes action `phase` (the trainer's step
    count, bumped after each batch as a meta-update would change theta), with no exploration."""
    torch.manual_seed(0)
    dm = MetaDQNDataModule(**{**SMALL_DATA, "family": "nav2d", "env_kwargs": {"directions": 8},
                              "epsilon_adapt": 0.0, "collection": collection})
    phase = torch.zeros(())

    def q_values(obs: torch.Tensor) -> torch.Tensor:
        if fail_at is not None and int(phase) == fail_at:
            raise ValueError(f"policy failure at phase {int(phase)}")
        return torch.nn.functional.one_hot(phase.long().expand(len(obs)), N_ACTIONS).float()

    dm.attach_policy(q_values, lambda: 0.0, policy_tensors=lambda: {"phase": phase})
    dm.setup("fit")
    batches = []
    for _ in range(steps):
        batches.append(dm.next_batch())
        phase += 1
    state = dm.state_dict()["ranks"][0]
    dm.teardown("fit")
    return batches, state


def test_ahead_collects_each_batch_with_the_previous_steps_policy_and_process_equals_it_bitwise():
    _, current = stepped_data("current", 6)
    _, ahead = stepped_data("ahead", 6)
    _, process = stepped_data("process", 6)
    # the same slots and write order in every mode (collection counts do not depend on the policy): a transition
    # of batch b acts with phase b when collected right before its step, b - 1 when collected a step ahead
    acted_now, acted_ahead = current["buffers"]["actions"], ahead["buffers"]["actions"]
    written = current["buffers"]["stamp"] >= 0  # ahead wrote these and batch 6's transitions too
    assert (ahead["buffers"]["stamp"][written] == current["buffers"]["stamp"][written]).all()
    assert torch.equal(acted_ahead[written], (acted_now[written] - 1).clamp(min=0))
    assert int(acted_now.max()) == 5 and int(acted_ahead.max()) == 5  # ahead also holds batch 6, acted at phase 5
    assert "pending" not in current and int(ahead["batches"]) == int(current["batches"]) + 1
    assert_same(ahead, process)  # pool, buffers, envs, RNG streams and the batch ahead


def test_process_batches_equal_ahead_batches_and_the_process_hands_its_state_back():
    ahead, _ = stepped_data("ahead", 5)
    process, state = stepped_data("process", 5)
    assert_same(ahead, process)
    assert "pending" in state


def test_a_policy_failure_in_the_collection_process_is_raised_in_the_trainer():
    with pytest.raises(RuntimeError, match="policy failure at phase 2"):
        stepped_data("process", 5, fail_at=2)


def test_the_collection_process_exits_when_the_trainer_dies():
    dm = MetaDQNDataModule(**SMALL_DATA, collection="process")
    dm.attach_policy(lambda obs: torch.zeros(len(obs), 2), lambda: 1.0, policy_tensors=dict)
    dm.setup("fit")
    process = CollectionProcess(dm, dm._policy_tensors())
    assert process.process.is_alive()
    process.conn.close()  # what the trainer's death does to the pipe
    process.process.join(timeout=10)
    assert not process.process.is_alive() and process.process.exitcode == 0


# greedy collection and a large meta-lr; the CPU also on a GPU machine (the collection process is CPU-only)
SENSITIVE = ["--model.epsilon_start", "0.0", "--model.epsilon_end", "0.0", "--model.meta_lr", "0.05",
             "--trainer.accelerator", "cpu"]


@pytest.fixture(scope="module")
def ahead_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("collection") / "ahead"
    out = mamldqn("fit", *RESUME_ARGS, *SENSITIVE, "--trainer.max_steps", "20", "--data.collection", "ahead",
                  "--run_dir", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    return run


def test_a_fit_with_the_collection_process_equals_ahead_bitwise_and_differs_from_current(ahead_run, tmp_path):
    """Greedy collection and a large meta-lr, so that a one-step lag changes actions within 20 steps."""
    for mode in ("process", "current"):
        out = mamldqn("fit", *RESUME_ARGS, *SENSITIVE, "--trainer.max_steps", "20", "--data.collection", mode,
                      "--run_dir", str(tmp_path / mode))
        assert out.returncode == 0, out.stderr[-3000:]
    ahead = params_of(ahead_run / "checkpoints/last.ckpt")
    assert_bitwise_equal(ahead, params_of(tmp_path / "process/checkpoints/last.ckpt"))
    current = params_of(tmp_path / "current/checkpoints/last.ckpt")
    assert not torch.equal(ahead["net.head.weight"], current["net.head.weight"])


def test_a_run_with_the_collection_process_stopped_and_resumed_equals_an_uninterrupted_one(ahead_run, tmp_path):
    run = tmp_path / "stopped"
    args = [*RESUME_ARGS, *SENSITIVE, "--data.collection", "process", "--run_dir", str(run)]
    first = mamldqn("fit", *args, "--trainer.max_steps", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    saved = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["MetaDQNDataModule"]["ranks"][0]
    assert "pending" in saved  # step 11's batch, collected ahead with step 10's weights
    second = mamldqn("fit", *args, "--trainer.max_steps", "20", "--ckpt_path", str(run / "checkpoints/last.ckpt"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert_bitwise_equal(params_of(ahead_run / "checkpoints/last.ckpt"), params_of(run / "checkpoints/last.ckpt"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_trainer_and_its_collection_process(tmp_path, sig):
    """Lightning's own handlers are inherited by the fork; the process must not outlive the trainer."""
    run = tmp_path / "signalled"
    # Python's own Ctrl-C handler even where this test runs with SIGINT ignored (a background job), in a session
    # of its own; faulthandler, to show where it hangs if it ever does
    cli = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from mamldqn_pl.cli import main; main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", cli, "fit", *TINY, "--data.collection",
                             "process", "--trainer.accelerator", "cpu", "--trainer.max_steps", "100000",
                             "--run_dir", str(run)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "stderr.txt", "w"), start_new_session=True)
    deadline = time.time() + 120
    while not (run / "checkpoints/last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert (run / "checkpoints/last.ckpt").exists()
    os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole group; SIGTERM here too
    try:
        proc.wait(timeout=60)  # Lightning exits 1 on Ctrl-C; on SIGTERM it may stop as at max_steps, 0
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
        proc.wait(timeout=30)
        pytest.fail(f"no exit 60 s after the signal:\n{(tmp_path / 'stderr.txt').read_text()[-5000:]}")
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout
    assert left == "", f"processes left: {left}"


def test_a_killed_collection_process_is_reported_with_its_exit_code():
    dm = MetaDQNDataModule(**SMALL_DATA, collection="process")
    dm.attach_policy(lambda obs: torch.zeros(len(obs), 2), lambda: 1.0, policy_tensors=dict)
    dm.setup("fit")
    dm.next_batch()  # the first batch here, the second one in flight in the process
    os.kill(dm._process.process.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"collection process \(pid \d+\) died; exit code -9"):
        dm.next_batch()
    dm.teardown("fit")  # nothing to hand back from a dead process; no hang
