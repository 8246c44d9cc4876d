"""Milliseconds per training step of a backbone on a benchmark corpus (issue 15: InfoCTM per epoch).

    python benchmarks/training_step.py --model infoctm --threads 2 [--steps 30] [--profile] [--set K=V]

Builds the model as `xtm-train` does (default hyper-parameters, K=50, seed 1), takes the first
batches of an epoch's order, runs 5 warm-up steps, then times `--steps` full steps (forward, backward,
the model's gradient clipping if it has one, Adam). Steps x steps-per-epoch is the epoch's training
time without the loader and the checkpoint; use it to compare code versions in one quiet window (the
machine has 2 cores: nothing else running).
`--profile` adds torch's operator table for 10 steps.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from bench_data import DATASETS, dataset_dir, dict_file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="infoctm")
    p.add_argument("--dataset", default="ECNews", choices=list(DATASETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone hyper-parameter, as xtm-train's --set (e.g. tami_every=2)")
    args = p.parse_args()

    from xtm.config import TrainConfig, parse_key_values
    from xtm.models_zoo.components import SparseRows
    from xtm.trainer.data.batches import InMemoryBatches, steps_per_epoch
    from xtm.trainer.data.loading import load_corpus
    from xtm.trainer.loop.torch_setup import seed_everything
    from xtm.trainer.loop.training import build_model, make_optimizer

    torch.set_num_threads(args.threads)
    corpus = load_corpus(dataset_dir(args.dataset), dict_path=dict_file(args.dataset), progress=False)
    cfg = TrainConfig(model=args.model, num_topics=50, seed=1, hparams=parse_key_values(args.set))
    rng = seed_everything(cfg.seed)
    model = build_model(corpus, cfg)
    optimizer = make_optimizer(model, cfg.lr)
    data = InMemoryBatches(corpus)
    per_epoch = steps_per_epoch(data.sizes(), cfg.batch_size)
    batches = list(itertools.islice(data.epoch(rng, cfg.batch_size), args.steps + 15))
    cpu = torch.device("cpu")
    grad_clip = model.hparams.get("grad_clip")  # as the training loop does in phase 1 (XTRA clips)

    def step(batch: list) -> None:
        x = [SparseRows.from_csr(m, cpu) for m, _ in batch]
        losses = model(x, [torch.from_numpy(r) for _, r in batch])
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()

    for b in batches[:5]:
        step(b)
    t = time.perf_counter()
    for b in batches[5:5 + args.steps]:
        step(b)
    ms = (time.perf_counter() - t) / args.steps * 1000
    print(f"{args.model} on {args.dataset}, {args.threads} thread(s): {ms:.1f} ms/step x {per_epoch} steps "
          f"= {ms * per_epoch / 1000:.1f} s/epoch of steps")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[5:15]:
                step(b)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
