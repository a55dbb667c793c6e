"""A small PyTorch VAE written independently of vae_jax, used to cross-check its numbers.

Weights are copied from Flax parameters (a Dense kernel `[in, out]` is a Linear weight `[out, in]`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class TorchVAE(nn.Module):
    """Encoder 784 -> hidden -> 2J (mean, logvar); decoder J -> hidden -> 784 logits; ELU activations."""

    def __init__(self, latent_dim: int, encoder_hidden: list[int], decoder_hidden: list[int], num_pixels: int = 784):
        super().__init__()
        self.encoder = _mlp([num_pixels, *encoder_hidden, 2 * latent_dim], final_activation=False)
        self.decoder = _mlp([latent_dim, *decoder_hidden, num_pixels], final_activation=False)

    def load_flax(self, params: dict, dtype: torch.dtype) -> TorchVAE:
        """Copies `{"encoder": ..., "decoder": ...}` Flax variables into this module, in `dtype`."""
        for name, sequential in (("encoder", self.encoder), ("decoder", self.decoder)):
            dense = _flax_dense_layers(params[name]["params"])
            linears = [m for m in sequential if isinstance(m, nn.Linear)]
            assert len(dense) == len(linears)
            for (kernel, bias), linear in zip(dense, linears):
                linear.weight = nn.Parameter(torch.tensor(np.asarray(kernel).T, dtype=dtype))
                linear.bias = nn.Parameter(torch.tensor(np.asarray(bias), dtype=dtype))
        return self

    def terms(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example (nelbo, rec, kl) for x `[B, D]` and eps `[B, S, J]`."""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mean[:, None, :] + torch.exp(0.5 * logvar)[:, None, :] * eps
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x[:, None, :].expand_as(logits), reduction="none")
        rec = -log_px.sum(-1).mean(-1)
        kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=-1)
        return rec + kl, rec, kl

    def iwae_bound(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-example log (1/K) sum_k p(x, z_k) / q(z_k | x) for x `[B, D]` and eps `[B, K, J]`."""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)
        std = torch.exp(0.5 * logvar)
        z = mean[:, None, :] + std[:, None, :] * eps
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x[:, None, :].expand_as(logits), reduction="none").sum(-1)
        prior = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
        posterior = torch.distributions.Normal(mean[:, None, :].expand_as(z), std[:, None, :].expand_as(z))
        log_w = log_px + prior.log_prob(z).sum(-1) - posterior.log_prob(z).sum(-1)
        return torch.logsumexp(log_w, dim=-1) - math.log(eps.shape[1])

    def gradients_as_flax(self) -> dict:
        """The `.grad` of every Linear, in the nesting and layout of the Flax parameters."""
        return {
            name: [(linear.weight.grad.numpy().T, linear.bias.grad.numpy())
                   for linear in sequential if isinstance(linear, nn.Linear)]
            for name, sequential in (("encoder", self.encoder), ("decoder", self.decoder))
        }


def _flax_dense_layers(tree: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of every Dense layer in forward order: MLP layers Dense_0, Dense_1, ..., then the head."""
    layers = []
    if "MLP_0" in tree:
        mlp = tree["MLP_0"]
        layers += [(mlp[f"Dense_{i}"]["kernel"], mlp[f"Dense_{i}"]["bias"]) for i in range(len(mlp))]
    layers.append((tree["Dense_0"]["kernel"], tree["Dense_0"]["bias"]))
    return layers


def flax_dense_layers(params: dict) -> dict:
    """The Flax parameters (or gradients) as `{"encoder": [(kernel, bias), ...], "decoder": [...]}`."""
    return {name: _flax_dense_layers(params[name]["params"]) for name in ("encoder", "decoder")}


def _conv_same_stride2(h: torch.Tensor, kernel: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    """XLA's SAME padding for a 3x3 stride-2 convolution of an even side: nothing before, one row/column after."""
    weight = torch.tensor(np.asarray(kernel)).permute(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
    return F.conv2d(F.pad(h, (0, 1, 0, 1)), weight, torch.tensor(np.asarray(bias)), stride=2)


def _conv_transpose_same_stride2(h: torch.Tensor, kernel: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    """`lax.conv_transpose` with SAME padding, stride 2, 3x3 and an unflipped kernel, written out: put a zero
    between input pixels, pad 2 before and 1 after, and correlate with the kernel (output side = 2 x input side)."""
    batch, channels, side, _ = h.shape
    dilated = h.new_zeros(batch, channels, 2 * side - 1, 2 * side - 1)
    dilated[:, :, ::2, ::2] = h
    weight = torch.tensor(np.asarray(kernel)).permute(3, 2, 0, 1)
    return F.conv2d(F.pad(dilated, (2, 1, 2, 1)), weight, torch.tensor(np.asarray(bias)))


def conv_encoder(params: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ConvEncoder of vae_jax (ELU) from its Flax variables: x `[B, 784]` -> (mean, logvar) `[B, J]`."""
    tree = params["params"]
    h = x.reshape(-1, 1, 28, 28)
    for i in range(sum(name.startswith("Conv_") for name in tree)):
        h = F.elu(_conv_same_stride2(h, tree[f"Conv_{i}"]["kernel"], tree[f"Conv_{i}"]["bias"]))
    h = h.permute(0, 2, 3, 1).reshape(len(x), -1)  # flatten in Flax's [H, W, C] order
    dense = _flax_dense_layers(tree)
    for kernel, bias in dense[:-1]:
        h = F.elu(h @ torch.tensor(np.asarray(kernel)) + torch.tensor(np.asarray(bias)))
    out = h @ torch.tensor(np.asarray(dense[-1][0])) + torch.tensor(np.asarray(dense[-1][1]))
    return out.chunk(2, dim=-1)


def conv_decoder(params: dict, z: torch.Tensor, channels: int) -> torch.Tensor:
    """The ConvDecoder of vae_jax (ELU) from its Flax variables: z `[B, J]` -> logits `[B, 784]`."""
    tree = params["params"]
    h = z
    for kernel, bias in _flax_dense_layers(tree):  # the MLP, then the map to the first feature map
        h = F.elu(h @ torch.tensor(np.asarray(kernel)) + torch.tensor(np.asarray(bias)))
    side = int(round((h.shape[-1] / channels) ** 0.5))
    h = h.reshape(len(z), side, side, channels).permute(0, 3, 1, 2)
    layers = sum(name.startswith("ConvTranspose_") for name in tree)
    for i in range(layers):
        h = _conv_transpose_same_stride2(h, tree[f"ConvTranspose_{i}"]["kernel"], tree[f"ConvTranspose_{i}"]["bias"])
        h = F.elu(h) if i < layers - 1 else h
    return h.permute(0, 2, 3, 1).reshape(len(z), -1)
