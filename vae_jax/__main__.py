"""`python -m vae_jax`: see `vae_jax.cli`."""

import sys

from vae_jax.cli import main

sys.exit(main())
