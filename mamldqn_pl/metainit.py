"""A meta-trained initialisation put to work on one task of the user's: load, adapt, act, save, export.

    init = MetaInit.load("lightning_logs/cartpole/checkpoints/best.ckpt")
    agent = init.adapt(gym.make("CartPole-v1"), budget=200, k=5)
    action = agent.act(obs)
    agent.save("adapted.pt"); agent.export("policy.pt2")
    mixed = MetaInit.load("lightning_logs/seed_cartpole_mountaincar_dynamics/checkpoints/best.ckpt")
    agent = mixed.adapt(gym.make("MountainCar-v0"), k=3)  # one member's own env: padded, its actions only

`adapt` runs the meta-test protocol's own functions (mamldqn_pl.evaluation) on one environment: support
collection with the initialisation, the checkpoint's own inner update (its learned rates for Meta-SGD), greedy
episodes at every K. `mamldqn adapt` is this API on the command line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from mamldqn_pl.checkpoints import read_checkpoint
from mamldqn_pl.data.collector import Collector
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.errors import ConfigError, require
from mamldqn_pl.evaluation import adapted_weights, collect, greedy_returns, support_batch
from mamldqn_pl.meta import QNetwork, batched_q, split_for_adaptation
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import Family, GymVectorEnv, Task, make_family
from mamldqn_pl.tasks.mixed import MemberObservation, MemberView

AGENT_FORMAT = "mamldqn-adapted-agent/1"


class MemberQNetwork(nn.Module):
    """A mixed family's Q-network on one member's own observations: MemberView's padding in torch (scale, zeros to
    the family's state, the member's one-hot) and the member's actions only. What an agent adapted to a plain
    MountainCar-v0 from a CartPole + MountainCar checkpoint acts and exports with."""

    def __init__(self, net: QNetwork, view: MemberView) -> None:
        super().__init__()
        self.net, self.view = net, view
        self.register_buffer("scale", torch.tensor(view.scale, dtype=torch.float32))
        # what follows the scaled state (zeros, the one-hot) does not depend on it: the view's own padding of 0
        self.register_buffer("tail", torch.from_numpy(view.obs(np.zeros((1, view.raw_dim)))[0, view.raw_dim:]))

    def forward(self, obs: Tensor) -> Tensor:
        """Q-values of the member's actions for observations [..., raw_dim]."""
        x = torch.cat([obs / self.scale, self.tail.expand(*obs.shape[:-1], -1)], -1)
        return self.net(x)[..., : self.view.n_actions]


class Agent:
    """An adapted Q-network, a plain QNetwork: greedy actions, save/load (weights only), export. Adapted from a
    mixed-family checkpoint to one member's task, it also holds that member's view and acts on the member's own
    observations (`policy`)."""

    def __init__(self, net: QNetwork, report: dict[str, Any] | None = None, member: MemberView | None = None) -> None:
        self.net = net.eval()
        self.report = report or {}
        self.member = member
        self.policy: nn.Module = self.net if member is None else MemberQNetwork(self.net, member).eval()

    @torch.no_grad()
    def q_values(self, obs) -> Tensor:
        """Q(s, .) for one observation [obs_dim] or a batch [n, obs_dim] (a member's: its own obs and actions)."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        return self.policy(x)

    def act(self, obs) -> int | np.ndarray:
        """The greedy action: an int for one observation, an array for a batch."""
        actions = self.q_values(obs).argmax(-1)
        return int(actions) if actions.dim() == 0 else actions.numpy()

    def save(self, path: str | Path) -> None:
        """Weights and what rebuilds the network, as plain data (loads with torch.load(weights_only=True))."""
        torch.save({"format": AGENT_FORMAT, "arch": self.net.arch(), "state_dict": self.net.state_dict(),
                    "report": self.report, "member": None if self.member is None else self.member.to_dict()},
                   path)

    @classmethod
    def load(cls, path: str | Path) -> Agent:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure to read is the same user-facing problem
            raise ConfigError(f"{path}: not a readable agent file ({type(err).__name__})") from None
        require(isinstance(saved, dict) and saved.get("format") == AGENT_FORMAT,
                f"{path}: not an agent saved by Agent.save ({AGENT_FORMAT})")
        net = QNetwork(**saved["arch"])
        net.load_state_dict(saved["state_dict"])
        member = saved.get("member")
        return cls(net, saved.get("report"), None if member is None else MemberView.from_dict(member))

    def export(self, path: str | Path) -> None:
        """The network as a torch.export program (.pt2): `torch.export.load(path).module()(obs)` gives Q-values
        for a batch of observations [n, obs_dim] in any Python with torch, without this package (a member's
        agent: of the member's own observations [n, raw_dim], its actions only)."""
        example = torch.zeros(2, self.net.obs_dim if self.member is None else self.member.raw_dim)
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(self.policy, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))


