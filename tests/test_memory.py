"""mamldqn_pl.memory.keep_freed_memory: glibc keeps a meta-step's freed temporaries in the heap. It changes where
memory comes from, never the arithmetic: meta-steps in a process with it and in one without give bitwise the same
parameters; the environment can turn it off."""

import hashlib
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from mamldqn_pl.memory import keep_freed_memory

STEPS = """
import hashlib, sys, torch
from mamldqn_pl import MAMLDQN
from mamldqn_pl.memory import keep_freed_memory
print(keep_freed_memory(), file=sys.stderr)
torch.set_num_threads(1)
torch.manual_seed(0)
model = MAMLDQN(hidden=[64, 64])
opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
def part(n):
    obs = torch.randn(32, n, 4)
    return {"obs": obs, "actions": torch.randint(2, (32, n)), "rewards": torch.ones(32, n),
            "next_obs": obs + 0.01, "terminated": torch.zeros(32, n)}
for _ in range(20):
    loss = model.meta_objective({"support": part(128), "query": part(128)}, with_pre=False)[0]
    opt.zero_grad()
    loss.backward()
    opt.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.net.parameters())).hexdigest())
"""


def run(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **env})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_leaves_the_arithmetic_bitwise_unchanged():
    on, off = run({}), run({"MAMLDQN_KEEP_FREED_MEMORY": "0"})
    assert on.returncode == 0 and off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    assert on.stderr.strip().splitlines()[-1] == "True" and off.stderr.strip().splitlines()[-1] == "False"
    assert on.stdout == off.stdout and len(on.stdout.strip()) == len(hashlib.sha256().hexdigest())


def test_the_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv("MAMLDQN_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
