"""Run the public TopMost 1.0.2 NMTM / InfoCTM as a benchmark peer (run INSIDE the peer venv).

Setup: benchmarks/setup_topmost_peer.sh. Example:
    $PEER_VENV/bin/python benchmarks/peer_topmost.py --data ../shared/data/ECNews --lang1 en --lang2 cn \
        --dict ../shared/data/dict/ch_en_dict.dat --model NMTM --topics 50 --epochs 5 --out /tmp/peer

Uses TopMost's own CrosslingualDataset, model classes and CrosslingualTrainer.train() unchanged
(defaults: batch 200, Adam lr 0.002, no LR scheduler). Per-epoch time is taken by replacing the
`tqdm` name inside TopMost's trainer module with a timing iterator, so the timed loop body is
TopMost's own (forward, loss accumulation, zero_grad, backward, step). One TopMost epoch =
ceil(max(N_lang1, N_lang2) / batch) steps, each with one batch of each language (smaller corpus cycled).
After the loop, train() itself also computes top words and eval-mode train theta (`post_train_seconds`).
Outputs: OUT/peer_outputs.npz (beta_<iso>, {train,test}_theta_<iso>[_softmax]) and OUT/peer_timing.json.
With --snapshot-every N, the same arrays after every N-th epoch go to OUT/snapshots/epoch-NNNN.npz (with
the epochs' own seconds so far), taken outside the timed loop body: a run stopped early still leaves its
learning curve, which `benchmarks/time_to_quality.py --runs OUT` evaluates with xtm's evaluation.
With --log-kl (InfoCTM), each language's mean KL term per epoch goes to OUT/kl.jsonl, to set beside xtm's
kl_<lang> in history.json.
Note: TopMost's get_theta in eval mode returns the batch-normed encoder mean `mu` (pre-softmax).
"""

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
import types

ISO = {"cn": "zh"}  # TopMost/dataset language codes -> ISO codes for output keys
WEIGHT_MI = {"ECNews": 30.0, "Rakuten_Amazon": 50.0, "Amazon_Review": 50.0}  # InfoCTM run.sh values


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is KB on Linux


def import_topmost():
    """Import TopMost with a stand-in for torchvision (TopMost only uses it to download datasets)."""
    import sentence_transformers  # noqa: F401  (must be imported before the stand-in is registered)
    import torch
    import transformers  # noqa: F401

    def download_url(url, *args, **kwargs):
        raise RuntimeError(f"peer_topmost: downloads are disabled (TopMost tried to fetch {url})")

    names = ("torchvision", "torchvision.datasets", "torchvision.datasets.utils")
    mods = [types.ModuleType(n) for n in names]
    mods[2].download_url = download_url
    mods[0].datasets, mods[1].utils = mods[1], mods[2]
    sys.modules.update(zip(names, mods, strict=True))
    import topmost

    return topmost, torch


class EpochTimer:
    """Drop-in for tqdm(range(...)) in TopMost's trainer: times each pass of the epoch loop body and,
    after it, calls `after_epoch(epoch, seconds so far)` (untimed; TopMost sets train mode each epoch)."""

    def __init__(self, after_epoch=None):
        self.seconds = []
        self.after_epoch = after_epoch

    def __call__(self, iterable, *args, **kwargs):
        for epoch in iterable:
            t0 = time.perf_counter()
            yield epoch
            self.seconds.append(time.perf_counter() - t0)
            print(f"epoch {epoch}: {self.seconds[-1]:.2f} s, peak RSS {rss_mb():.0f} MB", flush=True)
            if self.after_epoch is not None:
                self.after_epoch(epoch, list(self.seconds))


def softmax(x):
    import numpy as np

    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def output_arrays(trainer, iso1, iso2):
    """beta and train/test theta (TopMost's eval-time mu, and its softmax) under ISO-keyed names."""
    import numpy as np

    beta_1, beta_2 = trainer.get_beta()
    train_theta_1, train_theta_2, test_theta_1, test_theta_2 = trainer.export_theta()
    arrays = {f"beta_{iso1}": beta_1, f"beta_{iso2}": beta_2}
    for split, th1, th2 in (("train", train_theta_1, train_theta_2), ("test", test_theta_1, test_theta_2)):
        for iso, th in ((iso1, th1), (iso2, th2)):
            arrays[f"{split}_theta_{iso}"] = th.astype(np.float32)
            arrays[f"{split}_theta_{iso}_softmax"] = softmax(th).astype(np.float32)
    return arrays


