#!/usr/bin/env python3
"""The numpy example's contract with PyTorch: a two-layer MLP fitted with Adam, resumable bit for bit.

Needs the ``torch`` extra (``pip install 'greenferry[torch]'``; on a CPU-only machine the CPU build). The
checkpoint holds the model and optimizer state dicts, the sampler's generator state, the step and the loss
history (``state.pt``), so the same seed gives the same losses whether or not the job was checkpointed and
resumed, on the same device type and torch version. ``--device cuda`` trains on the GPU (deterministic
algorithms are requested; set CUBLAS_WORKSPACE_CONFIG=:4096:8 as torch asks for bit-identical cuBLAS).

    python examples/torch_job.py --steps 500 --step-time-s 0.01
    python examples/torch_job.py --steps 500 --state-mb 100 --frozen-mb 400 --device cuda

Options, exit codes and the history file are the numpy example's (see examples/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import greenferry.job as gf_job
except ImportError:  # run from a source checkout without installing greenferry
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import greenferry.job as gf_job

FORMAT = 1
INPUTS = 16
HIDDEN = 32
SAMPLES = 4096
MIB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="train until this step (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and sampling seed")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (fixed, for reproducibility)")
    parser.add_argument("--step-time-s", type=float, default=0.0, help="sleep per step, to watch a demo")
    parser.add_argument("--state-mb", type=float, default=0.0, help="checkpoint bytes that change (MiB)")
    parser.add_argument(
        "--frozen-mb", type=float, default=0.0, help="checkpoint bytes that never change (MiB)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps (0: never)")
    parser.add_argument("--history", type=Path, default=Path("losses.json"), help="loss history (JSON)")
    parser.add_argument("--log-every", type=int, default=50, help="print the loss every N steps (0: never)")
    parser.add_argument(
        "--report-interval-s", type=float, default=1.0, help="progress reports at most this often"
    )
    args = parser.parse_args(argv)
    for name in ("steps", "checkpoint_every", "log_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.batch < 1 or args.threads < 1:
        parser.error("--batch and --threads must be >= 1")
    for name in ("lr", "step_time_s", "state_mb", "frozen_mb", "report_interval_s"):
        if not math.isfinite(getattr(args, name)) or getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= 0")
    return args


def _random_bytes(seed: list[int], size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed[0] * 1000 + seed[1])
    return torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator)


def _write_bytes(tensor: torch.Tensor, path: Path) -> None:
    with open(path, "wb") as handle:
        handle.write(tensor.numpy().tobytes())


class Trainer:
    """Model, optimizer, sampler and history: everything a checkpoint holds."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        data = torch.Generator().manual_seed(args.seed * 1000)
        self.x = torch.randn(SAMPLES, INPUTS, generator=data, dtype=torch.float64)
        direction = torch.randn(INPUTS, generator=data, dtype=torch.float64) / math.sqrt(INPUTS)
        noise = 0.05 * torch.randn(SAMPLES, 1, generator=data, dtype=torch.float64)
        self.y = torch.sin(3.0 * self.x @ direction)[:, None] + noise
        self.x, self.y = self.x.float().to(self.device), self.y.float().to(self.device)
        torch.manual_seed(args.seed * 1000 + 1)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(INPUTS, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.sampler = torch.Generator().manual_seed(args.seed * 1000 + 2)
        self.step = 0
        self.losses: list[float] = []
        self._pad_base: torch.Tensor | None = None
        self._frozen: torch.Tensor | None = None

    def train_step(self) -> float:
        """One Adam step on a sampled minibatch; returns the minibatch loss before the update."""
        index = torch.randint(0, SAMPLES, (self.args.batch,), generator=self.sampler).to(self.device)
        prediction = self.model(self.x[index])
        loss = torch.nn.functional.mse_loss(prediction, self.y[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        value = float(loss.item())
        self.losses.append(value)
        return value

    def _identity(self) -> dict[str, Any]:
        return {"format": FORMAT, "seed": self.args.seed, "batch": self.args.batch, "lr": self.args.lr}

    def write(self, directory: Path) -> None:
        """Write the whole training state into ``directory``."""
        state = {
            **self._identity(),
            "step": self.step,
            "losses": self.losses,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
        }
        torch.save(state, directory / "state.pt")
        if self.args.state_mb > 0:
            if self._pad_base is None:
                self._pad_base = _random_bytes([self.args.seed, 3], int(self.args.state_mb * MIB))
            _write_bytes(self._pad_base + (self.step % 255 + 1), directory / "state-pad.bin")
        if self.args.frozen_mb > 0:
            if self._frozen is None:
                self._frozen = _random_bytes([self.args.seed, 4], int(self.args.frozen_mb * MIB))
            _write_bytes(self._frozen, directory / "frozen.bin")

    def load(self, directory: Path) -> None:
        """Restore the training state from a checkpoint this script wrote."""
        state = torch.load(directory / "state.pt", map_location=self.device, weights_only=True)
        identity = {key: state.get(key) for key in self._identity()}
        if identity != self._identity():
            raise SystemExit(
                f"{directory}: checkpoint was written with {identity}, not {self._identity()}; "
                "resume with the same --seed, --batch and --lr"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(state["sampler"].cpu())
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]

    def write_history(self, path: Path) -> None:
        """The loss history so far as JSON (floats round-trip exactly)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"seed": self.args.seed, "step": self.step, "losses": self.losses}))
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    job = gf_job.connect(report_interval_s=args.report_interval_s)
    trainer = Trainer(args)
    resume = job.resume_path()
    if resume is not None:
        trainer.load(resume)
        print(f"resumed from {resume} at step {trainer.step}", flush=True)
    else:
        print(f"fresh start (seed {args.seed}, {trainer.device})", flush=True)
    job.resumed()  # loaded: the daemon times a restore until this line

    def save() -> None:
        job.save(
            trainer.write, step=trainer.step, extra={"loss": trainer.losses[-1] if trainer.losses else None}
        )
        trainer.write_history(args.history)

    while trainer.step < args.steps:
        if job.checkpoint_requested():
            save()
            print(f"checkpointed at step {trainer.step} ({job.checkpoint_reason})", flush=True)
            job.exit_checkpointed()
        loss = trainer.train_step()
        job.report(step=trainer.step, loss=loss, progress=trainer.step / args.steps)
        if args.log_every and trainer.step % args.log_every == 0:
            print(f"step {trainer.step} loss {loss:.6f}", flush=True)
        if args.checkpoint_every and trainer.step % args.checkpoint_every == 0 and trainer.step < args.steps:
            save()
        if args.step_time_s:
            time.sleep(args.step_time_s)
    trainer.write_history(args.history)
    job.report(
        step=trainer.step, loss=trainer.losses[-1] if trainer.losses else None, progress=1.0, force=True
    )
    job.complete()
    print(f"done: {trainer.step} steps")
    return gf_job.EXIT_COMPLETED


if __name__ == "__main__":
    sys.exit(main())
