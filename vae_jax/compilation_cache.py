"""JAX's persistent compilation cache, on by default for the command line, `fit` and the `readback` commands.

A compiled program (an epoch, an evaluation, even a layer's initializer) is written to disk the first time and
loaded afterwards, so a second `train` or `eval` of the same configuration skips XLA's compilation (and, on a GPU,
its autotuning of the matrix products). Where the cache lives:

- `VAE_JAX_COMPILATION_CACHE=<folder>` (or the command line's `--compilation-cache <folder>`), else
- JAX's own `JAX_COMPILATION_CACHE_DIR` (or `jax_compilation_cache_dir`) if you set one, else
- `$XDG_CACHE_HOME/vae_jax/jax/<machine>` (`~/.cache/...` by default), one folder per kind of processor, since an
  executable compiled for one CPU's instruction set is refused by another.

`VAE_JAX_COMPILATION_CACHE=off` (or `--compilation-cache off`) turns it off. The cache is bounded (2 GiB, least
recently used entries evicted), and with a bound JAX takes a file lock around every read and write, so several
processes can share it. Compiled programs are trusted code: do not share a cache folder with untrusted users.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import jax

from vae_jax.errors import ConfigError

ENVIRONMENT_VARIABLE = "VAE_JAX_COMPILATION_CACHE"
OFF = "off"
MAX_BYTES = 2 * 2**30


def machine_tag() -> str:
    """`<architecture>-<hash of the processor's model and feature flags>`: the executables of one folder run on
    every machine that shares it."""
    description = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        description = "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    return f"{platform.machine()}-{hashlib.sha256(description.encode()).hexdigest()[:12]}"


def default_folder() -> Path:
    """`$XDG_CACHE_HOME/vae_jax/jax/<machine_tag()>`, with `~/.cache` for an unset `XDG_CACHE_HOME`."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vae_jax" / "jax" / machine_tag()


def enable(location: str | os.PathLike | None = None) -> Path | None:
    """Turns the persistent compilation cache on and returns its folder, or None where it is off.

    Args:
        location: a folder, or `off`; None reads `VAE_JAX_COMPILATION_CACHE`, and without it keeps a folder already
            set in JAX's config, or else takes `default_folder()`.
    """
    setting = str(location) if location is not None else os.environ.get(ENVIRONMENT_VARIABLE)
    if setting == OFF:
        return None
    if setting is None and jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    folder = Path(setting).expanduser() if setting else default_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot use {folder} as the compilation cache ({error.strerror}); name a folder you can "
                          f"write with --compilation-cache or {ENVIRONMENT_VARIABLE}, or turn the cache off with "
                          f"--compilation-cache {OFF}") from None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small programs too: initializers
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # bounded, hence file-locked
    jax.config.update("jax_persistent_cache_enable_xla_caches", "xla_gpu_per_fusion_autotune_cache_dir")
    return folder
