"""vae_jax.convolution: the CPU's convolutions as patches times the kernel equal lax's, values and gradients, in
float64 (to 1e-12), for the strided and the transposed convolutions of the conv networks on odd and even sides."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vae_jax import convolution


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


CASES = [  # (input sides, stride, lhs dilation, padding): the encoder's stride-2 'SAME' and the decoder's transpose
    ((28, 20), (2, 2), (1, 1), "SAME"),
    ((7, 5), (2, 2), (1, 1), "SAME"),
    ((4, 3), (1, 1), (2, 2), [convolution.transpose_padding(3, 2)] * 2),
    ((7, 7), (1, 1), (2, 2), [convolution.transpose_padding(3, 2)] * 2),
    ((6, 5), (1, 1), (1, 1), "VALID"),
]


def _operands(sides: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(2, *sides, 3))), jnp.asarray(rng.normal(size=(3, 3, 3, 4)))


@pytest.mark.parametrize("sides, strides, dilation, padding", CASES)
def test_patches_times_the_kernel_equal_lax_values_and_gradients(sides, strides, dilation, padding):
    lhs, rhs = _operands(sides)
    pads = convolution._explicit_padding(sides, (3, 3), strides, dilation, padding)

    def ours(lhs, rhs):
        return convolution.patch_conv(lhs, rhs, strides, pads, dilation)

    def theirs(lhs, rhs):
        return lax.conv_general_dilated(lhs, rhs, strides, padding, dilation, None, convolution.LAYOUT)

    expected = theirs(lhs, rhs)
    np.testing.assert_allclose(ours(lhs, rhs), expected, rtol=0, atol=1e-12)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=expected.shape))
    for argnum in (0, 1):
        grad = jax.grad(lambda *operands: jnp.sum(ours(*operands) * cotangent), argnum)(lhs, rhs)
        expected_grad = jax.grad(lambda *operands: jnp.sum(theirs(*operands) * cotangent), argnum)(lhs, rhs)
        np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12)


def test_the_transposed_convolution_is_lax_conv_transpose():
    """The decoder's convolution of the stride-dilated input, padded by `transpose_padding`, doubles the sides as
    `lax.conv_transpose(..., 'SAME')` does, to the same values."""
    lhs, rhs = _operands((7, 5))
    ours = convolution.conv_general_dilated(lhs, rhs, (1, 1), [convolution.transpose_padding(3, 2)] * 2, (2, 2))
    expected = lax.conv_transpose(lhs, rhs, (2, 2), "SAME", dimension_numbers=convolution.LAYOUT)
    assert ours.shape == (2, 14, 10, 4)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_a_flax_conv_takes_it_with_the_same_parameters():
    lhs, _ = _operands((28, 20))
    plain = nn.Conv(4, (3, 3), strides=2, param_dtype=jnp.float64)
    ours = plain.clone(conv_general_dilated=convolution.conv_general_dilated)
    params = plain.init(jax.random.key(0), lhs)
    np.testing.assert_allclose(ours.apply(params, lhs), plain.apply(params, lhs), rtol=0, atol=1e-12)


def test_it_refuses_what_it_does_not_compute():
    lhs, rhs = _operands((7, 5))
    with pytest.raises(ValueError, match="kernel dilation nor feature groups"):
        convolution.conv_general_dilated(lhs, rhs, (1, 1), "SAME", rhs_dilation=(2, 2))
    with pytest.raises(ValueError, match="layouts"):
        convolution.conv_general_dilated(lhs, rhs, (1, 1), "SAME",
                                         dimension_numbers=lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                                                      ("NCHW", "OIHW", "NCHW")))