def check_env(env: gym.Env, obs_dim: int, n_actions: int, what: str, net: str = "the checkpoint's network") -> None:
    """The env must match the network: a 1-D Box of obs_dim and Discrete(n_actions); else one line naming both."""
    obs, act = env.observation_space, env.action_space
    require(isinstance(act, gym.spaces.Discrete),
            f"{what}: action space {act} is not Discrete; {net} has {n_actions} discrete actions")
    require(isinstance(obs, gym.spaces.Box) and obs.shape == (obs_dim,),
            f"{what}: observation space of shape {getattr(obs, 'shape', obs)} does not fit {net} (obs_dim {obs_dim})")
    require(int(act.n) == n_actions, f"{what}: {int(act.n)} actions, {net} has {n_actions}")


class MetaInit:
    """A meta-trained initialisation with the inner update it was trained with."""

    def __init__(self, model, data: dict[str, Any], source: str = "") -> None:
        self.model = model.eval()
        self.data = data
        self.source = source

    @classmethod
    def load(cls, path: str | Path, flag: str = "--ckpt_path") -> MetaInit:
        """Rebuild the module from a checkpoint's own hyperparameters; a file that is not one is a ConfigError
        naming `flag`, the option that gave the path."""
        from mamldqn_pl.module import MAMLDQN  # the module imports evaluation code; keep this file light to import

        ckpt = read_checkpoint(path, flag)
        hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
        data = {k: v for k, v in ckpt.get("datamodule_hyper_parameters", {}).items() if not k.startswith("_")}
        model = MAMLDQN(**hp)
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise ConfigError(f"{flag} {path}: its weights do not fit its own hyperparameters "
                              f"({str(err).splitlines()[0][:160]})") from None
        return cls(model, data, str(path))

    # ---- what the checkpoint fixes ------------------------------------------------------------------------
    @property
    def net(self) -> QNetwork:
        return self.model.init_net

    @property
    def obs_dim(self) -> int:
        return int(self.model.hparams.obs_dim)

    @property
    def n_actions(self) -> int:
        return int(self.model.hparams.n_actions)


    def family(self) -> Family:
        d = self.data
        return make_family(d.get("family", "cartpole"), d.get("ranges"), d.get("flip"), d.get("env_id"),
                           d.get("env_kwargs"), d.get("members"))

    # ---- adaptation ---------------------------------------------------------------------------------------
    def member_view(self, member: int | str | None, env_id: str | None = None) -> MemberView | None:
        """A mixed-family checkpoint: the view of the member a task belongs to (`MixedFamily.member_index`); any
        other checkpoint: None, and a member given anyway is refused in one line."""
        family = self.family()
        if family.name != "mixed":
            require(member is None, f"--member: {member!r}; only for a mixed-family checkpoint (this one's family "
                    f"is {family.name!r})")
            return None
        return family.view(family.member_index(member, env_id))

    def adapt(self, env: gym.Env, budget: int | None = None, k: int | None = None, epsilon: float | None = None,
              rounds: int = 1, episodes: int = 5, seed: int = 0, member: int | str | None = None) -> Agent:
        """Collect `budget` env steps with the initialisation (epsilon-greedy), take K inner steps from it, and
        return the adapted agent; its `report` holds greedy returns at every K' <= K. With `rounds` > 1, each
        further round collects `budget` more steps with the adapted policy and adapts again from the
        initialisation on all data so far (online adaptation). A mixed-family checkpoint adapts on a plain env of
        one member (`member`: its index or family name; without it, the member whose env id is the env's): the
        env's observations are padded as in training and only the member's actions are played."""
        budget = int(self.data.get("adapt_budget", 200)) if budget is None else budget
        k = int(self.model.hparams.inner_steps) if k is None else k
        epsilon = float(self.data.get("epsilon_adapt", 0.25)) if epsilon is None else epsilon
        require(budget >= 0, f"--budget: {budget} must be >= 0")
        require(k >= 0, f"--k: {k} must be >= 0")
        require(not (budget == 0 and k > 0), f"--budget 0 with --k {k}: inner steps need data; give a budget > 0")
        require(0.0 <= epsilon <= 1.0, f"--epsilon: {epsilon} must lie in [0, 1]")
        require(rounds >= 1, f"--rounds: {rounds} must be >= 1")
        require(episodes >= 1, f"--episodes: {episodes} must be >= 1")
        view = self.member_view(member, env.spec.id if env.spec is not None else None)
        if view is not None:
            check_env(env, view.raw_dim, view.n_actions, "env",
                      f"the checkpoint's member {view.member} ({view.name})")
            env = MemberObservation(env, view)
        else:
            check_env(env, self.obs_dim, self.n_actions, "env")
        net, model = self.net, self.model
        params = {name: p.detach() for name, p in net.named_parameters()}
        split = split_for_adaptation(net, params, model.adapt)
        generator = make_generator(seed, 7919)
        limit = env.spec.max_episode_steps if env.spec is not None and env.spec.max_episode_steps else 1000
        spec = SimpleNamespace(obs_dim=self.obs_dim, n_actions=self.n_actions, max_episode_steps=limit)
        venv = GymVectorEnv(spec, [Task({})], generator, envs=[env])
        if view is not None:
            venv.action_counts[:] = view.n_actions  # the network's other actions are masked, as in training
        n_step = int(self.data.get("n_step", 1))  # the TD targets the init was trained with
        buffers = ReplayBuffers(1, max(budget * rounds, 1), self.obs_dim, n_step=n_step)
        collector = Collector(venv, buffers, generator)

        def q_init(obs: Tensor) -> Tensor:
            return net(obs)

        policy, fast, rows = q_init, split.fast, []
        with torch.inference_mode(False), torch.enable_grad():
            for r in range(1, rounds + 1):
                venv.reset()
                collect(collector, policy, budget, epsilon)
                support = None if not budget else support_batch(
                    split, buffers, venv.action_counts, self.n_actions, q_init, model.hparams.gamma,
                    torch.device("cpu"), model.inner.advantage, model.inner.solver)
                for kk, fast in adapted_weights(split, model.inner, support, range(k + 1), 1):
                    venv.reset()
                    value = float(greedy_returns(net, params, fast, venv, episodes)[0])
                    rows.append({"round": r, "k": kk, "env_steps": budget * r, "return": value})
                policy = _slot_policy(net, params, fast)
        adapted = copy.deepcopy(net)
        adapted.load_state_dict({**net.state_dict(), **{name: w[0] for name, w in fast.items()}})
        report = {"checkpoint": self.source, "budget": budget, "k": k, "epsilon": epsilon, "rounds": rounds,
                  "episodes": episodes, "seed": seed, "support_size": int(buffers.size[0]),
                  "algorithm": model.algorithm, "adapt": model.adapt, "returns": rows}
        if view is not None:
            report["member"] = {"index": view.member, "family": view.name}
        return Agent(adapted, report, view)

    def policy(self, member: int | str | None = None, env_id: str | None = None) -> nn.Module:
        """The initialisation itself as a policy network on a task's own observations (a mixed checkpoint's:
        on one member's, as `adapt` plays it)."""
        view = self.member_view(member, env_id)
        return self.net if view is None else MemberQNetwork(self.net, view).eval()


