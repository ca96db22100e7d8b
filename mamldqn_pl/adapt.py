"""`mamldqn adapt`: put a meta-trained initialisation to work on one task and hand back the adapted network.

    mamldqn adapt --ckpt_path lightning_logs/cartpole/checkpoints/best.ckpt \\
        --env_id CartPole-v1 --env_attrs '{"length": 0.5}' --flip --budget 200 --k 5 --out adapted/

Writes OUT/adapted.pt (weights + architecture, `Agent.load`), OUT/policy.pt2 (torch.export: Q-values of a batch
of observations, loadable with torch alone), OUT/adapt.json (returns at every K and round, the settings) and,
with --video, OUT/before.gif and OUT/after.gif (one greedy episode of the initialisation and of the adapted
network). The task is either --task (the checkpoint's own family, by its parameters) or --env_id (any
registered gymnasium env with a Discrete action space and the checkpoint's sizes, or a `module:Class` entry
point). A mixed-family checkpoint (e.g. configs/seed_cartpole_mountaincar_dynamics.yaml) adapts to a plain env of
one of its members, named by --member (its family, e.g. mountaincar, or index; with --env_id of a member's own env
it may be left out):

    mamldqn adapt --ckpt_path lightning_logs/seed_cartpole_mountaincar_dynamics/checkpoints/best.ckpt \
        --env_id MountainCar-v0 --budget 200 --k 3 --out adapted_mc/
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import torch

from mamldqn_pl.errors import ConfigError, require
from mamldqn_pl.metainit import MetaInit
from mamldqn_pl.tasks import FAMILIES, Task
from mamldqn_pl.tasks.family import ReverseActions, check_ranges

EnvMaker = Callable[[str | None], gym.Env]  # render_mode -> a fresh env of the user's task


def _json(text: str | None, flag: str) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{flag}: {text!r} is not JSON ({err.msg}); e.g. '{{\"length\": 0.7}}'") from None
    require(isinstance(value, dict), f"{flag}: {text!r} must be a JSON object of name: value")
    return value


def _floats(values: dict, flag: str) -> dict[str, float]:
    for name, value in values.items():
        require(isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{flag}.{name}: {value!r} must be a number")
    return {name: float(value) for name, value in values.items()}


def _check_params(values: dict[str, float], family, flag: str) -> None:
    """Names the family knows, values above its floors (unknown names and bad values: one line)."""
    check_ranges({k: [v, v] for k, v in values.items()}, family.floors, flag)


def task_maker(init: MetaInit, params: dict, flip: bool, member: str | None = None) -> EnvMaker:
    """--task: gymnasium's own env of the checkpoint's family with these constants (unknown names refused); of a
    mixed checkpoint, the env of its member `member`."""
    family = init.family()
    view = init.member_view(member)
    if view is not None:
        family = family.members[view.member]
    values = _floats(params, "--task")
    _check_params(values, family, "--task")
    task = Task(params=values, flip=-1 if flip else 1)
    outside = [f"{k}={v:g} (trained on {family.ranges[k][0]:g}-{family.ranges[k][1]:g})"
               for k, v in values.items() if k in family.ranges and not
               family.ranges[k][0] <= v <= family.ranges[k][1]]
    if outside:
        print(f"mamldqn adapt: note: outside the training ranges: {', '.join(outside)}", file=sys.stderr)

    def make(render_mode: str | None = None) -> gym.Env:
        env = gym.make(family.env_id, render_mode=render_mode)
        family.apply(env.unwrapped, task)
        return ReverseActions(env) if flip else env

    return make


def _entry_point(env_id: str) -> str:
    """A `module:Class` entry point (a gymnasium.Env subclass) becomes a registered id, so that gym.make and its
    wrappers apply to it; anything else (including gymnasium's own `module:Id-v0`) is passed on unchanged."""
    module, _, name = env_id.partition(":")
    if not module or not name:
        return env_id
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"--env_id {env_id}: cannot import it ({type(err).__name__}: {err})") from None
    if not (isinstance(cls, type) and issubclass(cls, gym.Env)):
        return env_id
    registered = f"mamldqn_user/{name}-v0"
    if registered not in gym.registry:
        gym.register(id=registered, entry_point=cls, max_episode_steps=1000)
    return registered


