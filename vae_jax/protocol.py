"""Protocol cards on evaluation results, and `compare`: tables that never mix protocols.

A number such as "test NELBO 95.3" means little without its protocol: static or dynamic binarization, which
split and how many of its examples, ELBO or importance-weighted estimate (and K), the training set, and which
inference gave the posterior (the amortized encoder, or per-example optimization: `vae_jax.inference`), and the
content hash of the evaluated split (`data.split_hash`), so that results on different data never share a table. Every
result line of `vae_jax eval` and `vae_jax gaps` carries all of it; `compare` groups lines by `PROTOCOL_FIELDS` and
prints one Markdown table per protocol, naming the fields in which the protocols differ.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from vae_jax import configs, data
from vae_jax.errors import ConfigError, VaeError

PROTOCOL_FIELDS = ("dataset", "binarization", "split", "split_size", "num_examples", "estimator", "iwae_k",
                   "units", "train_set", "inference", "data_hash")
SAMPLE_QUALITY = "sample quality"  # the estimator of a sample-quality line (`sample_quality_card`)
AMORTIZED = "amortized"  # the inference of every result line written before the field existed
# A line written before `data_hash` existed reads None: such lines group together, apart from any hashed line.


def _git_commit() -> str | None:
    """The commit of the vae_jax checkout, or None outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def protocol_card(dataset: data.Dataset, split: str, num_examples: int, iwae_k: int | None, eval_seed: int,
                  config: dict[str, Any], inference: str = AMORTIZED, elbo_samples: int = 1,
                  data_hash: str | None = None, bound: str = "iwae") -> dict[str, Any]:
    """Every field that decides whether two evaluation results can be compared, plus provenance.

    Args:
        dataset: the dataset (`data.describe`); the model was trained on its `train` split. Its form sets the
            preprocessing: `binarization` is `static` (0/1 pixels), `dynamic`, or `none (8-bit)`, whose results come
            in nats and bits per dimension (`units` "nats, bits/dim"), or `none (binary frames)` for sequences,
            whose results come in nats per sequence and per time step (`units` "nats, nats/frame").
        split: the evaluated split.
        num_examples: how many of its examples were evaluated.
        iwae_k: K, the importance samples (or particles) of the NLL estimate, or None for the ELBO alone.
        eval_seed: seed of the evaluation's randomness.
        config: the model's config as a JSON-ready dict (`configs.to_dict`, or the model's own description).
        inference: `amortized` (the model's encoder), or a description of per-example inference.
        elbo_samples: samples of z per example in the ELBO estimate (its variance, not its expectation).
        data_hash: the evaluated split's content hash (`data.split_hash`), or None where it is unknown.
        bound: the NLL estimate's bound, `iwae` (importance-weighted) or `fivo` (particle filter, sequences); the
            card's `estimator` is this bound, or `elbo` without `iwae_k`.
    """
    from vae_jax import __version__

    return {
        "dataset": dataset.name,
        "binarization": {"binary": "static", "dynamic": "dynamic", "8bit": "none (8-bit)",
                         "sequence": "none (binary frames)"}[dataset.form],
        "split": split,
        "split_size": dataset.split_size(split),
        "num_examples": num_examples,
        "estimator": bound if iwae_k else "elbo",
        "iwae_k": iwae_k,
        "eval_seed": eval_seed,
        "units": "nats, bits/dim" if dataset.eight_bit else "nats, nats/frame" if dataset.sequential else "nats",
        "train_set": f"{dataset.name}/train ({dataset.split_size('train')} examples)",
        "inference": inference,
        "data_hash": data_hash,
        "elbo_samples": elbo_samples,
        "config_hash": configs.dict_hash(config),
        "config": config,
        "vae_jax_version": __version__,
        "git_commit": _git_commit(),
        "versions": {name: importlib.metadata.version(name) for name in ("jax", "flax", "optax")},
    }


