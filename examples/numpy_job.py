#!/usr/bin/env python3
"""A real (small) training job for greenferry, in numpy only: a two-layer MLP fitted with Adam.

The model learns y = sin(x . a) + noise on a synthetic data set drawn from ``--seed``. Everything that
decides the next step is in the checkpoint (parameters, Adam moments and step count, the sampler's RNG
state, the loss history), so the same seed gives bit-identical losses whether or not the job was
checkpointed and resumed, any number of times, on any node with the same numpy.

    python examples/numpy_job.py --steps 500 --step-time-s 0.01           # standalone, ./checkpoint
    python examples/numpy_job.py --steps 500 --state-mb 100 --frozen-mb 400  # a 500 MB checkpoint

``--state-mb`` pads the checkpoint with bytes that change at every checkpoint (like optimizer state) and
``--frozen-mb`` with bytes that never change (like frozen embeddings), so migrations move real bytes and a
chunk cache has something to skip. The loss history goes to ``--history`` (JSON) at every checkpoint and at
the end. Exit codes: 0 done, 75 checkpointed (resume by running it again), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

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
PARAMS = ("w1", "b1", "w2", "b2")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="train until this step (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and sampling seed")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
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
    for name in ("steps", "batch", "checkpoint_every", "log_every"):
        if getattr(args, name) < 0 or (name == "batch" and args.batch == 0):
            parser.error(f"--{name.replace('_', '-')} must be {'> 0' if name == 'batch' else '>= 0'}")
    for name in ("lr", "step_time_s", "state_mb", "frozen_mb", "report_interval_s"):
        if not np.isfinite(getattr(args, name)) or getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= 0")
    return args


class Trainer:
    """The model, the optimizer, the sampler and the history: everything a checkpoint holds."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        data_rng = np.random.default_rng([args.seed, 0])
        self.x = data_rng.standard_normal((SAMPLES, INPUTS))
        direction = data_rng.standard_normal(INPUTS) / np.sqrt(INPUTS)
        self.y = np.sin(3.0 * self.x @ direction)[:, None] + 0.05 * data_rng.standard_normal((SAMPLES, 1))
        init_rng = np.random.default_rng([args.seed, 1])
        self.params: dict[str, np.ndarray] = {
            "w1": init_rng.standard_normal((INPUTS, HIDDEN)) / np.sqrt(INPUTS),
            "b1": np.zeros(HIDDEN),
            "w2": init_rng.standard_normal((HIDDEN, 1)) / np.sqrt(HIDDEN),
            "b2": np.zeros(1),
        }
        self.m = {name: np.zeros_like(value) for name, value in self.params.items()}
        self.v = {name: np.zeros_like(value) for name, value in self.params.items()}
        self.step = 0
        self.sampler = np.random.default_rng([args.seed, 2])
        self.losses: list[float] = []
        self._pad_base: np.ndarray | None = None
        self._frozen: np.ndarray | None = None

    # --------------------------------------------------------------------------- training

    def train_step(self) -> float:
        """One Adam step on a sampled minibatch; returns the minibatch loss before the update."""
        p = self.params
        index = self.sampler.integers(0, SAMPLES, size=self.args.batch)
        x, y = self.x[index], self.y[index]
        h = np.tanh(x @ p["w1"] + p["b1"])
        error = h @ p["w2"] + p["b2"] - y
        loss = float(np.mean(error**2))
        d_out = 2.0 * error / len(x)
        d_h = (d_out @ p["w2"].T) * (1.0 - h**2)
        grads = {"w1": x.T @ d_h, "b1": d_h.sum(axis=0), "w2": h.T @ d_out, "b2": d_out.sum(axis=0)}
        self.step += 1
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for name in PARAMS:
            self.m[name] = beta1 * self.m[name] + (1 - beta1) * grads[name]
            self.v[name] = beta2 * self.v[name] + (1 - beta2) * grads[name] ** 2
            m_hat = self.m[name] / (1 - beta1**self.step)
            v_hat = self.v[name] / (1 - beta2**self.step)
            p[name] = p[name] - self.args.lr * m_hat / (np.sqrt(v_hat) + eps)
        self.losses.append(loss)
        return loss

    # --------------------------------------------------------------------------- checkpoints

    def _identity(self) -> dict[str, Any]:
        return {"format": FORMAT, "seed": self.args.seed, "batch": self.args.batch, "lr": self.args.lr}

    def write(self, directory: Path) -> None:
        """Write the whole training state into ``directory``."""
        arrays = {f"param_{n}": self.params[n] for n in PARAMS}
        arrays |= {f"adam_m_{n}": self.m[n] for n in PARAMS} | {f"adam_v_{n}": self.v[n] for n in PARAMS}
        arrays["losses"] = np.asarray(self.losses, dtype=np.float64)
        np.savez(directory / "model.npz", **arrays)
        state = {**self._identity(), "step": self.step, "sampler": self.sampler.bit_generator.state}
        (directory / "state.json").write_text(json.dumps(state, sort_keys=True))
        if self.args.state_mb > 0:
            if self._pad_base is None:
                size = int(self.args.state_mb * MIB)
                self._pad_base = np.random.default_rng([self.args.seed, 3]).integers(0, 256, size, np.uint8)
            # Different bytes at every checkpoint (as optimizer state is), deterministic from the step.
            (self._pad_base + np.uint8(self.step % 255 + 1)).tofile(directory / "state-pad.bin")
        if self.args.frozen_mb > 0:
            if self._frozen is None:
                size = int(self.args.frozen_mb * MIB)
                self._frozen = np.random.default_rng([self.args.seed, 4]).integers(0, 256, size, np.uint8)
            self._frozen.tofile(directory / "frozen.bin")

    def load(self, directory: Path) -> None:
        """Restore the training state from a checkpoint this script wrote."""
        state = json.loads((directory / "state.json").read_text())
        identity = {key: state.get(key) for key in self._identity()}
        if identity != self._identity():
            raise SystemExit(
                f"{directory}: checkpoint was written with {identity}, not {self._identity()}; "
                "resume with the same --seed, --batch and --lr"
            )
        with np.load(directory / "model.npz") as arrays:
            self.params = {n: arrays[f"param_{n}"] for n in PARAMS}
            self.m = {n: arrays[f"adam_m_{n}"] for n in PARAMS}
            self.v = {n: arrays[f"adam_v_{n}"] for n in PARAMS}
            self.losses = [float(v) for v in arrays["losses"]]
        self.step = int(state["step"])
        self.sampler.bit_generator.state = state["sampler"]
        if len(self.losses) != self.step:
            raise SystemExit(f"{directory}: {len(self.losses)} losses for step {self.step}")

    def write_history(self, path: Path) -> None:
        """The loss history so far as JSON (floats round-trip exactly)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"seed": self.args.seed, "step": self.step, "losses": self.losses}))
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    job = gf_job.connect(report_interval_s=args.report_interval_s)
    trainer = Trainer(args)
    resume = job.resume_path()
    if resume is not None:
        trainer.load(resume)
        print(f"resumed from {resume} at step {trainer.step}", flush=True)
    else:
        print(f"fresh start (seed {args.seed})", flush=True)
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
    print(
        f"done: {trainer.step} steps, final loss {trainer.losses[-1] if trainer.losses else float('nan'):.6f}"
    )
    return gf_job.EXIT_COMPLETED


if __name__ == "__main__":
    sys.exit(main())
