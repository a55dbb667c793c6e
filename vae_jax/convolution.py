"""Convolutions that stay fast inside a compiled loop on the CPU: a `conv_general_dilated` for `flax.linen.Conv`.

XLA:CPU runs a convolution's kernel gradient in a slow, naive form when the convolution sits inside a `lax.scan` (as
every training step does: `train.train_epoch` compiles an epoch as one scan). On a 2-core CPU the `default` conv VAE's
step took 0.174 s compiled alone and 0.790 s inside a scan; written as below, 0.099 s inside a scan
(`experiments/conv_in_scan.py`, its output in `experiments/results/conv_in_scan_cpu.json`). As padding, strided
slices and one matrix product, a convolution and both its gradients are products and slices, which XLA:CPU compiles
the same inside a loop and out. Elsewhere (GPU, TPU) `lax.conv_general_dilated` runs as before.

The transposed convolution of `models.ConvDecoder` is the convolution of its input dilated by the stride
(`lhs_dilation`) and padded as `lax.conv_transpose` pads it, so both directions take the one function.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

LAYOUT = ("NHWC", "HWIO", "NHWC")


def transpose_padding(size: int, stride: int) -> tuple[int, int]:
    """The (low, high) padding of the stride-dilated input with which a convolution of a `size`-wide kernel is
    `lax.conv_transpose(..., padding='SAME')` (lax's own rule), e.g. (2, 1) for 3 and 2: the output is `stride`
    times the input."""
    total = size + stride - 2
    low = size - 1 if stride > size - 1 else -(-total // 2)
    return low, total - low


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: object = None,
                         feature_group_count: int = 1, precision: object = None) -> jax.Array:
    """`lax.conv_general_dilated` for `flax.linen.Conv`'s layouts (lhs `[B, H, W, C]`, rhs `[h, w, C, O]`): on the CPU
    as `patch_conv`, elsewhere as lax's own. No kernel dilation, one feature group."""
    if feature_group_count != 1 or any(rate != 1 for rate in rhs_dilation or ()):
        raise ValueError("vae_jax.convolution supports neither kernel dilation nor feature groups")
    if dimension_numbers is not None and dimension_numbers != lax.conv_dimension_numbers(lhs.shape, rhs.shape, LAYOUT):
        raise ValueError(f"vae_jax.convolution takes flax.linen.Conv's layouts {LAYOUT}, not {dimension_numbers}")
    strides, dilation = tuple(window_strides), tuple(lhs_dilation or (1,) * len(window_strides))
    pads = _explicit_padding(lhs.shape[1:-1], rhs.shape[:-2], strides, dilation, padding)

    def by_lax() -> jax.Array:
        return lax.conv_general_dilated(lhs, rhs, strides, pads, dilation, None, LAYOUT, precision=precision)

    return lax.platform_dependent(cpu=lambda: patch_conv(lhs, rhs, strides, pads, dilation, precision),
                                  default=by_lax)


def patch_conv(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int], pads: Sequence[tuple[int, int]],
               dilation: tuple[int, int] = (1, 1), precision: object = None) -> jax.Array:
    """The 2-D convolution `lhs [B, H, W, C] * rhs [h, w, C, O] -> [B, H', W', O]` (cross-correlation, as lax's) of
    lhs dilated by `dilation` (zeros between its pixels) and padded by `pads` (low, high per side), with `strides`:
    the h w strided views of the padded input side by side, `[B, H', W', h w C]`, times rhs as `[h w C, O]`."""
    height, width = rhs.shape[:2]
    padded = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                     ((0, 0, 0), *((low, high, rate - 1) for (low, high), rate in zip(pads, dilation, strict=True)),
                      (0, 0, 0)))
    out_height, out_width = ((padded.shape[axis] - size) // stride + 1
                             for axis, size, stride in zip((1, 2), (height, width), strides, strict=True))
    views = [padded[:, row:row + strides[0] * (out_height - 1) + 1:strides[0],
                    col:col + strides[1] * (out_width - 1) + 1:strides[1], :]
             for row in range(height) for col in range(width)]
    patches = jnp.concatenate(views, axis=-1)
    return jnp.dot(patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


def _explicit_padding(sides: Sequence[int], window: Sequence[int], strides: tuple[int, ...],
                      dilation: tuple[int, ...], padding: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """`padding` as (low, high) pairs: a string ('SAME', 'VALID') resolved as lax resolves it on the dilated input."""
    if isinstance(padding, str):
        dilated = [(side - 1) * rate + 1 for side, rate in zip(sides, dilation, strict=True)]
        return list(lax.padtype_to_pads(dilated, window, strides, padding))
    return [tuple(pair) for pair in padding]
