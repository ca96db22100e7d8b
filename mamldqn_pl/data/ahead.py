"""A forked CPU process that collects meta-step t+1's batch with theta_t while meta-step t trains.

`data.collection process` (MetaDQNDataModule): the data side (collection, warm starts, support/query sampling:
about 40% of a default fit on one core) runs beside the meta-step instead of before it. It computes exactly
the batches of `data.collection ahead`, which does the same work in the training process: tests compare the two
bitwise.

The process is a fork of the training process, so it starts with the data module's state (pool, envs, buffers,
RNG streams) and a copy of the module. Before each batch the trainer writes the collection policy's tensors
(theta, theta^-, Meta-SGD's rates) into shared memory and sends the exploration rate; the process copies the
tensors into its module copy and runs the data module's own `_make_batch`. While it is alive the training
process's copy of the data state is stale: checkpoints ask the process for its state, and `stop` hands the
state back. The process exits on its own when the training process dies (its pipe closes).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mamldqn_pl.data.datamodule import MetaDQNDataModule


def _tensors_to_numpy(obj: Any) -> Any:
    """A batch (nested dicts of tensors) as numpy arrays: they pickle as plain buffers, torch tensors do not."""
    if isinstance(obj, dict):
        return {k: _tensors_to_numpy(v) for k, v in obj.items()}
    return obj.numpy()


def _numpy_to_tensors(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _numpy_to_tensors(v) for k, v in obj.items()}
    return torch.from_numpy(obj)


def _serve(conn: Connection, trainer_end: Connection, dm: MetaDQNDataModule, shared: dict[str, Tensor]) -> None:
    """The process's loop: one reply per request, in order; returns when the trainer stops it or dies."""
    trainer_end.close()  # the fork's copy of it: with it open, the trainer's death would never close the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it then stops this process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not Lightning's handler, inherited: it would survive SIGTERM
    torch.set_num_threads(1)
    live = dm._policy_tensors()
    try:
        while True:
            kind, arg = conn.recv()
            try:
                if kind == "batch":
                    with torch.no_grad():
                        for name, tensor in live.items():
                            tensor.copy_(shared[name])
                    reply = ("batch", _tensors_to_numpy(dm._make_batch(dm._q_values, dm._adapted_q_values, arg)))
                else:  # "state" or "stop"
                    reply = ("state", dm._local_state())
            except Exception:  # noqa: BLE001 - handed to the trainer, which raises it there
                reply = ("error", traceback.format_exc())
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            if kind == "stop" or reply[0] == "error":
                return
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the trainer is gone (killed or interrupted): nothing to hand back


class CollectionProcess:
    """The trainer's handle: `request` starts batch t+1, `receive` waits for it; `state` and `stop` fetch the
    data state (after any batch in flight, which the caller must have received first)."""

    def __init__(self, dm: MetaDQNDataModule, live: dict[str, Tensor]) -> None:
        """`live`: the policy's tensors (`dm._policy_tensors()`); updated in place by training, so kept."""
        self.live = live
        self.shared = {name: t.detach().clone().share_memory_() for name, t in live.items()}
        ctx = mp.get_context("fork")  # the process starts from this one's data state and module
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_serve, args=(child, self.conn, dm, self.shared), daemon=True,
                                   name="mamldqn-collection")
        self.process.start()
        child.close()
        self.in_flight = False

    def request(self, epsilon: float) -> None:
        """Collect the next batch with a snapshot of the policy's tensors as they are now, at this epsilon."""
        with torch.no_grad():
            for name, tensor in self.live.items():
                self.shared[name].copy_(tensor)
        self.conn.send(("batch", epsilon))
        self.in_flight = True

    def _reply(self, expected: str) -> Any:
        try:
            kind, payload = pickle.loads(self.conn.recv_bytes())
        except (EOFError, ConnectionResetError):
            self.process.join(timeout=5)  # reaped, so that its exit code (a signal: negative) can be told
            raise RuntimeError(f"the collection process (pid {self.process.pid}) died; exit code "
                               f"{self.process.exitcode}") from None
        if kind == "error":
            raise RuntimeError(f"the collection process failed:\n{payload}")
        assert kind == expected, (kind, expected)
        return payload

    def receive(self) -> dict:
        batch = _numpy_to_tensors(self._reply("batch"))
        self.in_flight = False
        return batch

    def state(self) -> dict:
        assert not self.in_flight, "receive the batch in flight first"
        self.conn.send(("state", None))
        return self._reply("state")

    def kill(self) -> None:
        """End the process without its state (after an exception the pipe may hold half a message)."""
        self.process.terminate()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> dict:
        """The data state, handed back; the process exits."""
        assert not self.in_flight, "receive the batch in flight first"
        self.conn.send(("stop", None))
        state = self._reply("state")
        self.process.join(timeout=10)
        self.conn.close()
        return state