def env_maker(env_id: str, kwargs: dict, attrs: dict, flip: bool) -> EnvMaker:
    """--env_id: `gym.make(env_id, **kwargs)` with `attrs` set on the unwrapped env. For the env of a built-in
    family (e.g. CartPole-v1) the attributes are that family's task parameters, and what the env derives from
    them is recomputed (gymnasium derives CartPole's total mass once, in __init__)."""
    env_id = _entry_point(env_id)
    values = _floats(attrs, "--env_attrs")
    family = next((f(None, None) for f in FAMILIES.values() if f.env_id == env_id), None)
    if family is not None:
        _check_params(values, family, "--env_attrs")

    def make(render_mode: str | None = None) -> gym.Env:
        try:
            env = gym.make(env_id, render_mode=render_mode, **kwargs)
        except gym.error.Error as err:
            raise ConfigError(f"--env_id: {env_id!r} is not a registered gymnasium env "
                              f"({type(err).__name__})") from None
        except TypeError as err:
            raise ConfigError(f"--env_kwargs: {kwargs} not accepted by {env_id} ({err})") from None
        if family is not None:
            family.apply(env.unwrapped, Task(params=values))
        for name, value in values.items() if family is None else ():
            current = getattr(env.unwrapped, name, None)
            require(isinstance(current, (int, float)) and not isinstance(current, bool),
                    f"--env_attrs: {env_id} has no plain number attribute {name!r}")
            setattr(env.unwrapped, name, value)
        return ReverseActions(env) if flip else env

    return make


def record_gif(agent_q: Callable[[torch.Tensor], torch.Tensor], make: EnvMaker, path: Path, seed: int) -> float:
    """One greedy episode rendered to an animated GIF (gymnasium's rgb_array frames, written with Pillow)."""
    from PIL import Image

    try:
        env = make("rgb_array")
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"--video: rendering needs pygame ({err}); pip install 'mamldqn_pl[video]'") from None
    total, done = 0.0, False
    while not done:
        with torch.no_grad():
            action = int(agent_q(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).argmax(-1))
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
        frames.append(env.render())
    env.close()
    images = [Image.fromarray(f) for f in frames[::2]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return total


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line (no usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="mamldqn adapt", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint of `mamldqn fit`")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--task", help="JSON of the checkpoint family's task parameters, e.g. '{\"length\": 0.7}'")
    where.add_argument("--env_id", help="a registered gymnasium env id, or module:Class")
    parser.add_argument("--env_kwargs", help="JSON of keyword arguments of gym.make (with --env_id)")
    parser.add_argument("--env_attrs", help="JSON of attributes set on the unwrapped env (with --env_id)")
    parser.add_argument("--member", help="a mixed-family checkpoint's member the task belongs to: its family "
                        "(e.g. mountaincar) or index")
    parser.add_argument("--flip", action="store_true", help="reverse the action order (the hidden flip)")
    parser.add_argument("--budget", type=int, default=None, help="new-task env steps (default: the trained one)")
    parser.add_argument("--k", type=int, default=None, help="inner steps (default: the trained K)")
    parser.add_argument("--epsilon", type=float, default=None, help="exploration of the support collection")
    parser.add_argument("--rounds", type=int, default=1, help="online rounds: collect with the adapted policy")
    parser.add_argument("--episodes", type=int, default=5, help="greedy episodes per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for adapted.pt, policy.pt2, adapt.json")
    parser.add_argument("--video", action="store_true", help="also before.gif and after.gif (needs pygame)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.task is not None:
            require(args.env_kwargs is None and args.env_attrs is None,
                    "--env_kwargs/--env_attrs: only with --env_id (--task takes the parameters itself)")
        init = MetaInit.load(args.ckpt_path)
        if args.task is not None:
            make = task_maker(init, _json(args.task, "--task"), args.flip, args.member)
        else:
            make = env_maker(args.env_id, _json(args.env_kwargs, "--env_kwargs"),
                             _json(args.env_attrs, "--env_attrs"), args.flip)
        env = make(None)
        agent = init.adapt(env, args.budget, args.k, args.epsilon, args.rounds, args.episodes, args.seed,
                           args.member)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if args.video:
            before = record_gif(init.policy(args.member, env.spec.id if env.spec else None), make,
                                out / "before.gif", args.seed)
            after = record_gif(agent.policy, make, out / "after.gif", args.seed)
            agent.report["video"] = {"before.gif": before, "after.gif": after}
    except ConfigError as err:
        print(f"mamldqn adapt: error: {err}", file=sys.stderr)
        sys.exit(2)
    agent.save(out / "adapted.pt")
    agent.export(out / "policy.pt2")
    (out / "adapt.json").write_text(json.dumps(agent.report, indent=1))
    print("| round | env steps | K | greedy return |\n|---|---|---|---|")
    for row in agent.report["returns"]:
        print(f"| {row['round']} | {row['env_steps']} | {row['k']} | {row['return']:.1f} |")
    print(f"\nwrote adapted.pt, policy.pt2, adapt.json{', before.gif, after.gif' if args.video else ''} to {out}")


if __name__ == "__main__":
    main()
