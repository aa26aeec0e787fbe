#!/usr/bin/env python3
"""An elastic data-parallel PyTorch job: gloo on CPU, torchrun's c10d rendezvous, nodes leave and join.

Every worker holds the whole model (a two-layer MLP, float64) and computes the gradient of its share of a
fixed global batch; one gloo all-reduce per step sums the shares, so every rank applies the same Adam step.
The batch of step ``s`` is a pure function of ``(--seed, s)`` and is split across however many ranks there
are now, so the loss curve does not depend on the world size or on the membership history (up to float
rounding: the sum is split differently; see docs/distributed.md for the tolerance).

Elasticity is torchrun's: when a node joins, or one leaves, torchrun stops the workers and starts them
again with the new world size. Each start resumes from the newest committed checkpoint any node holds
(the ranks agree on it and one broadcasts it, so a joining node needs no shared storage). A step is
committed when it is in a checkpoint: the local rank 0 of every node saves one atomically
(``greenferry.job``) every ``--checkpoint-every`` steps, at the end, and when any rank is asked to stop
(SIGTERM from its agent: the node's surplus ended, or torchrun restarts the group for a joining node).
Steps applied after the last commit are lost by a crash and recomputed from the committed state, never
applied on top of it. The checkpoint holds ``history.jsonl``: one line ``{"step", "loss", "world_size"}``
for every committed step.

    # the rendezvous store, somewhere every node reaches and that outlives any one node's surplus
    python examples/elastic_torch_job.py --rendezvous-store 29400
    # on each node (its own checkpoint directory; nodes may have different --nproc-per-node)
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes=1:4 --nproc-per-node=2 \\
        --rdzv-backend=c10d --rdzv-endpoint=STORE_HOST:29400 --rdzv-id=job-1 \\
        --rdzv-conf=is_host=false,last_call_timeout=5 --max-restarts=100 \\
        examples/elastic_torch_job.py --steps 2000 --checkpoint-dir /var/lib/job-1/checkpoint

docs/distributed.md explains each setting (why the store is not on a node, why the agents must not share
it with the workers) and what greenferry's daemons do with it.

Without torchrun it trains in one process (world size 1) and is an ordinary greenferry job.
Exit codes: 0 done, 75 checkpointed (stopped: the agent restarts or leaves), 1 failed (a peer died, a
checkpoint from other settings), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

try:
    import greenferry.job as gf_job
except ImportError:  # run from a source checkout without installing greenferry
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import greenferry.job as gf_job
from greenferry.elastic_store import serve_rendezvous_store

FORMAT = 1
INPUTS = 16
HIDDEN = 64
SAMPLES = 4096
NO_CHECKPOINT = -1
STATE_NAME = "state.pt"
HISTORY_NAME = "history.jsonl"
MAX_STEPS = 2**32 - 1  # the step is the low 32 bits of each batch's generator seed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="train until this step (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and batch seed (>= 0)")
    parser.add_argument(
        "--global-batch", type=int, default=48, help="samples per step, split across the ranks (48)"
    )
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument(
        "--checkpoint-every", type=int, default=10, help="commit a checkpoint every N steps (default 10)"
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="this node's checkpoint directory (default ./checkpoint; GREENFERRY_JOB_CHECKPOINT_DIR wins)",
    )
    parser.add_argument(
        "--events",
        type=Path,
        default=None,
        help="append what this node's workers do (starts, steps, commits, exits) to this JSONL file",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker (fixed)")
    parser.add_argument("--step-time-s", type=float, default=0.0, help="sleep per step, to watch a demo")
    parser.add_argument("--log-every", type=int, default=50, help="rank 0 prints the loss every N steps")
    parser.add_argument(
        "--collective-timeout-s",
        type=float,
        default=120.0,
        help="a collective waiting this long for a silent peer fails the worker (default 120)",
    )
    parser.add_argument(
        "--report-interval-s", type=float, default=1.0, help="progress reports at most this often"
    )
    parser.add_argument(
        "--rendezvous-store",
        metavar="PORT",
        type=int,
        default=None,
        help="do not train: host the c10d rendezvous store on PORT (0: any free one) until SIGTERM",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.steps <= MAX_STEPS:
        parser.error(f"--steps must be in 0..{MAX_STEPS}")
    for name in ("seed", "log_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("global_batch", "checkpoint_every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("lr", "step_time_s", "report_interval_s"):
        if not math.isfinite(getattr(args, name)) or getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= 0")
    if not math.isfinite(args.collective_timeout_s) or args.collective_timeout_s <= 0:
        parser.error("--collective-timeout-s must be a finite number > 0")
    if args.rendezvous_store is not None and not 0 <= args.rendezvous_store <= 65535:
        parser.error("--rendezvous-store must be a port number, 0..65535")
    return args


# ----------------------------------------------------------------------------------- the process group


@dataclass(frozen=True)
class Group:
    """This worker's place in the current world: torchrun's environment, or one process alone."""

    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    restart_count: int
    distributed: bool

    @classmethod
    def join(cls, timeout_s: float) -> Group:
        """Join the process group torchrun set up (gloo), or make a world of one without torchrun."""
        if "WORLD_SIZE" not in os.environ:
            return cls(0, 1, 0, 0, 0, distributed=False)
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            node_rank=int(os.environ.get("GROUP_RANK", "0")),
            restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            distributed=True,
        )

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
        if self.distributed:
            dist.all_reduce(tensor, op=op)

    def broadcast_bytes(self, data: bytes | None, src: int) -> bytes:
        """``src``'s bytes on every rank (``data`` matters only on ``src``)."""
        if not self.distributed:
            assert data is not None
            return data
        size = torch.tensor([len(data) if self.rank == src and data is not None else 0], dtype=torch.int64)
        dist.broadcast(size, src=src)
        buffer = torch.empty(int(size.item()), dtype=torch.uint8)
        if self.rank == src:
            assert data is not None
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=src)
        return buffer.numpy().tobytes()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