def sample_quality_card(dataset: data.Dataset, split: str, num_samples: int, extractor: Any, eval_seed: int,
                        config: dict[str, Any], data_hash: str | None = None) -> dict[str, Any]:
    """The card of a sample-quality result (`vae_jax.samples`): `protocol_card`'s fields, with `estimator`
    `sample quality`, `num_examples` the reference images (as many as the samples), `units` naming the feature
    space (the extractor and its hash: measures in other features do not compare), and `sample_quality`: the
    extractor, the number of samples and the form in which images are compared."""
    card = protocol_card(dataset, split, num_samples, None, eval_seed, config, data_hash=data_hash)
    form = "decoded means, grey levels in [0, 1]" if dataset.eight_bit else "Bernoulli draws of the decoded means"
    return {**card, "estimator": SAMPLE_QUALITY, "units": f"features of {extractor.dataset} ({extractor.sha256})",
            "sample_quality": {"extractor": extractor.dataset, "extractor_sha256": extractor.sha256,
                               "num_samples": num_samples, "sample_form": form}}


def _eval_records(file: Path) -> list[dict[str, Any]]:
    """The evaluation results in a JSON-lines file, or in a JSON document (one result or a list of them)."""
    text = file.read_text()
    try:
        whole = json.loads(text)
        candidates = whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        candidates = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                candidates.append(json.loads(line) if line.strip() else None)
            except json.JSONDecodeError:
                raise VaeError(f"{file}:{number} is not JSON; pass evaluation files (eval.jsonl)") from None
    return [{**c, "source": str(file)} for c in candidates if isinstance(c, dict) and "split" in c
            and ("nelbo" in c or c.get("estimator") == SAMPLE_QUALITY)]


