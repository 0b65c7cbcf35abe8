"""Research loop behind ``--recipe best``: try pure-MLP ingredients fast, outside the package.

A plain PyTorch loop over the decoded pack (no Ignite, no checkpoints), so that one run prints
the validation accuracy of the trained weights and of their moving average, each with and
without the flipped image averaged in, epoch by epoch. What paid here went into the package
as flags (see README, "The best recipe"); this script stays as the record of how.

    python scripts/recipe_search.py --data ../shared/data/cifar10-jpg.tar.gz --zca 0.1 --epochs 20
    python scripts/recipe_search.py --data ../shared/data/cifar10-jpg.tar.gz --bench   # fp32 vs bf16 steps
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ignite_mlp.data import channel_stats, load_dataset


def zca_matrix(x: torch.Tensor, eps_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ZCA matrix of rows ``x`` (float), covariance made flip-symmetric first."""
    x = x.double()
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / len(x)
    perm = torch.arange(x.shape[1]).reshape(3, 32, 32).flip(2).flatten()
    cov = (cov + cov[perm][:, perm]) / 2
    mean = (mean + mean[perm]) / 2
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0)
    eps = eps_ratio * evals.mean()
    scale = 1 / torch.sqrt(evals + eps)
    # Unit average variance out: the regulariser shrinks the small directions.
    scale = scale / math.sqrt((evals / (evals + eps)).mean())
    w = (evecs * scale) @ evecs.T
    return mean.float(), w.float()


class Block(nn.Module):
    def __init__(self, dim: int, expansion: int, drop: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * expansion)
        self.fc2 = nn.Linear(dim * expansion, dim)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.gelu(self.fc1(self.norm(x))))
        return x + F.dropout(h, self.drop, self.training)


class ResMLP(nn.Module):
    def __init__(self, d_in: int, classes: int, dim: int, depth: int, expansion: int, drop: float) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.blocks = nn.Sequential(*[Block(dim, expansion, drop) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x.flatten(1)))))


def plain_mlp(d_in: int, classes: int, widths: list[int], drop: float, norm: str) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    w = d_in
    for h in widths:
        layers.append(nn.Linear(w, h, bias=False))
        layers.append(nn.BatchNorm1d(h) if norm == "batch" else nn.LayerNorm(h))
        layers.append(nn.GELU())
        if drop:
            layers.append(nn.Dropout(drop))
        w = h
    layers.append(nn.Linear(w, classes))
    return nn.Sequential(*layers)


