"""`mamldqn adapt` and the MetaInit/Agent API on real gymnasium envs, the exported policy in a Python without
this package, and the CLI's rough edges around checkpoints (issue 12)."""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, mamldqn, refused

from mamldqn_pl.adapt import env_maker
from mamldqn_pl.metainit import Agent, MetaInit
from mamldqn_pl.tasks.family import ReverseActions

# one worker makes this module's shared run once (`make test`: pytest-xdist, --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_adapt")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A short real run whose max_steps (25) is not a multiple of the validation interval (10)."""
    run = tmp_path_factory.mktemp("adapt") / "run"
    out = mamldqn("fit", *TINY, "--trainer.max_steps", "25", "--run_dir", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    return run / "checkpoints" / "last.ckpt"


def test_any_max_steps_ends_evaluated_and_checkpointed(ckpt):
    assert torch.load(ckpt, weights_only=True)["global_step"] == 25
    best = torch.load(ckpt.parent / "best.ckpt", weights_only=True)
    assert best["global_step"] in (10, 20, 25)
    history = torch.load(ckpt, weights_only=True)["callbacks"]["MetaTestEvaluation"]["history"]
    assert [h["step"] for h in history] == [10, 20, 25]


@pytest.mark.parametrize("flip", [False, True])
def test_adapt_on_gymnasium_cartpole_writes_the_agent_the_policy_and_the_report(ckpt, tmp_path, flip):
    out_dir = tmp_path / "out"
    args = ["adapt", "--ckpt_path", str(ckpt), "--env_id", "CartPole-v1", "--env_attrs", '{"length": 0.7}',
            "--budget", "60", "--k", "3", "--episodes", "2", "--out", str(out_dir)] + (["--flip"] if flip else [])
    out = mamldqn(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((out_dir / "adapt.json").read_text())
    assert [r["k"] for r in report["returns"]] == [0, 1, 2, 3]
    assert all(r["return"] >= 1 and r["env_steps"] == 60 for r in report["returns"])
    assert report["support_size"] == 60 and report["budget"] == 60 and report["k"] == 3
    assert report["algorithm"] == "anil" and report["checkpoint"] == str(ckpt)
    agent = Agent.load(out_dir / "adapted.pt")
    init = MetaInit.load(ckpt)
    assert torch.equal(agent.net.body[1].weight, init.net.body[1].weight)  # ANIL: only the head adapts
    assert not torch.equal(agent.net.head.weight, init.net.head.weight)
    assert "| 1 | 60 | 3 |" in out.stdout


def test_attributes_and_flip_reach_the_env_and_cartpole_derives_its_constants():
    env = env_maker("CartPole-v1", {}, {"length": 0.7, "masspole": 0.2}, True)(None)
    assert isinstance(env, ReverseActions)
    core = env.unwrapped
    assert core.length == 0.7 and core.masspole == 0.2
    assert core.polemass_length == pytest.approx(0.14) and core.total_mass == pytest.approx(1.2)
    plain = env_maker("CartPole-v1", {}, {}, False)(None)
    assert not isinstance(plain, ReverseActions) and plain.unwrapped.length == 0.5


def test_api_adapts_online_and_never_touches_the_initialisation(ckpt, tmp_path):
    init = MetaInit.load(ckpt)
    before = {k: v.clone() for k, v in init.model.state_dict().items()}
    agent = init.adapt(gym.make("CartPole-v1"), budget=30, k=2, rounds=2, episodes=1)
    for k, v in init.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    rows = agent.report["returns"]
    assert [(r["round"], r["k"], r["env_steps"]) for r in rows] == [(r, k, 30 * r) for r in (1, 2) for k in (0, 1, 2)]
    assert agent.report["support_size"] == 60
    obs, _ = gym.make("CartPole-v1").reset(seed=0)
    assert agent.act(obs) in (0, 1)
    assert agent.act(np.stack([obs, obs])).shape == (2,)
    agent.save(tmp_path / "a.pt")
    again = Agent.load(tmp_path / "a.pt")
    assert torch.equal(again.q_values(obs), agent.q_values(obs)) and again.report == agent.report


def test_exported_policy_runs_in_a_python_without_the_package(ckpt, tmp_path):
    agent = MetaInit.load(ckpt).adapt(gym.make("CartPole-v1"), budget=30, k=2, episodes=1)
    agent.export(tmp_path / "policy.pt2")
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    script = (
        "import sys\n"
        f"sys.path.append({site.getsitepackages()[0]!r})\n"  # torch, numpy; no .pth files: no editable install
        "try:\n    import mamldqn_pl\n    sys.exit('mamldqn_pl importable')\nexcept ImportError:\n    pass\n"
        "import numpy as np, torch\n"
        "policy = torch.export.load('policy.pt2').module()\n"
        "q = policy(torch.from_numpy(np.load('obs.npy')))\n"
        "np.save('q.npy', q.detach().numpy())\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    q = np.load(tmp_path / "q.npy")
    expected = agent.q_values(obs).numpy()
    np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-6)
    assert (q.argmax(-1) == agent.act(obs)).all()


def test_video_writes_before_and_after_gifs(ckpt, tmp_path):
    pytest.importorskip("pygame")
    out = mamldqn("adapt", "--ckpt_path", str(ckpt), "--task", '{"length": 0.6}', "--flip", "--budget", "40",
                  "--k", "1", "--episodes", "1", "--video", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    from PIL import Image

    for name in ("before.gif", "after.gif"):
        with Image.open(tmp_path / name) as gif:
            assert gif.n_frames >= 4 and gif.size[0] > 100


BAD_ADAPT = [
    (["--env_id", "MountainCar-v0"], "observation space"),
    (["--env_id", "Pendulum-v1"], "is not Discrete"),
    (["--env_id", "NoSuchEnv-v9"], "is not a registered gymnasium env"),
    (["--env_id", "CartPole-v1", "--budget", "0", "--k", "3"], "--budget 0 with --k 3"),
    (["--env_id", "CartPole-v1", "--k", "-1"], "--k: -1 must be >= 0"),
    (["--env_id", "CartPole-v1", "--epsilon", "2"], "--epsilon: 2.0 must lie in [0, 1]"),
    (["--env_id", "CartPole-v1", "--rounds", "0"], "--rounds: 0 must be >= 1"),
    (["--env_id", "CartPole-v1", "--budget", "-5"], "--budget: -5 must be >= 0"),
    (["--env_id", "CartPole-v1", "--env_attrs", '{"pole": 1}'], "unknown task parameter 'pole'"),
    (["--env_id", "CartPole-v1", "--env_attrs", "{length: 1"], "is not JSON"),
    (["--env_id", "CartPole-v1", "--env_attrs", '{"length": "long"}'], "--env_attrs.length: 'long' must be a number"),
    (["--env_id", "CartPole-v1", "--env_kwargs", '{"colour": 3}'], "--env_kwargs"),
    (["--env_id", "Acrobot-v1", "--env_attrs", '{"link_length_1": -1}'], "must lie above 0.0"),
    (["--task", '{"length": 0.7, "pole": 1}'], "unknown task parameter 'pole'"),
    (["--task", '{"length": -0.5}'], "--task.length: range [-0.5, -0.5] must lie above 0.0"),
    (["--task", '[0.5]'], "must be a JSON object"),
    (["--task", "{}", "--env_attrs", '{"length": 1}'], "only with --env_id"),
    (["--task", "{}", "--episodes", "0"], "--episodes: 0 must be >= 1"),
    (["--env_id", "nosuchmodule:Env"], "cannot import it"),
    (["--env_id", "CartPole-v1", "--member", "0"], "--member: '0'; only for a mixed-family checkpoint (this one's "
     "family is 'cartpole')"),
    ([], "one of the arguments --task --env_id is required"),
]


@pytest.mark.parametrize("args, needle", BAD_ADAPT)
def test_bad_adapt_input_is_one_line(ckpt, tmp_path, args, needle, capsys):
    """In this process (a subprocess costs seconds of imports per case): the command's own exit and its one line;
    `test_adapt_on_gymnasium_cartpole_writes_the_agent_the_policy_and_the_report` runs `mamldqn adapt` as a
    subprocess, as a user does."""
    code, lines = refused(["adapt", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("mamldqn adapt: error:") and needle in lines[0], lines
    assert not (tmp_path / "o" / "adapted.pt").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_checkpoints_are_one_line(tmp_path, content, capsys):
    path = tmp_path / "bad.ckpt"
    if content is not None:
        path.write_bytes(content)
    code, lines = refused(["adapt", "--ckpt_path", str(path), "--env_id", "CartPole-v1", "--out", str(tmp_path / "o")],
                          capsys)
    assert code == 2 and len(lines) == 1 and "--ckpt_path" in lines[0], lines


def test_a_checkpoint_of_another_family_is_refused_naming_both(ckpt, tmp_path, capsys):
    code, lines = refused(["test", "--config", str(ROOT / "configs/mountaincar.yaml"), "--ckpt_path", str(ckpt),
                           "--run_dir", str(tmp_path)], capsys)
    assert code == 2 and not any("Traceback" in line for line in lines)
    line = lines[-1]
    assert "family 'cartpole'" in line and "family 'mountaincar'" in line and "obs_dim 4" in line, line


def test_model_flags_that_the_checkpoint_fixes_are_refused_not_ignored(ckpt, tmp_path, capsys):
    code, lines = refused(["test", *TINY, "--model.hidden", "[32]", "--ckpt_path", str(ckpt), "--run_dir",
                           str(tmp_path)], capsys)
    assert code == 2 and not any("Traceback" in line for line in lines)
    line = lines[-1]
    assert line.startswith("mamldqn: error: --model.hidden: [32] contradicts the checkpoint") and "[16]" in line


def test_a_users_own_env_class_adapts_by_entry_point(ckpt, tmp_path):
    (tmp_path / "my_envs.py").write_text(
        "from gymnasium.envs.classic_control.cartpole import CartPoleEnv\n\n"
        "class HeavyCartPole(CartPoleEnv):\n"
        "    def __init__(self, render_mode=None):\n"
        "        super().__init__(render_mode=render_mode)\n"
        "        self.masscart = 2.0\n"
        "        self.total_mass = self.masspole + self.masscart\n")
    out = subprocess.run([sys.executable, "-m", "mamldqn_pl", "adapt", "--ckpt_path", str(ckpt), "--env_id",
                          "my_envs:HeavyCartPole", "--env_kwargs", '{"max_episode_steps": 100}', "--budget", "40",
                          "--k", "1", "--episodes", "1", "--out", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "adapt.json").read_text())
    assert [r["k"] for r in report["returns"]] == [0, 1] and all(r["return"] <= 100 for r in report["returns"])


def test_the_readme_api_example_runs_as_written(ckpt, tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "MetaInit.load(" in block and "agent.export(" in block
    code = block.replace("lightning_logs/cartpole/checkpoints/best.ckpt", str(ckpt))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "adapted.pt").is_file() and (tmp_path / "policy.pt2").is_file()
    assert "'k': 5" in out.stdout