class EventLog:
    """Append-only JSONL of what this worker did (one ``os.write`` per line, so workers never interleave)."""

    def __init__(self, path: Path | None, group: Group) -> None:
        self._fd: int | None = None
        self._base = {"rank": group.rank, "world_size": group.world_size, "pid": os.getpid()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        if self._fd is None:
            return
        record = {"event": event, **self._base, **fields, "time_s": round(time.time(), 3)}
        os.write(self._fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ----------------------------------------------------------------------------------- the model


class Trainer:
    """Data, model, optimizer, step and committed-step history: the state every rank holds alike."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        data = torch.Generator().manual_seed(args.seed * 1000)
        x = torch.randn(SAMPLES, INPUTS, generator=data, dtype=torch.float64)
        direction = torch.randn(INPUTS, generator=data, dtype=torch.float64) / math.sqrt(INPUTS)
        noise = 0.05 * torch.randn(SAMPLES, 1, generator=data, dtype=torch.float64)
        self.x, self.y = x, torch.sin(3.0 * x @ direction)[:, None] + noise
        torch.manual_seed(args.seed * 1000 + 1)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(INPUTS, HIDDEN, dtype=torch.float64),
            torch.nn.Tanh(),
            torch.nn.Linear(HIDDEN, 1, dtype=torch.float64),
        )
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=args.lr, foreach=False)
        self.step = 0
        self.history: list[list[float | int]] = []  # [step, loss, world_size] of every applied step

    def batch(self, step: int) -> torch.Tensor:
        """The global batch of ``step``: the same sample indices whatever the world size."""
        generator = torch.Generator().manual_seed((self.args.seed << 32) | step)
        return torch.randint(0, SAMPLES, (self.args.global_batch,), generator=generator)

    def train_step(self, group: Group, stop: bool) -> tuple[float, bool]:
        """Apply the next step; returns its global-batch loss and whether any rank asked to stop.

        The stop flags ride on the gradient all-reduce, so every rank learns them at the same step.
        """
        step = self.step + 1
        shard = torch.tensor_split(self.batch(step), group.world_size)[group.rank]
        error = self.model(self.x[shard]) - self.y[shard]
        share = (error**2).sum() / self.args.global_batch  # this rank's part of the global-batch mean
        self.optimizer.zero_grad(set_to_none=False)
        share.backward()
        flat = torch.cat(
            [
                *((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params),
                share.detach().reshape(1),
                torch.tensor([1.0 if stop else 0.0], dtype=torch.float64),
            ]
        )
        group.all_reduce(flat)
        offset = 0
        for p in self.params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()
        self.step = step
        loss = float(flat[-2])
        self.history.append([step, loss, group.world_size])
        return loss, bool(flat[-1] > 0)

    def _identity(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "seed": self.args.seed,
            "global_batch": self.args.global_batch,
            "lr": self.args.lr,
        }

    def state_bytes(self) -> bytes:
        buffer = io.BytesIO()
        state = {
            **self._identity(),
            "step": self.step,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, buffer)
        return buffer.getvalue()

    def load_bytes(self, data: bytes, origin: str) -> None:
        """Restore the state ``state_bytes`` made (``origin`` names it in errors)."""
        state = torch.load(io.BytesIO(data), weights_only=True)
        identity = {key: state.get(key) for key in self._identity()}
        if identity != self._identity():
            raise SystemExit(
                f"{origin}: checkpoint was written with {identity}, not {self._identity()}; "
                "resume with the same --seed, --global-batch and --lr"
            )
        history = [[int(s), float(loss), int(w)] for s, loss, w in state["history"]]
        if [record[0] for record in history] != list(range(1, int(state["step"]) + 1)):
            raise SystemExit(f"{origin}: the history does not hold steps 1..{state['step']} once each")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = history

    def write(self, directory: Path) -> None:
        """Write the checkpoint's files: the state and the committed history as JSONL."""
        (directory / STATE_NAME).write_bytes(self.state_bytes())
        lines = (
            json.dumps({"step": s, "loss": loss, "world_size": w}, separators=(",", ":"))
            for s, loss, w in self.history
        )
        (directory / HISTORY_NAME).write_text("".join(f"{line}\n" for line in lines))


# ----------------------------------------------------------------------------------- training


def agree_on_start(job: gf_job.Job, group: Group, trainer: Trainer) -> tuple[int, int, int]:
    """Load the newest checkpoint any node holds on every rank.

    Returns:
        (its step, the rank that sent it, the step of the checkpoint this rank offered).

    The local rank 0 of each node offers its node's checkpoint; the lowest rank holding the newest one
    broadcasts it. With no checkpoint anywhere rank 0 broadcasts its fresh state, so all ranks start alike.
    ``NO_CHECKPOINT`` (-1) stands for none.
    """
    meta = job.resume_meta() if group.local_rank == 0 else None
    offered = int(meta["step"]) if meta is not None else NO_CHECKPOINT
    newest = torch.tensor([offered], dtype=torch.int64)
    group.all_reduce(newest, dist.ReduceOp.MAX)
    step = int(newest.item())
    holder = torch.tensor([group.rank if offered == step else group.world_size], dtype=torch.int64)
    group.all_reduce(holder, dist.ReduceOp.MIN)
    src = int(holder.item())
    data = None
    if group.rank == src:
        path = job.resume_path()
        data = (path / STATE_NAME).read_bytes() if step != NO_CHECKPOINT and path else trainer.state_bytes()
    data = group.broadcast_bytes(data, src)
    trainer.load_bytes(data, origin=f"the checkpoint of rank {src} (step {step})")
    if step not in (NO_CHECKPOINT, trainer.step):
        raise SystemExit(f"rank {src}: checkpoint meta says step {step}, its state step {trainer.step}")
    return step, src, offered


def train(args: argparse.Namespace, job: gf_job.Job, group: Group, events: EventLog) -> int:
    trainer = Trainer(args)
    resume_step, src, offered = agree_on_start(job, group, trainer)
    # The step this node's checkpoint holds, when it is the state training goes on from (an older one is
    # replaced at the next commit, even at the same step number).
    committed = offered if offered == resume_step else NO_CHECKPOINT
    events.write(
        "start",
        local_rank=group.local_rank,
        node_rank=group.node_rank,
        restart_count=group.restart_count,
        resume_step=resume_step,
        source_rank=src,
    )
    if group.rank == 0:
        origin = "fresh start" if resume_step == NO_CHECKPOINT else f"resumed at step {resume_step}"
        print(f"{origin} from rank {src}, world size {group.world_size}", flush=True)

    def commit() -> None:
        nonlocal committed
        if group.local_rank == 0 and committed != trainer.step:
            last = trainer.history[-1] if trainer.history else None
            job.save(
                trainer.write,
                step=trainer.step,
                extra={"loss": last[1] if last else None, "world_size": group.world_size},
            )
            committed = trainer.step
            events.write("commit", step=trainer.step)

    while trainer.step < args.steps:
        loss, stop = trainer.train_step(group, job.checkpoint_requested())
        if group.rank == 0:
            events.write("step", step=trainer.step, loss=loss)
            job.report(step=trainer.step, loss=loss, progress=trainer.step / args.steps)
            if args.log_every and trainer.step % args.log_every == 0:
                print(f"step {trainer.step} loss {loss:.6f} world size {group.world_size}", flush=True)
        if stop:
            commit()
            group.barrier()  # no rank exits before every node's checkpoint of this step is complete
            reason = job.checkpoint_reason if job.checkpoint_requested() else "a peer stopped"
            events.write("stop", step=trainer.step, reason=reason)
            if group.rank == 0:
                print(f"checkpointed at step {trainer.step} ({reason})", flush=True)
            job.exit_checkpointed()
        if trainer.step % args.checkpoint_every == 0:
            commit()
        if args.step_time_s:
            time.sleep(args.step_time_s)
    commit()
    group.barrier()
    if group.rank == 0:
        job.report(step=trainer.step, loss=trainer.history[-1][1] if trainer.history else None, force=True)
        job.complete(trainer.step)
        print(f"done: {trainer.step} steps", flush=True)
    return gf_job.EXIT_COMPLETED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rendezvous_store is not None:
        return serve_rendezvous_store(args.rendezvous_store)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # The agent's shared store outlives a world and keeps its keys: a group started again after a
        # membership change can read the previous world's addresses and fail to connect (pytorch#135712).
        print(
            "elastic_torch_job: start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its "
            "environment (see docs/distributed.md)",
            file=sys.stderr,
        )
        return 2
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun starts workers with close_fds: a daemon's control and status pipes never reach them.
        # What reaches them is SIGTERM from their agent, and the SDK turns that into a checkpoint request.
        for name in (gf_job.ENV_CONTROL_FD, gf_job.ENV_STATUS_FD):
            os.environ.pop(name, None)
    job = gf_job.connect(checkpoint_dir=args.checkpoint_dir, report_interval_s=args.report_interval_s)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    group = Group.join(args.collective_timeout_s)
    events = EventLog(args.events, group)
    code: int | str | None = 1
    try:
        code = train(args, job, group, events)
        return code
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        events.write("exit", code=code)
        events.close()
        group.close()


if __name__ == "__main__":
    sys.exit(main())
