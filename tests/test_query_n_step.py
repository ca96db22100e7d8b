"""data.query_n_step: the adapted slots' query rows carry n-step reward windows; every other row (theta's slots,
the support) is its one-step self, and its target is the one-step target bitwise. Real CartPole tasks."""

import pytest
import torch
from conftest import SMALL_DATA, TINY, refused
from test_nstep import expected_window, write_stream

from mamldqn_pl import MetaDQNDataModule
from mamldqn_pl.data import ReplayBuffers
from mamldqn_pl.meta import td_target, td_target_of


def test_one_step_rows_in_the_windowed_form_have_the_one_step_target_bitwise():
    buffers = ReplayBuffers(n_tasks=1, capacity=8, obs_dim=2)
    write_stream(buffers, [1.0, 2.0, 3.0, 0.5], [False, True, False, False], [False, True, False, False])
    batch = buffers.sequence()
    wide = ReplayBuffers.one_step_windows(batch, 5)
    assert wide["reward_window"][0].tolist() == [[r, 0, 0, 0, 0] for r in (1.0, 2.0, 3.0, 0.5)]
    assert wide["steps"][0].tolist() == [1, 1, 1, 1]
    next_q = torch.randn(1, 4, 2)
    assert torch.equal(td_target_of(wide, next_q, 0.99), td_target(batch["rewards"], batch["terminated"], next_q, 0.99))


def test_windowed_query_rows_follow_their_episode_and_the_rest_stay_one_step():
    # two tasks with the same stream: an episode ends at write 4 (terminated) and 9 (truncated)
    rewards = [float(w) for w in range(12)]
    ended = [w in (4, 9) for w in range(12)]
    terminated = [w == 4 for w in range(12)]
    buffers = ReplayBuffers(n_tasks=2, capacity=12, obs_dim=2)
    for task in (0, 1):
        for w in range(12):
            obs = torch.full((1, 2), float(w))
            buffers.add(torch.tensor([task]), obs, torch.tensor([0]), torch.tensor([rewards[w]]), obs + 0.5,
                        torch.tensor([terminated[w]]), torch.tensor([ended[w]]))
    tasks = torch.tensor([0, 1])
    support, query = buffers.sample_disjoint(tasks, 4, 8, torch.Generator().manual_seed(0),
                                             query_windows=(3, torch.tensor([True, False])))
    plain_support, plain_query = buffers.sample_disjoint(tasks, 4, 8, torch.Generator().manual_seed(0))
    present = set(range(12))
    for i, w in enumerate(int(x) for x in query["obs"][0, :, 0].tolist()):  # task 0: its episode's next rewards
        window, last, term = expected_window(w, 3, present, rewards, terminated, ended)
        assert query["reward_window"][0, i].tolist() == window and int(query["steps"][0, i]) == last - w + 1
        assert float(query["next_obs"][0, i, 0]) == last + 0.5 and bool(query["terminated"][0, i]) == term
    assert bool((query["steps"][0] > 1).any())
    # task 1 and both supports: the same transitions as without windows, one step each
    for key in plain_query:
        assert torch.equal(query[key][1], plain_query[key][1]) and torch.equal(support[key], plain_support[key])
    assert bool((query["steps"][1] == 1).all()) and bool((support["steps"] == 1).all())
    assert query["reward_window"][1, :, 1:].abs().sum() == 0 and support["reward_window"][..., 1:].abs().sum() == 0
    assert torch.equal(query["obs"][0], plain_query["obs"][0])  # the same draw: only the targets' data differ


def test_only_the_adapted_slots_queries_are_windowed_in_the_datamodule():
    dm = MetaDQNDataModule(**{**SMALL_DATA, "family": "cartpole", "flip": True, "collect_adapted": 0.5,
                              "collect_adapted_per": "task", "query_n_step": 4})
    dm.setup("fit")
    zeros = lambda obs: torch.zeros(len(obs), 2)  # noqa: E731
    dm.attach_policy(zeros, lambda: 1.0, adapted_q_values=lambda support, mask: zeros)
    windowed_rows = 0
    for _ in range(6):
        batch = dm.next_batch()
        adapted = batch["tasks"] < 4  # collect_adapted 0.5 of a pool of 8: slots 0-3
        steps = batch["query"]["steps"]
        assert bool((steps[~adapted] == 1).all()) and bool((batch["support"]["steps"] == 1).all())
        assert int(steps.max()) <= 4
        windowed_rows += int((steps[adapted] > 1).sum())
    assert windowed_rows > 0


@pytest.mark.parametrize("flags, message", [
    (["--data.query_n_step", "0"], "data.query_n_step: 0 must be an integer >= 1"),
    (["--data.query_n_step", "3", "--data.n_step", "3"], "needs data.n_step 1"),
    (["--data.query_n_step", "3", "--data.collect_adapted", "0"], "needs data.collect_adapted > 0"),
])
def test_bad_query_n_step_is_one_line_and_a_nonzero_exit(flags, message, tmp_path, capsys):
    # in this process: tests/test_cli.py runs one in a subprocess
    code, err = refused(["fit", *TINY, *flags, "--run_dir", str(tmp_path / "bad")], capsys)
    assert code == 2 and err[-1].startswith("mamldqn: error:") and message in err[-1], err[-1]
