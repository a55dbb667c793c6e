"""Protocol cards and `compare`: results made under different protocols never share a table."""

import json
import re

import pytest

from vae_jax import cli, configs, data, protocol
from vae_jax.errors import VaeError

CS236 = configs.to_dict(configs.get_config("cs236"))


def _result(run, nelbo, **changes):
    card = protocol.protocol_card(data.describe("binarized_mnist"), "test", 10_000, 5000, 0, CS236)
    return {"run": run, "nelbo": nelbo, "nelbo_stderr": 0.3, "nll": nelbo - 5, "nll_stderr": 0.3, "kl": 20.0,
            "active_units": 9, **card, **changes}


def test_card_names_the_whole_protocol():
    card = protocol.protocol_card(data.describe("binarized_mnist"), "test", 10_000, None, 3, CS236)
    assert card["binarization"] == "static" and card["estimator"] == "elbo" and card["iwae_k"] is None
    assert (card["split"], card["split_size"], card["num_examples"], card["eval_seed"]) == ("test", 10_000, 10_000, 3)
    assert card["train_set"] == "binarized_mnist/train (50000 examples)" and card["units"] == "nats"
    assert set(card["versions"]) == {"jax", "flax", "optax"}
    assert card["config_hash"] == configs.config_hash(configs.get_config("cs236"))
    dynamic = protocol.protocol_card(data.describe("mnist"), "validation", 10_000, 5000, 0, {"model": "mine"})
    assert dynamic["binarization"] == "dynamic" and dynamic["estimator"] == "iwae"
    # The dataset's own split sizes and preprocessing, and the unit of 8-bit data.
    frey = protocol.protocol_card(data.describe("frey_faces"), "test", 200, 5000, 0, {"model": "mine"})
    assert (frey["binarization"], frey["split_size"], frey["units"]) == ("none (8-bit)", 200, "nats, bits/dim")
    assert frey["train_set"] == "frey_faces/train (1565 examples)"


def test_mismatched_protocols_land_in_separate_tables(tmp_path, capsys):
    lines = [_result("a", 95.0), _result("b", 90.0), _result("c", 80.0, split="validation"),
             _result("d", 85.0, iwae_k=50), _result("e", 70.0, dataset="mnist", binarization="dynamic")]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    tables = out.split("### Protocol ")[1:]
    assert len(tables) == 4
    first = tables[0]
    # a and b share a protocol and are ranked by NLL; nothing else is in their table.
    assert first.index("| b |") < first.index("| a |") and "| c |" not in first and "| d |" not in first
    assert "differ in binarization, dataset, iwae_k, split" in first
    assert "| 90.00 ± 0.30 | 85.00 ± 0.30 | 20.00 | 9 |" in first
    for run in "cde":
        assert sum(f"| {run} |" in table for table in tables) == 1