def read_results(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """Evaluation results from `.jsonl`/`.json` files, or from all such files under directories.

    Lines or documents that are not evaluation results (metrics, benchmarks) are passed over.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json"))
        elif path.is_file():
            files.append(path)
        else:
            raise VaeError(f"{path} does not exist; pass evaluation files (eval.jsonl) or folders holding them")
    results = [record for file in files for record in _eval_records(file)]
    if not results:
        raise VaeError(f"no evaluation lines found in {', '.join(map(str, paths))}; run `vae_jax eval` first")
    return results


def _protocol_value(result: dict[str, Any], field: str) -> Any:
    return result.get(field, AMORTIZED if field == "inference" else None)


def _protocol(result: dict[str, Any]) -> tuple:
    return tuple(json.dumps(_protocol_value(result, field), sort_keys=True) for field in PROTOCOL_FIELDS)


def _format(value: float | None, stderr: float | None = None) -> str:
    """A measure to two decimals (± its standard error), or an empty cell where it is not defined."""
    if value is None:
        return ""
    return f"{value:.2f}" if stderr is None else f"{value:.2f} ± {stderr:.2f}"


def model_name(config: dict[str, Any]) -> str:
    """A short name of the model a result's config describes: the class of a model of your own, else the preset
    networks' shape (e.g. `VAE z=10 mlp 300-300 elu`, `HVAE z=40 gated 300-300 vamp`)."""
    model = config.get("model", {})
    if not isinstance(model, dict):  # a description other than vae_jax's
        return str(model)
    if "class" in model:
        return model["class"].rsplit(".", 1)[-1]
    name = "HVAE" if model.get("stochastic_layers", 1) == 2 else "VAE"
    widths = "-".join(map(str, model.get("encoder_hidden", ())))
    prior = model.get("prior", "normal")
    return " ".join(part for part in (name, f"z={model.get('latent_dim')}", model.get("architecture", "mlp"), widths,
                                      model.get("activation"), "" if prior == "normal" else prior) if part)


def _config_hash(result: dict[str, Any]) -> str:
    """The hash of a result's config with this version's defaults filled in, so that one model has one hash
    whichever version of vae_jax evaluated it; a config that is not vae_jax's (a custom model) keeps its stored hash."""
    try:
        return configs.config_hash(configs.from_dict(result["config"]))
    except (ConfigError, AttributeError, KeyError, TypeError):
        return result.get("config_hash", "–")


def _rank(result: dict[str, Any]) -> tuple[bool, float]:
    """What a table is ranked by: the NLL, else the NELBO, else (sample quality) the FID."""
    return result.get("nll") is None, next(result[name] for name in ("nll", "nelbo", "fid")
                                             if result.get(name) is not None)


def compare_tables(results: list[dict[str, Any]]) -> str:
    """Markdown: a section per dataset, in it one table per protocol, each ranked by NLL (else NELBO), naming how the
    protocols differ; results in bits per dimension as well (8-bit data) get those columns too, and sample-quality
    results (`vae_jax.samples`) a table of their own measures, ranked by FID."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(_protocol(result), []).append(result)
    dataset = {protocol: str(_protocol_value(rows[0], "dataset")) for protocol, rows in groups.items()}
    datasets = list(dict.fromkeys(dataset.values()))  # in the order first met
    protocols = sorted(groups, key=lambda protocol: datasets.index(dataset[protocol]))
    sections = []
    for number, protocol in enumerate(protocols, start=1):
        if number == 1 or dataset[protocol] != dataset[protocols[number - 2]]:
            sections.append(f"## {dataset[protocol]}")
        rows = sorted(groups[protocol], key=_rank)
        first = rows[0]
        card = ", ".join(f"{field}={_protocol_value(first, field)}" for field in PROTOCOL_FIELDS)
        lines = [f"### Protocol {number} of {len(protocols)}", "", card]
        if len(protocols) > 1:
            others = [other for other in protocols if other != protocol]
            differing = sorted({PROTOCOL_FIELDS[i] for other in others for i in range(len(PROTOCOL_FIELDS))
                                if other[i] != protocol[i]})
            lines.append(f"Not comparable with the other tables: they differ in {', '.join(differing)}.")
        table = _sample_quality_table if first.get("estimator") == SAMPLE_QUALITY else _table
        lines += ["", *table(rows, str(_protocol_value(first, "units")))]
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


_SECOND_UNITS = {"bits/dim": "bpd", "nats/frame": "per_frame"}  # a second unit of the card: its fields' suffix


def _sample_quality_table(rows: list[dict[str, Any]], units: str) -> list[str]:
    """The Markdown lines of one sample-quality protocol's table (`vae_jax.samples`), ranked by FID."""
    lines = ["| run | model | config | sampled | FID | KID | precision | recall | density | coverage |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        run = row.get("run") or Path(row["source"]).parent.name
        cells = [f"{row[name]:.3f}" for name in ("precision", "recall", "density", "coverage")]
        lines.append(f"| {run} | {model_name(row.get('config', {}))} | {_config_hash(row)} | {row.get('sampled', '')}"
                     f" | {_format(row['fid'])} | {row['kid']:.4g} ± {row['kid_stderr']:.2g} | {' | '.join(cells)} |")
    return lines


def _table(rows: list[dict[str, Any]], units: str) -> list[str]:
    """The Markdown lines of one protocol's table: a row per result, with columns in its `units`' second unit too
    (bits per dimension for 8-bit data, nats per time step for sequences)."""
    second = next((unit for unit in _SECOND_UNITS if unit in units), None)
    bits_header, bits_rule = (f" NELBO ({second}) | NLL ({second}) |", " --- | --- |") if second else ("", "")
    suffix = _SECOND_UNITS.get(second)
    lines = [f"| run | model | config | NELBO | NLL |{bits_header} KL | active units |",
             f"| --- | --- | --- | --- | --- |{bits_rule} --- | --- |"]
    for row in rows:
        run = row.get("run") or Path(row["source"]).parent.name
        units = row.get("active_units")
        bits = (f" {_format(row.get(f'nelbo_{suffix}'), row.get(f'nelbo_{suffix}_stderr'))}"
                f" | {_format(row.get(f'nll_{suffix}'), row.get(f'nll_{suffix}_stderr'))} |" if second else "")
        lines.append(f"| {run} | {model_name(row.get('config', {}))} | {_config_hash(row)}"
                     f" | {_format(row['nelbo'], row.get('nelbo_stderr'))}"
                     f" | {_format(row.get('nll'), row.get('nll_stderr'))} |{bits} {_format(row.get('kl'))}"
                     f" | {'' if units is None else units} |")
    return lines
