"""Batch normalisation synchronised across DDP ranks, on any device.

``torch.nn.SyncBatchNorm`` only runs on GPUs, yet a CPU ``gloo`` job (tests, laptops) must train the same
model as one process with the global batch. :class:`CrossRankBatchNorm` computes the batch statistics from
per-rank sums reduced with a differentiable ``all_reduce``, so both its output and its gradient equal a
single-process BatchNorm over the concatenated batch. On CUDA the engine keeps torch's fused
``SyncBatchNorm``; this class is the fallback elsewhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the union of all ranks' batches (training mode); plain BatchNorm in eval mode."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.tensor([x.numel() / channels], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = all_reduce(stats)  # sum over ranks, gradient flows back to every rank's rows
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)  # biased, as BatchNorm
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
                self.num_batches_tracked.add_(1)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm layer with a synchronised one (torch's on CUDA, :class:`CrossRankBatchNorm` else).

    Parameters, buffers and ``requires_grad`` flags (e.g. a frozen BNNeck bias) are carried over.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CrossRankBatchNorm):
        out = CrossRankBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        out = out.to(next(iter(module.buffers()), torch.empty(0)).device)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out
