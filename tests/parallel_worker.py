"""Run by tests/test_parallel.py in fresh processes, since the device count is fixed when JAX starts.

    python tests/parallel_worker.py DEVICES [PROCESS_ID NUM_PROCESSES PORT]

trains a small VAE for two epochs on `DEVICES` CPU devices of this process (data-parallel when the mesh has more
than one device, across processes when NUM_PROCESSES > 1) and prints one JSON line with the final parameters'
fingerprint, the epoch losses, how a training batch is laid out over the devices, and per-example evaluation.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[1]}"
if len(sys.argv) > 2:
    os.environ.update(JAX_PROCESS_ID=sys.argv[2], JAX_NUM_PROCESSES=sys.argv[3],
                      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{sys.argv[4]}")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from vae_jax import builders, configs, data, evaluate, objective, parallel, train  # noqa: E402

MNIST = data.describe("binarized_mnist")

if len(sys.argv) > 2:
    parallel.initialize_distributed()
model = builders.build_model(configs.ModelConfig(latent_dim=3, encoder_hidden=(32,), decoder_hidden=(32,)), MNIST)
pixels = (np.random.default_rng(0).random((512, 784)) < 0.3).astype(np.uint8)
mesh = parallel.data_mesh() if len(jax.devices()) > 1 else None
state = train.create_train_state(jax.random.key(0), model, optax.adam(1e-2), (784,))
device_pixels, state = parallel.replicate((pixels, state), mesh)
losses = []
for epoch in range(2):
    state, result = train.train_epoch_jit(state, device_pixels, jax.random.fold_in(jax.random.key(1), epoch),
                                          batch_size=64, mesh=mesh)
    losses.append(float(np.asarray(result.loss).mean()))
terms = evaluate.evaluate_elbo(model, state.params, device_pixels, jax.random.key(3), batch_size=128, mesh=mesh)


def batch_layout():
    """Which rows of a 64-example batch each device holds, as the sharded step sees it."""
    sharded = jax.jit(lambda x: parallel.shard_batch(x, mesh))(device_pixels[:64]) if mesh else device_pixels[:64]
    return sorted((shard.index[0].start or 0, shard.index[0].stop or 64) for shard in sharded.addressable_shards)


def noise(indices):
    """The reparameterization noise each example draws, computed on the mesh."""
    def eps(x, key):
        return jax.random.normal(key, (3,))
    batch = parallel.replicate((pixels[indices], indices), mesh)
    return np.asarray(jax.jit(lambda p, i: objective.map_examples(eps, parallel.shard_batch(p, mesh),
                                                                     parallel.shard_batch(i, mesh),
                                                                     jax.random.key(5)))(*batch)).tolist()


leaves = [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(state.params)]
print(json.dumps({
    "process_count": jax.process_count(), "devices": len(jax.devices()),
    "param_sums": [float(leaf.astype(np.float64).sum()) for leaf in leaves],
    "losses": losses, "layout": batch_layout(),
    "mean_nelbo": float(np.asarray(jax.jit(jax.numpy.mean)(terms.nelbo).addressable_data(0))),
    "noise": noise(np.arange(8)) if jax.process_count() == 1 else None,
    "has_all_reduce": "all-reduce" in train.train_epoch_jit.lower(
        state, device_pixels, jax.random.key(1), batch_size=64, mesh=mesh).compile().as_text(),
}))