def snapshot_writer(trainer, out, every, iso1, iso2):
    """after_epoch callback saving OUT/snapshots/epoch-NNNN.npz every `every` epochs (written whole, then renamed)."""
    import numpy as np

    folder = os.path.join(out, "snapshots")
    os.makedirs(folder, exist_ok=True)

    def after_epoch(epoch, seconds):
        if epoch % every:
            return
        path = os.path.join(folder, f"epoch-{epoch:04d}.npz")
        with open(path + ".tmp", "wb") as fh:
            np.savez_compressed(fh, epoch_seconds=np.asarray(seconds), **output_arrays(trainer, iso1, iso2))
        os.replace(path + ".tmp", path)

    return after_epoch


def kl_recorder(model, out, iso1, iso2):
    """Wrap TopMost's per-language VAE loss to record each language's mean KL term (nats per document) and
    return an after_epoch callback appending {"epoch", "kl_<iso1>", "kl_<iso2>"} to OUT/kl.jsonl: xtm's
    history.json has these terms, and comparing them tells whether an encoder's near posterior collapse is
    the method's or xtm's. TopMost's forward calls compute_loss_TM for lang1 then lang2 on every step, so
    calls alternate between the languages. The KL is the loss's own Gaussian KL to the Laplace prior,
    recomputed without gradient (a small cost inside the timed loop, beside TAMI's [V x V] pass)."""
    import torch

    sums, counts, calls = [0.0, 0.0], [0, 0], [0]
    original = model.compute_loss_TM

    def recording(recon_x, x, mu, logvar):
        with torch.no_grad():
            var = logvar.exp()
            kld = 0.5 * ((var / model.var2 + (mu - model.mu2) ** 2 / model.var2 + model.var2.log() - logvar).sum(1)
                         - model.num_topics)
            side = calls[0] % 2
            sums[side] += float(kld.sum())
            counts[side] += kld.shape[0]
            calls[0] += 1
        return original(recon_x, x, mu, logvar)

    model.compute_loss_TM = recording

    def after_epoch(epoch, seconds):
        row = {"epoch": epoch, **{f"kl_{iso}": sums[i] / max(counts[i], 1) for i, iso in enumerate((iso1, iso2))}}
        with open(os.path.join(out, "kl.jsonl"), "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"epoch {epoch}: KL {iso1} {row[f'kl_{iso1}']:.2f}, {iso2} {row[f'kl_{iso2}']:.2f}", flush=True)
        sums[:], counts[:] = [0.0, 0.0], [0, 0]

    return after_epoch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset dir, e.g. ../shared/data/ECNews")
    p.add_argument("--lang1", default="en")
    p.add_argument("--lang2", default="cn")
    p.add_argument("--dict", required=True, help="bilingual dict, '<lang2 word> <lang1 word>' per line")
    p.add_argument("--model", choices=["NMTM", "InfoCTM"], required=True)
    p.add_argument("--topics", type=int, default=50)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--lr-scheduler", default=None, choices=[None, "StepLR"], help="TopMost default: none")
    p.add_argument("--weight-mi", type=float, default=None, help="InfoCTM; default 30 ECNews, 50 Rakuten")
    p.add_argument("--snapshot-every", type=int, default=0, help="save outputs every N epochs (0: only at the end)")
    p.add_argument("--log-kl", action="store_true",
                   help="InfoCTM: each language's mean KL term per epoch into OUT/kl.jsonl (xtm's kl_<lang>)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy/torch load their BLAS
    t_import = time.perf_counter()
    topmost, torch = import_topmost()
    import numpy as np

    import_seconds = time.perf_counter() - t_import
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    dataset_name = os.path.basename(os.path.normpath(args.data))
    iso1, iso2 = ISO.get(args.lang1, args.lang1), ISO.get(args.lang2, args.lang2)

    t0 = time.perf_counter()
    dataset = topmost.CrosslingualDataset(args.data, lang1=args.lang1, lang2=args.lang2, dict_path=args.dict,
                                          device="cpu", batch_size=args.batch_size, as_tensor=True)
    load_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    weight_mi = None
    if args.model == "NMTM":
        model = topmost.NMTM(Map_en2cn=dataset.Map_en2cn, Map_cn2en=dataset.Map_cn2en,
                             vocab_size_en=dataset.vocab_size_en, vocab_size_cn=dataset.vocab_size_cn,
                             num_topics=args.topics)
    else:
        weight_mi = args.weight_mi if args.weight_mi is not None else WEIGHT_MI.get(dataset_name, 30.0)
        model = topmost.InfoCTM(trans_e2c=dataset.trans_matrix_en,
                                pretrain_word_embeddings_en=dataset.pretrained_WE_en,
                                pretrain_word_embeddings_cn=dataset.pretrained_WE_cn,
                                vocab_size_en=dataset.vocab_size_en, vocab_size_cn=dataset.vocab_size_cn,
                                num_topics=args.topics, weight_MI=weight_mi)
    model_init_seconds = time.perf_counter() - t0
    rss_after_load = rss_mb()
    print(f"loaded {dataset_name} in {load_seconds:.1f} s, model init {model_init_seconds:.1f} s, "
          f"dict pairs {int(dataset.trans_matrix_en.sum())}, peak RSS {rss_after_load:.0f} MB", flush=True)

    trainer = topmost.CrosslingualTrainer(model, dataset, epochs=args.epochs, learning_rate=args.lr,
                                          batch_size=args.batch_size, lr_scheduler=args.lr_scheduler)
    with open(os.path.join(args.out, "peer_run.json"), "w") as f:  # what time_to_quality.py needs to read snapshots
        json.dump({"model": args.model.lower(), "path": os.path.abspath(args.data), "langs": [iso1, iso2],
                   "seed": args.seed, "epochs": args.epochs, "impl": f"TopMost {_version('topmost')}"}, f, indent=2)
    callbacks = [snapshot_writer(trainer, args.out, args.snapshot_every, iso1, iso2)] if args.snapshot_every > 0 else []
    if args.log_kl:
        if args.model != "InfoCTM":
            raise SystemExit("peer_topmost: --log-kl reads InfoCTM's compute_loss_TM; not available for NMTM")
        open(os.path.join(args.out, "kl.jsonl"), "w").close()  # this run's rows only
        callbacks.append(kl_recorder(model, args.out, iso1, iso2))
    timer = EpochTimer((lambda epoch, seconds: [cb(epoch, seconds) for cb in callbacks]) if callbacks else None)
    sys.modules[type(trainer).__module__].tqdm = timer  # time TopMost's own epoch loop
    t0 = time.perf_counter()
    top_words_1, top_words_2, _, _ = trainer.train()
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    arrays = output_arrays(trainer, iso1, iso2)
    export_seconds = time.perf_counter() - t0
    np.savez_compressed(os.path.join(args.out, "peer_outputs.npz"), **arrays)
    for iso, words in ((iso1, top_words_1), (iso2, top_words_2)):
        with open(os.path.join(args.out, f"peer_top_words_{iso}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(words) + "\n")

    timing = {
        "seconds_per_epoch": statistics.median(timer.seconds) if timer.seconds else None,
        "epoch_seconds": timer.seconds,
        "peak_rss_mb": rss_mb(),
        "peak_rss_after_load_mb": rss_after_load,
        "load_seconds": load_seconds,
        "model_init_seconds": model_init_seconds,
        "import_seconds": import_seconds,
        "train_call_seconds": train_seconds,
        "post_train_seconds": train_seconds - sum(timer.seconds),
        "export_seconds": export_seconds,
        "batches_per_epoch": len(dataset.train_dataloader),
        "topmost_version": _version("topmost"),
        "torch_version": torch.__version__,
        "threads": args.threads,
        "model": args.model,
        "dataset": dataset_name,
        "langs": [iso1, iso2],
        "epochs": args.epochs,
        "topics": args.topics,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "lr_scheduler": args.lr_scheduler,
        "weight_MI": weight_mi,
        "seed": args.seed,
        "dict_pairs": int(dataset.trans_matrix_en.sum()),
        "eval_theta": "TopMost get_theta in eval mode = encoder mean mu (pre-softmax); *_softmax = softmax(mu)",
    }
    with open(os.path.join(args.out, "peer_timing.json"), "w") as f:
        json.dump(timing, f, indent=2)
    print(json.dumps({k: timing[k] for k in ("seconds_per_epoch", "peak_rss_mb", "load_seconds")}), flush=True)


def _version(dist):
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