def test_compare_reports_bad_input_in_one_line(tmp_path):
    with pytest.raises(VaeError, match="does not exist"):
        protocol.read_results([tmp_path / "missing"])
    (tmp_path / "notes.jsonl").write_text("{not json\n")
    with pytest.raises(VaeError, match="notes.jsonl:1 is not JSON"):
        protocol.read_results([tmp_path])
    (tmp_path / "notes.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "benchmark.json").write_text('{\n "training": []\n}\n')
    with pytest.raises(VaeError, match="no evaluation lines"):
        protocol.read_results([tmp_path])
    (tmp_path / "one.json").write_text(json.dumps(_result("x", 90.0), indent=1))
    assert [r["run"] for r in protocol.read_results([tmp_path])] == ["x"]


def test_one_model_has_one_hash_whichever_version_wrote_its_config(tmp_path, capsys):
    """An eval line written before a config field existed names the same model as a fresh one."""
    older = json.loads(json.dumps(CS236))
    for field in ("architecture", "conv_channels", "prior", "prior_components"):
        del older["model"][field]
    custom = {"model": "a residual MLP", "latent_dim": 16}
    lines = [_result("new", 95.0), _result("old", 95.0, config=older, config_hash="0000000000"),
             _result("custom", 96.0, config=custom, config_hash=configs.dict_hash(custom))]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expected = configs.config_hash(configs.get_config("cs236"))
    cs236 = "VAE z=10 mlp 300-300 elu"  # the model column: the preset networks' shape, whichever version wrote it
    assert f"| new | {cs236} | {expected} |" in out and f"| old | {cs236} | {expected} |" in out
    assert f"| custom | a residual MLP | {configs.dict_hash(custom)} |" in out


def test_compare_names_the_model_and_leaves_undefined_measures_empty(tmp_path, capsys):
    flow = {**CS236, "model": {"class": "my_models.PlanarFlowVAE", "hidden": 16}}
    vamp = json.loads(json.dumps(CS236))
    vamp["model"].update(latent_dim=40, activation="gated", prior="vamp", stochastic_layers=2)
    lines = [_result("flow", 95.0, config=flow, active_units=None, nll=None, nll_stderr=None),
             _result("hvae", 90.0, config=vamp)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["compare", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| flow") or "| hvae" in line]
    assert rows[0].startswith("| hvae | HVAE z=40 mlp 300-300 gated vamp | ")
    assert rows[1].startswith("| flow | PlanarFlowVAE | ") and rows[1].endswith(" | 95.00 ± 0.30 |  | 20.00 |  |")


def test_results_on_different_data_never_share_a_table(tmp_path, capsys):
    """Two lines that differ only in their split's content hash, and an old line without one: three tables."""
    card = protocol.protocol_card(data.describe("fashion_mnist"), "test", 10_000, None, 0, CS236,
                                  data_hash="00112233aabbccdd")
    assert card["data_hash"] == "00112233aabbccdd" and card["binarization"] == "dynamic"
    assert card["train_set"] == "fashion_mnist/train (50000 examples)" and card["split_size"] == 10_000
    lines = [_result("a", 95.0, data_hash="00112233aabbccdd"), _result("b", 90.0, data_hash="ffeeddccbbaa9988"),
             _result("c", 92.0, data_hash="00112233aabbccdd"), _result("old", 91.0)]
    del lines[-1]["data_hash"]  # written before the field existed
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["compare", str(tmp_path)]) == 0
    tables = capsys.readouterr().out.split("### Protocol ")[1:]
    assert len(tables) == 3
    by_run = {run: [i for i, table in enumerate(tables) if f"| {run} |" in table] for run in ("a", "b", "c", "old")}
    assert by_run["a"] == by_run["c"] and len({by_run[run][0] for run in ("a", "b", "old")}) == 3
    assert all("differ in data_hash." in table for table in tables)
    assert "data_hash=None" in tables[by_run["old"][0]] and "data_hash=ffeeddccbbaa9988" in tables[by_run["b"][0]]


def test_compare_gives_each_dataset_its_section_and_8bit_results_their_bits(tmp_path, capsys):
    eight_bit = protocol.protocol_card(data.describe("mnist", "8bit"), "test", 10_000, 5000, 0, CS236)
    lines = [_result("binary", 90.0), {**_result("grey", 700.0), **eight_bit, "nelbo_bpd": 1.29, "nll_bpd": 1.2788},
             _result("binary2", 91.0)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    sections = re.split(r"^## ", out, flags=re.M)[1:]
    assert [section.split("\n", 1)[0] for section in sections] == ["binarized_mnist", "mnist"]
    assert "| grey |" in sections[1] and "| binary |" in sections[0] and "| binary2 |" in sections[0]
    assert "| NELBO | NLL | NELBO (bits/dim) | NLL (bits/dim) | KL |" in sections[1]
    assert "| 700.00 ± 0.30 | 695.00 ± 0.30 | 1.29 | 1.28 | 20.00 | 9 |" in sections[1]
    assert "bits/dim" not in sections[0].split("units=nats")[1]
