"""Training the attentive probe on frozen features (AdamW, cosine learning rate) and measuring its top-1 accuracy."""
from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa_fast.eval.features import Features
from vjepa_fast.eval.options import EvalConfig, EvalError, probe_qk_std
from vjepa_fast.models.probe import AttentiveProbe

log = logging.getLogger("vjepa_fast.eval")

VAL_BATCH = 256  # clips per probe call when validating on cached features (per-clip results do not depend on it)
# The probe starts on a plateau: its one query attends to all tokens alike, so it can learn little more than the label
# frequencies, and its loss stays at their entropy (the chance loss: ln C for balanced classes) until the query finds
# the tokens that carry the label; then the loss drops within a few epochs. A probe whose final epoch's mean training
# loss is still within PLATEAU_MARGIN of the chance loss has not left it (heads measured on it: 2.16-2.19 against
# ln 9 = 2.197, docs/results.md), and its accuracy then measures its seed, not the encoder.
# The reference is the labels' entropy, not ln C, so that a probe that learnt only the frequencies of unbalanced
# classes (its bias) still counts as on the plateau.
PLATEAU_MARGIN = 0.05


def probe_logits(probe: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """features [B, V, L, D] -> logits [B, V, C] (the probe in fp32 whatever the encoder's precision)."""
    B, V, L, D = feats.shape
    return probe(feats.reshape(B * V, L, D).float()).reshape(B, V, -1)


def make_optimizer(modules, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW over one module or several (the supervised ceiling's encoder and head); no weight decay on biases, norms
    and the probe's query token."""
    modules = (modules,) if isinstance(modules, nn.Module) else tuple(modules)
    named = [(n, p) for m in modules for n, p in m.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and n != "query"]
    rest = [p for n, p in named if not (p.ndim >= 2 and n != "query")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)


def cosine_lr(step: int, total: int, lr: float) -> float:
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def train_epoch(probe: nn.Module, opt: torch.optim.Optimizer, batches, step: int, total: int,
                lr: float) -> tuple[float, float, int]:
    """One pass; returns (mean loss, train accuracy, next step)."""
    probe.train()
    loss_sum, correct, count = 0.0, 0, 0
    for feats, labels in batches:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, lr)
        logits = probe_logits(probe, feats)  # [B, V, C]
        V = logits.shape[1]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(V))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * labels.numel()
        correct += int((logits.detach().softmax(-1).mean(1).argmax(-1) == labels).sum())
        count += labels.numel()
        step += 1
    if count == 0:
        raise EvalError("train split: no readable samples")
    if not math.isfinite(loss_sum):
        raise EvalError(f"probe loss is {loss_sum / count}: lower --lr or check the features")
    return loss_sum / count, correct / count, step


def chance_loss(counts: torch.Tensor) -> float:
    """Cross-entropy of predicting the label frequencies `counts` [C] (the entropy; ln C when balanced)."""
    p = counts[counts > 0].double() / counts.sum()
    return float((p * (1 / p).log()).sum())


def on_plateau(final_loss: float, chance: float) -> bool:
    """Whether a probe whose last epoch's mean training loss is `final_loss` is still on its plateau (PLATEAU_MARGIN);
    never with a single class seen (chance 0: nothing to learn)."""
    return chance > 0 and final_loss > (1 - PLATEAU_MARGIN) * chance


def counting(batches, counts: torch.Tensor):
    """The batches unchanged; adds each batch's label counts to `counts` [C] on the way."""
    for feats, labels in batches:
        n = torch.bincount(labels, minlength=len(counts))
        if len(n) > len(counts):
            raise EvalError(f"label {len(n) - 1} is out of range for {len(counts)} classes (raise --num-classes)")
        counts += n
        yield feats, labels


@torch.no_grad()
def accuracy(probe: nn.Module, batches) -> tuple[float, int]:
    """Top-1 accuracy, the class probabilities averaged over views; returns (accuracy, samples)."""
    probe.eval()
    correct, count = 0, 0
    for feats, labels in batches:
        pred = probe_logits(probe, feats).softmax(-1).mean(1).argmax(-1)
        correct += int((pred == labels).sum())
        count += labels.numel()
    if count == 0:
        raise EvalError("validation split: no readable samples")
    return correct / count, count


def train_probe(train_feats: "Features", val_feats: "Features", encoder: nn.Module, num_classes: int,
                e: EvalConfig, device: torch.device) -> dict:
    """Train one probe (seed e.seed: its initialisation and the shuffling) on cached or streamed frozen features;
    returns {"accuracy", "val_samples", "history", "train_loss" (the last epoch's), "chance_loss" (of its training
    labels), "plateau" (whether the probe ended on its plateau, on_plateau)}."""
    torch.manual_seed(e.seed)
    train_feats.seed = val_feats.seed = e.seed
    probe = AttentiveProbe(encoder.embed_dim, num_classes, e.probe_heads or encoder.num_heads, depth=e.probe_depth,
                           qk_init_std=probe_qk_std(e)).to(device)
    opt = make_optimizer(probe, e.lr, e.weight_decay)
    total = e.epochs * train_feats.steps_per_epoch()
    log.info("probe: %d classes, %d train / %d val clips, %d epochs, batch %d, lr %g, seed %d", num_classes,
             len(train_feats.split.dataset), len(val_feats.split.dataset), e.epochs, e.batch_size, e.lr, e.seed)
    history, step, val_acc, n_val = [], 0, None, 0
    counts = torch.zeros(num_classes, dtype=torch.long, device=device)
    for epoch in range(e.epochs):
        t0 = time.perf_counter()
        loss, train_acc, step = train_epoch(probe, opt, counting(train_feats.batches(epoch), counts), step, total,
                                            e.lr)
        row = {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": train_acc}
        # Validation every epoch only when its features are cached (cheap); otherwise once, at the end.
        if val_feats.cacheable or epoch + 1 == e.epochs:
            val_acc, n_val = accuracy(probe, val_feats.batches(0, cached_batch=VAL_BATCH))
            row["val_accuracy"] = val_acc
        history.append(row)
        log.info("epoch %d/%d: train loss %.4f acc %.4f%s (%.1f s)", epoch + 1, e.epochs, loss, train_acc,
                 f" | val acc {val_acc:.4f}" if "val_accuracy" in row else "", time.perf_counter() - t0)
    chance = chance_loss(counts.cpu())
    return {"accuracy": val_acc, "val_samples": n_val, "history": history, "train_loss": history[-1]["train_loss"],
            "chance_loss": chance, "plateau": on_plateau(history[-1]["train_loss"], chance)}
