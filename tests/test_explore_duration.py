"""data.explore_duration: temporally extended epsilon-greedy in meta-training's collection (real gymnasium tasks)."""

import numpy as np
import pytest
import torch
from conftest import SMALL_DATA, TINY, refused

from mamldqn_pl import MetaDQNDataModule
from mamldqn_pl.data import Collector, ReplayBuffers
from mamldqn_pl.data.collector import extended_epsilon_greedy
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import make_family


def play(rows: int, steps: int, epsilon: float, duration: int, counts=None, seed: int = 0):
    """Actions [steps, rows] of extended_epsilon_greedy on fixed Q-values whose greedy action is always 0, and
    each row's steps left in its run before each step (and after the last)."""
    generator = make_generator(seed)
    left, held = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
    q = torch.zeros(rows, 3)
    q[:, 0] = 1.0
    actions, lefts = [], []
    for _ in range(steps):
        lefts.append(left.copy())
        actions.append(extended_epsilon_greedy(q, epsilon, generator, left, held, duration, counts))
    return np.stack(actions), np.stack(lefts + [left.copy()])


def test_an_exploratory_action_is_held_for_up_to_the_duration_and_greedy_play_resumes_after():
    actions, left = play(rows=64, steps=400, epsilon=0.1, duration=6)
    inside = left[:-1] > 0  # a run in progress before the step: its action again, one step fewer left
    assert inside[1:].any() and (actions[1:][inside[1:]] == actions[:-1][inside[1:]]).all()
    assert (left[1:][inside] == left[:-1][inside] - 1).all()
    assert left.max() == 5  # durations 1..6: at most 5 steps left after a run's first
    assert (actions == 0).mean() > 0.5  # greedy most of the time, and again after each run
    assert ((left[:-1] == 1) & (left[1:] == 0)).any()
    plain_actions, plain_left = play(rows=64, steps=400, epsilon=0.1, duration=1)
    assert (plain_left == 0).all()
    assert (actions != 0).mean() > 2 * (plain_actions != 0).mean()  # runs make exploration last longer


def test_at_epsilon_1_every_step_explores_in_runs_and_at_0_none_does():
    actions, left = play(rows=32, steps=300, epsilon=1.0, duration=4)
    assert set(np.unique(actions)) == {0, 1, 2} and (left[:-1] > 0).mean() > 0.4
    actions, left = play(rows=8, steps=50, epsilon=0.0, duration=4)
    assert (actions == 0).all() and (left == 0).all()


def test_random_actions_stay_within_each_rows_valid_actions():
    """A mixed family's smaller action sets: a row with 2 valid actions never plays the third."""
    counts = torch.tensor([2, 3] * 16)
    actions, _ = play(rows=32, steps=200, epsilon=1.0, duration=5, counts=counts)
    assert actions[:, 0::2].max() == 1 and actions[:, 1::2].max() == 2


def acrobot_collector(duration: int) -> Collector:
    family = make_family(name="acrobot")
    tasks = family.sample(32, make_generator(1))
    env = family.batched(tasks, make_generator(2))
    return Collector(env, ReplayBuffers(32, 600, family.obs_dim), make_generator(3), explore_duration=duration)


def test_held_random_actions_swing_acrobot_up_where_per_step_random_play_does_not():
    """What the option is for: 500 steps of random play on 32 of the acrobot family's tasks end no episode (the
    links never swing above the bar) with a new action every step, and several with actions held for up to 8."""
    ended = {}
    for duration in (1, 8):
        collector = acrobot_collector(duration)
        collector.run(np.arange(32), lambda obs: torch.zeros(len(obs), 3), [1.0] * 500)
        ended[duration] = sum(r > -500 for r in collector.pop_finished_returns())
    assert ended[1] <= 1 and ended[8] >= 8


def test_a_new_task_starts_without_a_run_in_progress():
    collector = acrobot_collector(8)
    collector.run(np.arange(32), lambda obs: torch.zeros(len(obs), 3), [1.0] * 3)
    assert (collector.explore_left > 0).any()
    collector.restart(np.arange(16))
    assert (collector.explore_left[:16] == 0).all() and (collector.explore_left[16:] > 0).any()


def data(duration: int, collection: str = "current") -> MetaDQNDataModule:
    torch.manual_seed(0)
    dm = MetaDQNDataModule(**{**SMALL_DATA, "family": "acrobot", "explore_duration": duration,
                              "collection": collection})
    dm.attach_policy(lambda obs: torch.zeros(len(obs), 3), lambda: 0.5)
    dm.setup("fit")
    return dm


def test_the_runs_are_part_of_the_data_state_so_a_resume_collects_the_same_batches():
    dm = data(6)
    for _ in range(3):
        dm.next_batch()
    state = dm.state_dict()
    assert "explore" in state["ranks"][0]
    expected = [dm.next_batch() for _ in range(3)]
    resumed = data(6)
    resumed.load_state_dict(state)
    for a, b in zip(expected, [resumed.next_batch() for _ in range(3)]):
        assert torch.equal(a["support"]["actions"], b["support"]["actions"])
        assert torch.equal(a["query"]["obs"], b["query"]["obs"])
    assert "explore" not in data(1).state_dict()["ranks"][0]  # the default's checkpoints are as they were


def test_the_collection_process_explores_in_the_same_runs_as_ahead():
    """data.collection process keeps the runs in its own collector: its batches and data state equal ahead's."""
    batches, states = [], []
    for collection in ("ahead", "process"):
        dm = data(6, collection)
        batches.append([dm.next_batch()["query"]["actions"] for _ in range(4)])
        states.append(dm.state_dict()["ranks"][0]["explore"])
        dm.teardown("fit")
    assert all(torch.equal(a, b) for a, b in zip(*batches))
    assert all(torch.equal(a, b) for a, b in zip(*states))


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_bad_duration_is_refused_in_one_line(value, capsys, tmp_path):
    code, err = refused(["fit", *TINY, "--run_dir", str(tmp_path / "bad"), "--data.explore_duration", value], capsys)
    assert code != 0 and len(err) == 1 and "data.explore_duration" in err[0] and value in err[0], err