def _slot_policy(net: QNetwork, params: dict[str, Tensor], fast: dict[str, Tensor]):
    def q(obs: Tensor) -> Tensor:
        return batched_q(net, params, fast, obs.unsqueeze(1)).squeeze(1)

    return q


def init_weights(path: str | Path, own: dict[str, Tensor]) -> dict[str, Tensor]:
    """The initialisation checkpoint `path` hands on (`MetaInit.net`: its EMA of theta where it kept one, else
    theta) as a state dict for a network whose own state dict is `own` (model.init_checkpoint). A file that is not
    a checkpoint, a network of other shapes, or another observation scale (the same weights would then compute
    another function) is a one-line ConfigError: nothing of that network's config is silently replaced. The outcome
    head of the dynamics solver is the one exception: a network without one (e.g. a multitask run's) hands on its
    Q-network and this run keeps its own fresh outcome head; one with it, to a run without, hands on the rest."""
    flag = "--model.init_checkpoint"
    weights = MetaInit.load(path, flag).net.state_dict()
    weights = {k: v for k, v in weights.items() if k in own or not k.startswith("dyn.")}
    weights |= {k: v for k, v in own.items() if k.startswith("dyn.") and k not in weights}

    def shapes(d: dict[str, Tensor]) -> str:
        return " ".join(str(list(v.shape)) for k, v in d.items() if k.endswith("weight")) or "none"

    if weights.keys() != own.keys() or any(weights[k].shape != own[k].shape for k in own):
        raise ConfigError(f"{flag} {path}: its network (weights {shapes(weights)}) does not fit this config's "
                          f"(weights {shapes(own)}); give a checkpoint of the same family, model.hidden and "
                          "model.layer_norm")
    for key in (k for k in own if k.endswith("scale")):
        if not torch.equal(weights[key], own[key]):
            raise ConfigError(f"{flag} {path}: its observation scale {weights[key].tolist()} differs from this "
                              f"config's {own[key].tolist()} (model.obs_scale, from the task family)")
    return weights