class Projection(nn.Module):
    """A fixed linear layer (PCA whitening to fewer dimensions), optionally kept out of bf16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, fp32: bool) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.fp32 = fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.fp32:
            with torch.autocast("cpu", enabled=False):
                return F.linear(x.float(), self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def build_model(args: argparse.Namespace, d_in: int, projection: nn.Module | None = None) -> nn.Module:
    if projection is not None:
        d_in = args.pca
    if args.arch == "res":
        body = ResMLP(d_in, 10, args.dim, args.depth, args.expansion, args.dropout)
    else:
        body = plain_mlp(d_in, 10, args.widths, args.dropout, args.norm)
    return nn.Sequential(projection, body) if projection is not None else body


def pca_projection(x: torch.Tensor, eps_ratio: float, k: int, fp32: bool) -> Projection:
    """PCA whitening of flattened rows ``x`` to the top ``k`` directions (flip-symmetric stats)."""
    mean = x.mean(0)
    perm = torch.arange(x.shape[1]).reshape(3, 32, 32).flip(2).flatten()
    mean = (mean + mean[perm]) / 2
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), 4096):
        b = x[i : i + 4096] - mean
        cov += (b.T @ b).double()
    cov = cov / len(x)
    cov = (cov + cov[perm][:, perm]) / 2
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    eps = eps_ratio * evals.mean()
    scale = 1 / torch.sqrt(evals + eps)
    scale = scale / math.sqrt((evals / (evals + eps)).mean())
    w = (evecs[:, :k] * scale[:k]).T.float()  # (k, D)
    return Projection(w, -(w @ mean.float()), fp32)


def crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    p = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return p[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, tta: bool) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for i in range(0, len(x), 2000):
            xb = x[i : i + 2000]
            logits = model(xb).float()
            if tta:
                logits = logits + model(xb.flip(3)).float()
            correct += int((logits.argmax(1) == y[i : i + 2000]).sum())
    return 100 * correct / len(x)


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": rest, "weight_decay": 0.0}]
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99), fused=True)
    return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True, fused=True)


def lr_at(step: int, total: int, args: argparse.Namespace) -> float:
    warm = int(args.warmup * total)
    if args.sched == "onecycle":
        peak = max(1, int(0.3 * total))
        if step < peak:
            return args.lr / 25 + (args.lr - args.lr / 25) * step / peak
        return args.lr + (args.lr / 1e4 - args.lr) * (step - peak) / max(1, total - peak)
    if step < warm:
        return args.lr * (step + 1) / warm
    return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    ds = load_dataset(args.data, progress=False)
    t0 = time.time()
    xtr = ds.train_images.float().div_(255).flatten(1)
    xte = ds.test_images.float().div_(255).flatten(1)
    projection = None
    if args.pca:
        m, s = channel_stats(ds.train_images)
        m_t = torch.tensor(m).repeat_interleave(1024)
        s_t = torch.tensor(s).repeat_interleave(1024)
        xtr, xte = (xtr - m_t) / s_t, (xte - m_t) / s_t
        projection = pca_projection(xtr, args.zca, args.pca, args.proj_fp32)
    elif args.zca > 0:
        mean, w = zca_matrix(xtr, args.zca)
        xtr = (xtr - mean) @ w
        xte = (xte - mean) @ w
    else:
        m, s = channel_stats(ds.train_images)
        m_t = torch.tensor(m).repeat_interleave(1024)
        s_t = torch.tensor(s).repeat_interleave(1024)
        xtr, xte = (xtr - m_t) / s_t, (xte - m_t) / s_t
    xtr, xte = xtr.reshape(-1, 3, 32, 32).contiguous(), xte.reshape(-1, 3, 32, 32).contiguous()
    ytr, yte = ds.train_labels, ds.test_labels
    print(f"preprocessing {time.time() - t0:.1f}s", flush=True)
    model = build_model(args, 3072, projection)
    print(f"params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", flush=True)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True
    )
    opt = make_optimizer(model, args)
    steps_per_epoch = len(xtr) // args.batch
    total = steps_per_epoch * args.epochs
    g = torch.Generator().manual_seed(args.seed)
    step = 0
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        te = time.time()
        perm = torch.randperm(len(xtr), generator=g)
        hits = seen = 0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch : (i + 1) * args.batch]
            x, y = xtr[idx], ytr[idx]
            if args.pad:
                x = crop(x, args.pad, g)
            flip = torch.rand(len(x), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            y_soft = F.one_hot(y, 10).float()
            if args.mixup > 0 and epoch <= args.epochs - args.mix_off:
                lam = float(torch.distributions.Beta(args.mixup, args.mixup).sample())
                j = torch.randperm(len(x), generator=g)
                x = lam * x + (1 - lam) * x[j]
                y_soft = lam * y_soft + (1 - lam) * y_soft[j]
            y_soft = y_soft * (1 - args.ls) + args.ls / 10
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, args)
            with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
                logits = model(x).float()
            loss = torch.sum(-y_soft * F.log_softmax(logits, 1), 1).mean()
            hits += int((logits.argmax(1) == y_soft.argmax(1)).sum())
            seen += len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if args.ema_every and step % args.ema_every == 0:
                ema.update_parameters(model)
            step += 1
        train_s = time.time() - te
        last = epoch == args.epochs
        if last or epoch % args.eval_every == 0:
            acc = evaluate(model, xte, yte, args.bf16, False)
            acc_t = evaluate(model, xte, yte, args.bf16, True)
            emas = ""
            if args.ema_every:
                plain, tta = (evaluate(ema, xte, yte, args.bf16, t) for t in (False, True))
                emas = f" ema {plain:.2f} ema+tta {tta:.2f}"
            print(
                f"epoch {epoch} loss {float(loss):.3f} train {100 * hits / seen:.2f} "
                f"acc {acc:.2f} tta {acc_t:.2f}{emas} "
                f"train {train_s:.1f}s total {time.time() - start:.0f}s",
                flush=True,
            )


def bench(args: argparse.Namespace) -> None:
    """Seconds per training step, fp32 and bf16 alternating, same model and batch."""
    projection = None
    if args.pca:
        projection = Projection(torch.randn(args.pca, 3072) / 50, torch.zeros(args.pca), args.proj_fp32)
    model = build_model(args, 3072, projection)
    opt = make_optimizer(model, args)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    times: dict[bool, list[float]] = {False: [], True: []}
    for rnd in range(args.bench):
        for bf16 in (False, True):
            t = time.perf_counter()
            for _ in range(5):
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if rnd:
                times[bf16].append((time.perf_counter() - t) / 5)
    fp32, bf16 = sorted(times[False])[len(times[False]) // 2], sorted(times[True])[len(times[True]) // 2]
    print(f"median step: fp32 {1000 * fp32:.1f} ms, bf16 {1000 * bf16:.1f} ms, fp32/bf16 {fp32 / bf16:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    p.add_argument("--arch", choices=("plain", "res"), default="plain")
    p.add_argument("--widths", type=int, nargs="+", default=[2048, 1024, 512])
    p.add_argument("--norm", choices=("batch", "layer"), default="batch")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--zca", type=float, default=0.0, help="ZCA regulariser as a share of the mean eigenvalue")
    p.add_argument("--pca", type=int, default=0, help="PCA-whiten to this many dims as a fixed first layer")
    p.add_argument("--proj-fp32", action="store_true", help="keep the fixed projection out of bf16")
    p.add_argument("--pad", type=int, default=2)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--mix-off", type=int, default=0, help="last epochs without mixup")
    p.add_argument("--ls", type=float, default=0.1)
    p.add_argument("--opt", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--sched", choices=("onecycle", "cosine"), default="onecycle")
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay per update")
    p.add_argument("--ema-every", type=int, default=0, help="update the EMA every N steps (0: no EMA)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench", type=int, default=0, help="time N rounds of fp32 vs bf16 steps instead")
    args = p.parse_args()
    print(vars(args), flush=True)
    bench(args) if args.bench else train(args)


if __name__ == "__main__":
    main()
