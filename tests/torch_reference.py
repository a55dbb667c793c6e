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


def _linear(params: dict, name: str, dtype: torch.dtype) -> nn.Linear:
    """A Linear holding the Flax Dense `params[name]` (kernel `[in, out]` becomes weight `[out, in]`)."""
    kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
    linear = nn.Linear(*kernel.shape).to(dtype)
    linear.weight = nn.Parameter(torch.tensor(kernel.T, dtype=dtype))
    linear.bias = nn.Parameter(torch.tensor(bias, dtype=dtype))
    return linear


class GatedStack(nn.Module):
    """Gated dense layers h -> (h W + b) * sigmoid(h V + c) (Tomczak & Welling's GatedDense), from a Flax MLP whose
    Dense layers alternate value and gate."""

    def __init__(self, mlp: dict, dtype: torch.dtype):
        super().__init__()
        names = sorted(mlp, key=lambda name: int(name.split("_")[1]))
        self.values = nn.ModuleList(_linear(mlp, name, dtype) for name in names[0::2])
        self.gates = nn.ModuleList(_linear(mlp, name, dtype) for name in names[1::2])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for value, gate in zip(self.values, self.gates):
            h = value(h) * torch.sigmoid(gate(h))
        return h


class GaussianHead(nn.Module):
    """Gated layers, then a Linear split into mean and logvar = bound * tanh(raw / bound)."""

    def __init__(self, tree: dict, bound: float, dtype: torch.dtype):
        super().__init__()
        self.body = GatedStack(tree["MLP_0"], dtype)
        self.head = _linear(tree, "Dense_0", dtype)
        self.bound = bound

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.head(self.body(h)).chunk(2, dim=-1)
        return mean, self.bound * torch.tanh(raw / self.bound)


class Joined(nn.Module):
    """One gated layer on each of two inputs, concatenated, then one more gated layer."""

    def __init__(self, tree: dict, dtype: torch.dtype):
        super().__init__()
        self.a, self.b, self.joint = (GatedStack(tree[f"MLP_{i}"], dtype) for i in range(3))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ha, hb = self.a(a), self.b(b)
        ha, hb = torch.broadcast_tensors(ha, hb)
        return self.joint(torch.cat([ha, hb], dim=-1))


class TorchHVAE(nn.Module):
    """The two-layer HVAE of Tomczak & Welling (2018), written from the paper: q(z2|x) q(z1|x,z2) and
    p(z2) p(z1|z2) p(x|z1,z2), every conditional Gaussian a gated MLP, p(z2) = N(0, I) or the VampPrior; its weights
    copied from vae_jax's `HierarchicalVAE` variables."""

    def __init__(self, variables: dict, bound: float, dtype: torch.dtype):
        super().__init__()
        tree = variables["params"]
        self.q_z2 = GaussianHead(tree["q_z2"], bound, dtype)
        self.q_z1_trunk, self.q_z1_head = Joined(tree["q_z1_trunk"], dtype), _linear(tree, "q_z1_head", dtype)
        self.p_z1 = GaussianHead(tree["p_z1"], bound, dtype)
        self.p_x_trunk, self.p_x_head = Joined(tree["p_x_trunk"], dtype), _linear(tree, "p_x_head", dtype)
        self.bound = bound
        self.pseudo_logits = None
        if "prior" in tree:
            self.pseudo_logits = nn.Parameter(
                torch.tensor(np.asarray(tree["prior"]["pseudo_input_logits"]), dtype=dtype))

    def log_prior_z2(self, z2: torch.Tensor) -> torch.Tensor:
        if self.pseudo_logits is None:
            return torch.distributions.Normal(torch.zeros_like(z2), torch.ones_like(z2)).log_prob(z2).sum(-1)
        means, logvars = self.q_z2(torch.sigmoid(self.pseudo_logits))
        components = torch.distributions.Independent(torch.distributions.Normal(means, torch.exp(0.5 * logvars)), 1)
        uniform = torch.distributions.Categorical(logits=torch.zeros(len(means), dtype=means.dtype))
        return torch.distributions.MixtureSameFamily(uniform, components).log_prob(z2)

    def log_densities(self, x: torch.Tensor, eps1: torch.Tensor, eps2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(log p(x|z1,z2), log p(z1, z2), log q(z1, z2|x)), each `[S]`, for one example x `[D]`, noise `[S, J]`."""
        mean2, logvar2 = self.q_z2(x)
        z2 = mean2 + torch.exp(0.5 * logvar2) * eps2
        raw = self.q_z1_head(self.q_z1_trunk(x, z2))
        mean1, logvar1 = raw.chunk(2, dim=-1)
        logvar1 = self.bound * torch.tanh(logvar1 / self.bound)
        z1 = mean1 + torch.exp(0.5 * logvar1) * eps1
        prior_mean1, prior_logvar1 = self.p_z1(z2)
        logits = self.p_x_head(self.p_x_trunk(z1, z2))
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

        def normal(mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)

        log_p = self.log_prior_z2(z2) + normal(prior_mean1, prior_logvar1, z1)
        log_q = normal(mean2, logvar2, z2) + normal(mean1, logvar1, z1)
        return log_px, log_p, log_q
