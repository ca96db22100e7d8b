"""A mixed-family checkpoint (the seed's CartPole + MountainCar example) put to work on gymnasium's own CartPole-v1
and MountainCar-v0: the member's observations padded as in training, only its actions played, the adapted agent
acting, saving and exporting on the member's own observations."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ROOT, mamldqn, refused

from mamldqn_pl.metainit import Agent, MemberQNetwork, MetaInit
from mamldqn_pl.tasks import make_family
from mamldqn_pl.tasks.mixed import MemberObservation

pytestmark = pytest.mark.xdist_group("test_adapt_mixed")

MEMBERS = [{"family": "cartpole", "flip": False}, {"family": "mountaincar"}]
TINY_MIXED = ["--config", str(ROOT / "configs/seed_cartpole_mountaincar_dynamics.yaml"),
              "--trainer.enable_progress_bar", "false", "--data.pool_size", "6", "--data.tasks_per_batch", "4",
              "--data.support_size", "16", "--data.query_size", "16", "--data.learning_starts", "40",
              "--data.adapt_budget", "20", "--data.buffer_capacity", "100", "--data.n_val_tasks", "2",
              "--data.n_test_tasks", "2", "--model.hidden", "[16]", "--meta_val.every_n_steps", "10",
              "--meta_val.episodes", "1", "--trainer.max_steps", "10"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A short real run of configs/seed_cartpole_mountaincar_dynamics.yaml (member feature on)."""
    run = tmp_path_factory.mktemp("adapt_mixed") / "run"
    out = mamldqn("fit", *TINY_MIXED, "--run_dir", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("feature", [False, True])
def test_the_member_view_pads_as_the_mixed_env_does_and_the_torch_view_agrees(feature):
    """MixedEnv pads with the member's view; the wrapper of a plain env and the agent's torch module give the
    same padded observation and the member's slice of the network's Q-values."""
    family = make_family("mixed", members=MEMBERS, env_kwargs={"member_feature": feature})
    env = family.batched(family.sample(4, torch.Generator().manual_seed(0), balanced=True),
                         torch.Generator().manual_seed(1))
    net = torch.nn.Sequential(torch.nn.Linear(family.obs_dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net.obs_dim = family.obs_dim
    for j, member in enumerate(family.members):
        view = family.view(j)
        rows = np.flatnonzero(env.owner == j)
        raw = env.envs[j].obs[rows]
        assert np.array_equal(env.obs[rows], view.obs(raw))
        assert view.obs_dim == family.obs_dim == 4 + 2 * feature and view.n_actions == member.n_actions
        plain = MemberObservation(gym.make(member.env_id), view)
        obs, _ = plain.reset(seed=3)
        own, _ = gym.make(member.env_id).reset(seed=3)
        assert plain.observation_space.shape == (view.obs_dim,)
        assert np.array_equal(obs, view.obs(own[None].astype(np.float32))[0])
        q = MemberQNetwork(net, view)(torch.from_numpy(raw))
        assert torch.allclose(q, net(torch.from_numpy(view.obs(raw)))[:, : member.n_actions])
        assert q.shape == (len(rows), member.n_actions)


@pytest.mark.parametrize("env_id, member, n_actions", [("MountainCar-v0", None, 3), ("CartPole-v1", "cartpole", 2)])
def test_a_mixed_checkpoint_adapts_on_a_members_own_gymnasium_env(ckpt, tmp_path, env_id, member, n_actions):
    """Support played at random (epsilon 1): gymnasium's CartPole refuses an action 2, so the member's action mask
    is what lets this run at all. The initialisation is untouched; ANIL moves the head only; the agent acts on raw
    observations, and its saved and exported forms give the same Q-values."""
    init = MetaInit.load(ckpt)
    before = {k: v.clone() for k, v in init.net.state_dict().items()}
    agent = init.adapt(gym.make(env_id), budget=60, k=2, epsilon=1.0, episodes=1, member=member)
    assert all(torch.equal(v, init.net.state_dict()[k]) for k, v in before.items())
    assert agent.report["member"]["family"] == env_id.split("-")[0].lower()
    assert [r["k"] for r in agent.report["returns"]] == [0, 1, 2] and agent.report["support_size"] == 60
    assert torch.equal(agent.net.body[1].weight, init.net.body[1].weight)
    assert not torch.equal(agent.net.head.weight, init.net.head.weight)
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    assert agent.q_values(obs).shape == (n_actions,) and 0 <= agent.act(obs) < n_actions
    batch = np.stack([obs, env.step(0)[0]])
    q = agent.q_values(batch)
    agent.save(tmp_path / "adapted.pt")
    agent.export(tmp_path / "policy.pt2")
    assert torch.equal(Agent.load(tmp_path / "adapted.pt").q_values(batch), q)
    program = torch.export.load(str(tmp_path / "policy.pt2")).module()
    assert torch.allclose(program(torch.as_tensor(batch, dtype=torch.float32)), q)
    assert init.policy(member, env_id)(torch.as_tensor(batch, dtype=torch.float32)).shape == (2, n_actions)


def test_the_cli_adapts_a_mixed_checkpoint_to_a_member_task(ckpt, tmp_path):
    from mamldqn_pl.adapt import main

    main(["--ckpt_path", str(ckpt), "--task", '{"length": 0.8}', "--member", "cartpole", "--budget", "40", "--k",
          "1", "--episodes", "1", "--video", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "before.gif").is_file() and (tmp_path / "out" / "after.gif").is_file()
    agent = Agent.load(tmp_path / "out" / "adapted.pt")
    assert set(agent.report["video"]) == {"before.gif", "after.gif"}
    assert agent.member is not None and agent.member.name == "cartpole" and agent.report["member"]["index"] == 0
    assert agent.q_values(np.zeros(4, dtype=np.float32)).shape == (2,)


BAD_MEMBER = [
    (["--env_id", "Acrobot-v1"], "--member: a mixed-family checkpoint needs the member the task belongs to "
     "(Acrobot-v1 is not the env of exactly one member); allowed: 0 (cartpole), 1 (mountaincar)"),
    (["--task", "{}"], "--member: a mixed-family checkpoint needs the member the task belongs to; allowed"),
    (["--env_id", "CartPole-v1", "--member", "pendulum"], "--member: 'pendulum' names no member; allowed"),
    (["--env_id", "CartPole-v1", "--member", "2"], "--member: '2'; allowed: 0 (cartpole), 1 (mountaincar)"),
    (["--env_id", "CartPole-v1", "--member", "mountaincar"],
     "observation space of shape (4,) does not fit the checkpoint's member 1 (mountaincar) (obs_dim 2)"),
    (["--task", '{"pole": 1}', "--member", "0"], "unknown task parameter 'pole'"),
]


@pytest.mark.parametrize("args, needle", BAD_MEMBER)
def test_a_bad_member_is_refused_in_one_line(ckpt, tmp_path, args, needle, capsys):
    code, lines = refused(["adapt", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_the_mixed_demo_benchmark_writes_every_game_k_and_seed(ckpt, tmp_path):
    """benchmarks/adapt_mixed_demo.py's smoke version: both games, every K, the member found by the env's id."""
    import csv
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adapt_mixed_demo

    adapt_mixed_demo.main(["--ckpts", str(ckpt), "--k", "1", "--budget", "20", "--seeds", "0", "1", "--out",
                           str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "adapt_mixed_demo.csv").open()))
    assert sorted({(r["game"], r["member"]) for r in rows}) == [("CartPole-v1", "cartpole"),
                                                                ("MountainCar-v0", "mountaincar")]
    assert len(rows) == 2 * 2 * 2 and {r["k"] for r in rows} == {"0", "1"}
    assert all(-200 <= float(r["return"]) <= 500 for r in rows)
    assert (tmp_path / "adapt_mixed_demo.png").exists() and "MountainCar-v0, training seed 0" in (
        tmp_path / "adapt_mixed_demo.md").read_text()


def test_the_readme_mixed_api_example_runs_as_written(ckpt, tmp_path):
    import subprocess
    import sys

    blocks = (ROOT / "README.md").read_text().split("```python\n")
    block = next(b.split("```", 1)[0] for b in blocks[1:] if "seed_cartpole_mountaincar_dynamics" in b)
    code = block.replace("lightning_logs/seed_cartpole_mountaincar_dynamics/checkpoints/best.ckpt", str(ckpt))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "{'index': 1, 'family': 'mountaincar'}" in out.stdout
