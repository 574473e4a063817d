"""Bad input, table-driven: every case gets a clean error, never a traceback.

For the three command-line programs (called in-process through their ``main(argv)``): exit
status 2, no traceback, ``<prog>: error:`` and a message naming the file/line/field or flag.
For the Python API: the documented exception type with a message naming the argument. A failed
``run_train.py`` has not created its run folder (every value is checked before it is).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from diffuseq.cli.decode import main as decode_main
from diffuseq.cli.evaluate import main as eval_main
from diffuseq.cli.train import main as train_main
from diffuseq.decoding import api
from diffuseq.decoding.manifest import write_outputs
from diffuseq.errors import CheckpointError, ConfigError
from tests.test_decode import make_run
from tests.train_helpers import make_tiny_data, tiny_argv


@dataclass
class Ctx:
    """Inputs shared by the cases (built once per module)."""

    root: Path
    data: Path
    run: Path
    decoded: Path  # a decode output file
    files: dict[str, Path] = field(default_factory=dict)

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.root / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def data_with(self, name: str, split: str, content: bytes | str) -> Path:
        folder = make_tiny_data(self.root / "datasets" / name)
        (folder / f"{split}.jsonl").write_bytes(
            content.encode() if isinstance(content, str) else content
        )
        return folder


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    root = tmp_path_factory.mktemp("bad_inputs")
    run = make_run(root / "work")
    record = {"recover": "a b c", "reference": "a b c", "source": "x"}
    decoded = root / "decoded" / "seed101_step0.json"
    decoded.parent.mkdir()
    decoded.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    return Ctx(root=root, data=make_tiny_data(root / "data"), run=run, decoded=decoded)


NOT_UTF8 = b'{"src": "caf\xe9", "trg": "x"}\n'


# ------------------------------------------------------------------------------ run_train.py


def _train(**flags: Any) -> Callable[[Ctx, Path], list[str]]:
    """``run_train.py`` flags on the tiny data; ``data_dir`` may be a function of the context."""

    def build(c: Ctx, out: Path) -> list[str]:
        values = {k: (v(c) if callable(v) else v) for k, v in flags.items()}
        extra = values.pop("_extra", [])
        return tiny_argv(c.data, **{"checkpoint_path": out, **values}) + [str(x) for x in extra]

    return build


def _preset(text: str | bytes, **flags: Any) -> Callable[[Ctx, Path], list[str]]:
    def build(c: Ctx, out: Path) -> list[str]:
        path = c.file(f"preset{abs(hash(text))}.yaml", text)
        return _train(_extra=["--config", path], **flags)(c, out)

    return build


def _truncated_checkpoint(c: Ctx) -> Path:
    data = (c.run / "ema_0.9999_000010.pt").read_bytes()
    return c.file("truncated.pt", data[: len(data) // 2])


TRAIN_CASES = {
    "respacing-abc": (_train(timestep_respacing="abc"), ["--timestep_respacing", "'abc'"]),
    "respacing-too-many": (_train(timestep_respacing="100"), ["--timestep_respacing", "'100'"]),
    "noise-schedule": (_train(noise_schedule="foo"), ["--noise_schedule", "foo"]),
    "schedule-sampler": (_train(schedule_sampler="foo"), ["--schedule_sampler", "foo"]),
    "notes-escape": (_train(notes="/../../../x"), ["--notes", "/../../../x"]),
    "dataset-escape": (_train(dataset="../../../x"), ["--dataset", "../../../x"]),
    "preset-dataset-escape": (_preset("dataset: ../../x\n", dataset=None), ["--dataset"]),
    "preset-type": (_preset("hidden_dim: abc\n", hidden_dim=None), ["preset", "hidden_dim"]),
    "preset-unknown-key": (_preset("hiden_dim: 3\n"), ["preset", "hiden_dim"]),
    "preset-syntax": (_preset("a: [1, 2\n"), ["preset", "invalid YAML"]),
    "preset-list": (_preset("- 1\n- 2\n"), ["preset", "mapping"]),
    "preset-not-utf8": (_preset(b"notes: caf\xe9\n"), ["preset", "UTF-8"]),
    "preset-folder": (_train(_extra=lambda c: ["--config", c.root]), ["--config", "folder"]),
    "preset-missing": (_train(_extra=["--config", "nope.yaml"]), ["nope.yaml", "does not exist"]),
    "data-dir-missing": (_train(data_dir="no/such/dir"), ["no/such/dir", "--data_dir"]),
    "data-dir-is-a-file": (
        _train(data_dir=lambda c: c.data / "train.jsonl"),
        ["train.jsonl", "--data_dir is a file"],
    ),
    "train-not-utf8": (
        _train(data_dir=lambda c: c.data_with("latin1", "train", NOT_UTF8)),
        ["train.jsonl", "line 1", "UTF-8"],
    ),
    "train-bad-json": (
        _train(data_dir=lambda c: c.data_with("badjson", "train", '{"src": "a", "trg": "b"}\n{\n')),
        ["train.jsonl", "line 2", "invalid JSON"],
    ),
    "train-missing-field": (
        _train(data_dir=lambda c: c.data_with("nofield", "train", '{"src": "a"}\n')),
        ["train.jsonl", "line 1", "field 'trg'"],
    ),
    "valid-number-field": (
        _train(data_dir=lambda c: c.data_with("number", "valid", '{"src": "a", "trg": 3}\n')),
        ["valid.jsonl", "line 1", "field 'trg'", "string"],
    ),
    "test-split-missing": (
        _train(data_dir=lambda c: _without(make_tiny_data(c.root / "datasets" / "novalid"))),
        ["valid.jsonl", "missing"],
    ),
    "bsz-zero": (_train(bsz=0), ["--bsz"]),
    "microbatch-divides": (_train(bsz=10, microbatch=4), ["--bsz 10", "--microbatch 4"]),
    "ema-rate": (_train(ema_rate="abc"), ["--ema_rate", "abc"]),
    "lr-negative": (_train(lr=-1), ["--lr"]),
    "dropout": (_train(dropout=1.5), ["--dropout"]),
    "seq-len": (_train(seq_len=3), ["--seq_len"]),
    "hidden-dim-type": (_train(hidden_dim="abc"), ["--hidden_dim", "abc"]),
    "keep-states": (_train(keep_states=-1), ["--keep_states"]),
    "unknown-flag": (_train(_extra=["--no_such_flag", "1"]), ["--no_such_flag"]),
    "denoise-needs-mean": (_train(denoise="true"), ["--denoise", "--learned_mean_embed"]),
    "resume-missing": (_train(resume_checkpoint="nope.pt"), ["--resume_checkpoint", "nope.pt"]),
    "resume-truncated": (
        _train(resume_checkpoint=_truncated_checkpoint),
        ["truncated.pt", "truncated", "use another checkpoint"],
    ),
    "vocab-missing": (_train(vocab="no_vocab.txt"), ["no_vocab.txt"]),
    "num-workers": (_train(num_workers=-1), ["--num_workers"]),
    "weight-decay": (_train(weight_decay=-1), ["--weight_decay"]),
    "reg-rate": (_train(reg_rate=-1), ["--reg_rate"]),
    "num-layers-negative": (_train(num_layers=-1), ["--num_layers"]),
    "wordpiece-size": (
        _train(vocab="wordpiece", wordpiece_vocab_size=0),
        ["--wordpiece_vocab_size"],
    ),
    "seq-len-above-positions": (_train(seq_len=100000), ["--seq_len 100000", "512"]),
    "heads-do-not-divide": (_train(num_heads=3), ["--num_heads", "(3)"]),
    "config-name-missing": (
        _train(config_name="no/such/config"),
        ["--config_name", "no/such/config"],
    ),
    "checkpoint-path-is-a-file": (
        _train(checkpoint_path=lambda c: c.decoded),
        ["cannot write the run folder", "seed101_step0.json"],
    ),
    "vocab-not-utf8": (
        _train(vocab=lambda c: c.file("vocab_latin1.txt", b"a\ncaf\xe9\n")),
        ["vocab_latin1.txt", "UTF-8"],
    ),
}


def _without(folder: Path) -> Path:
    (folder / "valid.jsonl").unlink()
    return folder


def _exit_code(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """``main(argv)``'s status; argparse's own usage errors exit 2 via SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def _message(err: str, prog: str) -> str:
    assert "Traceback" not in err, err
    assert f"{prog}: error:" in err, err
    return err[err.index(f"{prog}: error:") :]


def _assert_names(message: str, needles: list[str]) -> None:
    squeezed = re.sub(r"\s", "", message)  # the paragraph is wrapped, also inside long paths
    for needle in needles:
        assert re.sub(r"\s", "", str(needle)) in squeezed, (needle, message)


# issue 24: non-finite and out-of-range numbers, strict preset types, bounded YAML
def _alias_bomb(levels: int = 13) -> str:
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nnotes: *l{levels - 1}\n"


TRAIN_CASES.update(
    {
        "lr-inf": (_train(lr="inf"), ["--lr", "inf", "finite"]),
        "lr-nan": (_train(lr="nan"), ["--lr", "nan", "finite"]),
        "lr-huge": (_train(lr="1e30"), ["--lr", "at most 1", "1e+30"]),
        "weight-decay-inf": (_train(weight_decay="inf"), ["--weight_decay", "finite"]),
        "gradient-clipping-nan": (_train(gradient_clipping="nan"), ["--gradient_clipping"]),
        "max-minutes-nan": (_train(max_minutes="nan"), ["--max_minutes", "finite"]),
        "dropout-nan": (_train(dropout="nan"), ["--dropout", "finite"]),
        "ema-rate-twice": (_train(ema_rate="0.9,0.90"), ["--ema_rate", "twice"]),
        "seed-huge": (_train(seed="18446744073709551616"), ["--seed", "2**31"]),
        "preset-lr-inf": (_preset("lr: .inf\n", lr=None), ["--lr", "inf", "finite"]),
        "preset-bsz-float": (
            _preset("bsz: 8.5\n", bsz=None),
            ["preset", "bsz", "8.5", "whole number"],
        ),
        "preset-steps-float": (
            _preset("learning_steps: 2.9\n", learning_steps=None),
            ["preset", "learning_steps", "2.9", "cut to 2"],
        ),
        "preset-seed-bool": (_preset("seed: true\n", seed=None), ["preset", "seed", "boolean"]),
        "preset-dataset-empty": (
            _preset("dataset:\n", dataset=None),
            ["preset", "dataset", "no value"],
        ),
        "preset-wrong-section": (
            _preset("model:\n  lr: 0.1\n", lr=None),
            ["preset", "'lr'", "section 'model'", "belongs to 'train'"],
        ),
        "preset-section-not-mapping": (_preset("train: 3\n"), ["preset", "section 'train'"]),
        "preset-alias-bomb": (_preset(_alias_bomb()), ["preset", "more than 100 aliases"]),
        "preset-too-deep": (_preset("notes: " + "[" * 30 + "]" * 30 + "\n"), ["nesting"]),
        "preset-unquoted-no": (
            _preset("use_plm_init: no\n"),
            ["preset", "use_plm_init", "quote"],
        ),
        "preset-notes-list": (_preset("notes: [a, b]\n"), ["preset", "notes", "list"]),
        "preset-bool-number": (_preset("use_fp16: 2\n"), ["preset", "use_fp16", "true or false"]),
    }
)


TRAIN_CASES.update(  # issue 24: sizes that exhaust memory or break the model, empty paths
    {
        "diff-steps-huge": (
            _train(diff_steps="10000000000"),
            ["--diff_steps", "[2, 100000]", "10000000000"],
        ),
        "diff-steps-one": (_train(diff_steps=1), ["--diff_steps", "got 1"]),
        "hidden-t-dim-one": (_train(hidden_t_dim=1), ["--hidden_t_dim", "at least 2"]),
        "respacing-negative": (
            _train(timestep_respacing="-3"),
            ["--timestep_respacing", "'-3'", "0 step(s)"],
        ),
        "respacing-one-step": (
            _train(timestep_respacing="1"),
            ["--timestep_respacing", "'1'", "1 step(s)"],
        ),
        "data-dir-empty": (_train(data_dir=""), ["--data_dir is empty"]),
        "data-dir-blank": (_train(data_dir="  "), ["--data_dir is empty"]),
        "ema-rate-twice-spaced": (_train(ema_rate="0.99, 0.990"), ["--ema_rate", "twice"]),
        "seed-negative": (_train(seed=-1), ["--seed", "2**31"]),
        "seed-2-to-64": (_train(seed=str(2**64)), ["--seed", str(2**64)]),
    }
)


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train(ctx, case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run folder would go to tmp_path/diffusion_models
    build, needles = TRAIN_CASES[case]
    out = tmp_path / "run"
    assert _exit_code(train_main, build(ctx, out)) == 2
    message = _message(capsys.readouterr().err, "run_train.py")
    _assert_names(message, needles)
    # checked before anything was written: no run folder at all
    assert not out.exists() and not (tmp_path / "diffusion_models").exists()


def test_train_unreadable_file(ctx, capsys, tmp_path, monkeypatch):
    """A train.jsonl that cannot be opened (PermissionError; faked, as root may read anything)."""
    data = make_tiny_data(tmp_path / "data")
    target = data / "train.jsonl"
    real_open = Path.open

    def fake_open(self, *args, **kwargs):
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", fake_open)
    assert train_main(tiny_argv(data, checkpoint_path=tmp_path / "run")) == 2
    message = _message(capsys.readouterr().err, "run_train.py")
    _assert_names(message, [str(target), "Permission denied"])
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ run_decode.py


def _decode(*extra: Any) -> Callable[[Ctx, Path], list[str]]:
    def build(c: Ctx, out: Path) -> list[str]:
        values = [str(x(c) if callable(x) else x) for x in extra]
        return ["--model_dir", str(c.run), "--out_dir", str(out), *values]

    return build


def _truncated_run(c: Ctx) -> Path:
    folder = c.root / "truncated_run" / c.run.name
    if not folder.exists():
        folder.mkdir(parents=True)
        for path in c.run.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        data = (folder / "ema_0.9999_000010.pt").read_bytes()
        (folder / "ema_0.9999_000010.pt").write_bytes(data[: len(data) // 2])
    return folder


DECODE_CASES = {
    "model-dir-missing": (lambda c, out: ["--model_dir", "no/such/run"], ["--model_dir"]),
    "model-dir-empty": (lambda c, out: [], ["--model_dir is required"]),
    "input-not-utf8": (
        _decode("--input", lambda c: c.file("latin1.jsonl", NOT_UTF8)),
        ["latin1.jsonl", "line 1", "UTF-8"],
    ),
    "input-folder": (_decode("--input", lambda c: c.root), ["--input", "is a folder"]),
    "input-missing": (_decode("--input", "nope.jsonl"), ["nope.jsonl", "not found"]),
    "input-bad-json": (
        _decode("--input", lambda c: c.file("bad.jsonl", '{"src": "a"}\n{"src": \n')),
        ["bad.jsonl", "line 2", "invalid JSON"],
    ),
    "input-no-src": (
        _decode("--input", lambda c: c.file("nosrc.jsonl", '{"trg": "a"}\n')),
        ["nosrc.jsonl", "line 1", "field 'src'"],
    ),
    "input-and-text": (
        _decode("--input", lambda c: c.file("ok.jsonl", '{"src": "a"}\n'), "--text", "a"),
        ["--input", "--text"],
    ),
    "note-dotdot": (_decode("--note", "x/../.."), ["--note", "x/../.."]),
    "note-absolute": (_decode("--note", "/x"), ["--note", "/x"]),
    "step-zero": (_decode("--step", "0"), ["--step"]),
    "step-too-large": (_decode("--step", "1000"), ["--step 1000", "T=10"]),
    "step-type": (_decode("--step", "2.5"), ["--step", "2.5"]),
    "ancestral-few-steps": (
        _decode("--sampler", "ancestral", "--step", "5"),
        ["--sampler ancestral", "--step 5"],
    ),
    "bsz-zero": (_decode("--bsz", "0"), ["--bsz"]),
    "num-samples-zero": (_decode("--num_samples", "0"), ["--num_samples"]),
    "ddim-adjacent-dpm": (
        _decode("--sampler", "dpm-solver++", "--ddim_adjacent"),
        ["--ddim_adjacent"],
    ),
    "dpm-v2-ddim": (_decode("--sampler", "ddim", "--dpm_v2_variant"), ["--dpm_v2_variant"]),
    "pattern-no-match": (_decode("--pattern", "nothing"), ["--pattern", "nothing"]),
    "truncated-checkpoint": (
        lambda c, out: ["--model_dir", str(_truncated_run(c)), "--out_dir", str(out)],
        ["ema_0.9999_000010.pt", "truncated", "use another checkpoint"],
    ),
    "sampler-unknown": (_decode("--sampler", "euler"), ["--sampler", "euler"]),
    "top-p-type": (_decode("--top_p", "abc"), ["--top_p", "'abc'"]),
    "clamp-negative": (_decode("--clamp_step", "-1"), ["--clamp_step"]),
    "input-empty": (
        _decode("--input", lambda c: c.file("empty.jsonl", "")),
        ["empty.jsonl", "empty"],
    ),
    "out-dir-is-a-file": (
        _decode("--out_dir", lambda c: c.decoded),
        ["--out_dir", "pass a folder"],
    ),
    "out-dir-below-a-file": (
        _decode("--out_dir", lambda c: c.decoded / "sub"),
        ["--out_dir", "seed101_step0.json is a file"],
    ),
    "run-config-yaml-syntax": (
        lambda c, out: ["--model_dir", str(_damaged_run(c, "config.yaml", "model: [1\n"))],
        ["config.yaml", "invalid YAML"],
    ),
    "run-config-yaml-type": (
        lambda c, out: [
            "--model_dir",
            str(_damaged_run(c, "config.yaml", "model:\n  hidden_dim: abc\n")),
        ],
        ["config.yaml", "hidden_dim", "'abc'"],
    ),
    "run-vocab-json": (
        lambda c, out: [
            "--model_dir",
            str(_damaged_run(c, "vocab.json", "{")),
            "--out_dir",
            str(out),
        ],
        ["vocab.json", "cannot read the saved vocabulary"],
    ),
    "run-training-args-list": (
        lambda c, out: [
            "--model_dir",
            str(_damaged_run(c, "training_args.json", "[1]", drop="config.yaml")),
        ],
        ["training_args.json", "JSON object"],
    ),
}


def _damaged_run(c: Ctx, name: str, content: str, *, drop: str = "") -> Path:
    """A copy of the run folder with ``name`` replaced by ``content`` (``drop`` removed)."""
    folder = c.root / f"damaged_{name}_{len(content)}" / c.run.name
    if not folder.exists():
        folder.mkdir(parents=True)
        for path in c.run.iterdir():
            if path.name != drop:
                (folder / path.name).write_bytes(path.read_bytes())
        (folder / name).write_text(content)
    return folder


DECODE_CASES.update(  # issue 24: a non-finite --top_p (nan meant "off")
    {
        "top-p-nan": (_decode("--top_p", "nan"), ["--top_p", "nan", "finite"]),
        "top-p-inf": (_decode("--top_p", "inf"), ["--top_p", "inf", "finite"]),
    }
)


def _model_folder(c: Ctx, name: str, edit: Callable[[dict], None], *, drop: str = "") -> Path:
    """A model folder exported from the run, ``edit`` applied to its config.json (``drop``
    removed)."""
    from diffuseq.store.hf_folder import export_checkpoint

    folder = c.root / "model_folders" / name
    if not folder.exists():
        export_checkpoint(c.run, out=folder)
        info = json.loads((folder / "config.json").read_text())
        edit(info)
        (folder / "config.json").write_text(json.dumps(info))
        if drop:
            (folder / drop).unlink()
    return folder


def _outside_vocab(info: dict) -> None:
    info["run_config"]["data"]["vocab"] = "../../../vocab.txt"


def _heads(count: Any) -> Callable[[dict], None]:
    def edit(info: dict) -> None:
        info["encoder"]["num_attention_heads"] = count

    return edit


def _model(name: str, edit: Callable[[dict], None], **kw: str) -> Callable[[Ctx, Path], list[str]]:
    def build(c: Ctx, out: Path) -> list[str]:
        return ["--model_dir", str(_model_folder(c, name, edit, **kw)), "--out_dir", str(out)]

    return build


DECODE_CASES.update(  # issue 24: nothing read or written outside the folders named
    {
        "pattern-dotdot": (_decode("--pattern", "../x"), ["--pattern", "'../x'", "'..'"]),
        "pattern-slash": (_decode("--pattern", "sub/ema"), ["--pattern", "'sub/ema'"]),
        "pattern-absolute": (_decode("--pattern", "/tmp/ema"), ["--pattern", "'/tmp/ema'"]),
        "model-folder-vocab-outside": (
            _model("vocab_outside", _outside_vocab, drop="vocab.json"),
            ["config.json", "run_config.data.vocab", "../../../vocab.txt", "outside"],
        ),
        "out-dir-long-name": (
            _decode("--out_dir", lambda c: c.root / ("m" * 300) / "out"),
            ["--out_dir", "255 bytes"],
        ),
        "out-dir-nul": (_decode("--out_dir", "a\x00b"), ["--out_dir", "NUL"]),
        "model-folder-heads-zero": (
            _model("heads0", _heads(0)),
            ["config.json", "encoder.num_attention_heads", "0"],
        ),
        "model-folder-heads-string": (
            _model("heads_str", _heads("2")),
            ["config.json", "encoder.num_attention_heads", "'2'"],
        ),
        "model-folder-heads-divide": (
            _model("heads3", _heads(3)),
            ["config.json", "num_attention_heads (3)", "hidden_size"],
        ),
    }
)


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_decode(ctx, case, capsys, tmp_path):
    build, needles = DECODE_CASES[case]
    out = tmp_path / "out"
    assert _exit_code(decode_main, build(ctx, out)) == 2
    message = _message(capsys.readouterr().err, "run_decode.py")
    _assert_names(message, needles)
    if case == "truncated-checkpoint":  # the whole sentence, not cut in the middle
        assert message.rstrip().endswith("use another checkpoint")
    assert not list(out.rglob("*.json")) if out.exists() else True


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_decode_cuda_without_a_gpu(ctx, capsys, tmp_path):
    assert decode_main(_decode("--device", "cuda")(ctx, tmp_path)) == 2
    _assert_names(_message(capsys.readouterr().err, "run_decode.py"), ["--device cuda"])


# ------------------------------------------------------------------------------ eval_seq2seq.py


def _bad_weights_model(c: Ctx) -> Path:
    folder = c.root / "bad_bertscore_model"
    if not folder.exists():
        folder.mkdir()
        config = {
            "model_type": "bert",
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "intermediate_size": 8,
            "vocab_size": 10,
        }
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "pytorch_model.bin").write_bytes(b"not a pickle of tensors")
    return folder


def _manifest_mismatch(c: Ctx) -> Path:
    folder = c.root / "manifest_mismatch"
    if not folder.exists():
        line = c.decoded.read_text().splitlines()[0]
        write_outputs(folder, {"seed101_step0.json": [line] * 3}, settings={}, special_tokens={})
        (folder / "seed101_step0.json").write_text(line + "\n")
    return folder


def _folder_of(**files: str) -> Callable[[Ctx], Path]:
    def build(c: Ctx) -> Path:
        folder = c.root / ("folder_" + "_".join(sorted(files)))
        folder.mkdir(exist_ok=True)
        for name, text in files.items():
            (folder / f"{name}.json").write_text(text)
        return folder

    return build


def _eval(*argv: Any) -> Callable[[Ctx, Path], list[str]]:
    def build(c: Ctx, out: Path) -> list[str]:
        return [str(x(c) if callable(x) else x) for x in argv]

    return build


RECORD = json.dumps({"recover": "a", "reference": "a", "source": "x"}) + "\n"
EVAL_CASES = {
    "folder-missing": (_eval("--folder", "no/such"), ["no/such", "no such folder"]),
    "folder-is-a-file": (_eval("--folder", lambda c: c.decoded), ["is a file", "--file"]),
    "folder-empty": (_eval("--folder", _folder_of()), ["no *json files"]),
    "folder-unequal-files": (
        _eval("--folder", _folder_of(seed1=RECORD, seed2=RECORD * 2), "--no_bertscore"),
        ["seed2.json", "line 2", "line i of every file"],
    ),
    "folder-manifest-mismatch": (
        _eval("--folder", _manifest_mismatch, "--no_bertscore"),
        ["seed101_step0.json", "incomplete", "MANIFEST"],
    ),
    "file-missing": (_eval("--file", "nope.json"), ["nope.json", "not found"]),
    "file-not-utf8": (
        _eval("--file", lambda c: c.file("latin1.json", b'{"recover": "\xe9"}\n')),
        ["latin1.json", "line 1", "UTF-8"],
    ),
    "file-missing-field": (
        _eval("--file", lambda c: c.file("nofield.json", '{"recover": "a", "source": "b"}\n')),
        ["nofield.json", "line 1", "field 'reference'"],
    ),
    "no-input": (_eval(), ["give exactly one input"]),
    "two-inputs": (_eval("--file", "a.json", "--hyp", "h.txt"), ["--file", "--hyp"]),
    "hyp-without-ref": (_eval("--hyp", "h.txt"), ["--hyp", "--ref"]),
    "hyp-ref-lengths": (
        _eval(
            "--hyp",
            lambda c: c.file("hyp.txt", "a\nb\n"),
            "--ref",
            lambda c: c.file("ref.txt", "a\n"),
            "--no_bertscore",
        ),
        ["ref.txt", "line 2", "hyp.txt"],
    ),
    "bertscore-missing-folder": (
        _eval("--file", lambda c: c.decoded, "--bertscore_model", "./no_such_model"),
        ["--bertscore_model", "no_such_model", "no such folder"],
    ),
    "bertscore-file": (
        _eval("--file", lambda c: c.decoded, "--bertscore_model", lambda c: c.decoded),
        ["--bertscore_model", "is a file"],
    ),
    "bertscore-bad-weights": (
        _eval(
            "--file",
            lambda c: c.decoded,
            "--bertscore_model",
            _bad_weights_model,
            "--bertscore_layer",
            "1",
        ),
        ["bad_bertscore_model", "weights", "--bertscore_model"],
    ),
    "workers-zero": (_eval("--file", lambda c: c.decoded, "--workers", "0"), ["--workers"]),
    "json-folder-missing": (
        _eval("--file", lambda c: c.decoded, "--json", "no/such/dir/out.json"),
        ["--json", "no/such/dir/out.json"],
    ),
    "file-blank-line": (
        _eval("--file", lambda c: c.file("blank.json", RECORD + "\n"), "--no_bertscore"),
        ["blank.json", "line 2", "blank line"],
    ),
    "file-empty": (_eval("--file", lambda c: c.file("empty.json", "")), ["empty.json", "empty"]),
    "file-is-a-folder": (_eval("--file", lambda c: c.root), ["is a folder"]),
    "hyp-not-utf8": (
        _eval(
            "--hyp",
            lambda c: c.file("hyp_latin1.txt", b"\xff\n"),
            "--ref",
            lambda c: c.file("ref1.txt", "a\n"),
        ),
        ["hyp_latin1.txt", "UTF-8"],
    ),
    "hyp-is-a-folder": (
        _eval("--hyp", lambda c: c.root, "--ref", lambda c: c.file("ref1.txt", "a\n")),
        ["Is a directory"],
    ),
    "json-is-a-folder": (
        _eval("--file", lambda c: c.decoded, "--json", lambda c: c.root, "--no_bertscore"),
        ["--json", "cannot write"],
    ),
    "bertscore-layer-type": (
        _eval("--file", lambda c: c.decoded, "--bertscore_layer", "x"),
        ["--bertscore_layer", "'x'"],
    ),
}


def _manifest_entry(value: Any) -> Callable[[Ctx], Path]:
    def build(c: Ctx) -> Path:
        folder = c.root / f"manifest_entry_{type(value).__name__}"
        if not folder.exists():
            folder.mkdir()
            (folder / "seed101_step0.json").write_text(RECORD)
            manifest = {"format": "diffuseq-decode-outputs", "version": 1, "files": {}}
            manifest["files"]["seed101_step0.json"] = value
            (folder / "MANIFEST").write_text(json.dumps(manifest))
        return folder

    return build


EVAL_CASES.update(  # issue 24: a hand-edited MANIFEST
    {
        "manifest-entry-number": (
            _eval("--folder", _manifest_entry(5), "--no_bertscore"),
            ["MANIFEST", "files.seed101_step0.json", "5 is not a file entry"],
        ),
        "manifest-entry-list": (
            _eval("--folder", _manifest_entry([1, 2]), "--no_bertscore"),
            ["MANIFEST", "files.seed101_step0.json", "[1, 2]"],
        ),
    }
)


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_evaluate(ctx, case, capsys, tmp_path):
    build, needles = EVAL_CASES[case]
    assert _exit_code(eval_main, build(ctx, tmp_path)) == 2
    out, err = capsys.readouterr()
    message = _message(err, "eval_seq2seq.py")
    _assert_names(message, needles)
    assert "hf download" not in message  # never told to download a local path


# ------------------------------------------------------------------------------ Python API


@pytest.fixture(scope="module")
def generator(ctx):
    return api.load(ctx.run, device="cpu")


API_CASES: dict[str, tuple[Callable[[Any, Ctx], Any], type[Exception], list[str]]] = {
    "none-source": (lambda g, c: g.generate([None]), TypeError, ["sources[0]", "NoneType"]),
    "int-source": (lambda g, c: g.generate([123]), TypeError, ["sources[0]", "int"]),
    "string-not-list": (lambda g, c: g.generate("a string"), TypeError, ["list of strings"]),
    "bytes-not-list": (lambda g, c: g.generate(b"abc"), TypeError, ["list of strings"]),
    "int-not-list": (lambda g, c: g.generate(5), TypeError, ["sources", "int"]),
    "reference-int": (
        lambda g, c: g.generate(["a"], references=[1]),
        TypeError,
        ["references[0]"],
    ),
    "references-count": (
        lambda g, c: g.generate(["a"], references=["a", "b"]),
        ValueError,
        ["references"],
    ),
    "steps-float": (lambda g, c: g.generate(["a"], steps=2.5), TypeError, ["steps", "float"]),
    "steps-bool": (lambda g, c: g.generate(["a"], steps=True), TypeError, ["steps", "bool"]),
    "steps-zero": (lambda g, c: g.generate(["a"], steps=0), ValueError, ["steps"]),
    "top-p-string": (lambda g, c: g.generate(["a"], top_p="x"), TypeError, ["top_p", "'x'"]),
    "num-samples-zero": (
        lambda g, c: g.generate(["a"], num_samples=0),
        ValueError,
        ["num_samples"],
    ),
    "seed-string": (lambda g, c: g.generate(["a"], seed="1"), TypeError, ["seed"]),
    "batch-size-float": (
        lambda g, c: g.generate(["a"], batch_size=1.5),
        TypeError,
        ["batch_size"],
    ),
    "sampler-unknown": (
        lambda g, c: g.generate(["a"], sampler="euler"),
        ValueError,
        ["sampler", "euler"],
    ),
    "steps-above-T": (lambda g, c: g.generate(["a"], steps=1000), ConfigError, ["T=10"]),
    "load-missing": (
        lambda g, c: api.load(c.root / "nope"),
        CheckpointError,
        ["nope", "neither a run folder nor a checkpoint"],
    ),
    "load-device-name": (
        lambda g, c: api.load(c.run, device="gpu"),
        ValueError,
        ["device", "'gpu'"],
    ),
    "load-dtype": (lambda g, c: api.load(c.run, dtype="fp64"), ValueError, ["dtype", "fp64"]),
    "load-path-type": (lambda g, c: api.load(3), TypeError, ["path", "int"]),
}
if not torch.cuda.is_available():
    API_CASES["load-cuda-without-gpu"] = (
        lambda g, c: api.load(c.run, device="cuda"),
        ConfigError,
        ["device='cuda'", "no CUDA GPU", "device='cpu'"],
    )


API_CASES.update(  # issue 24: booleans are booleans, top_p is finite
    {
        "ddim-adjacent-string": (
            lambda g, c: g.generate(["a"], ddim_adjacent="false"),
            TypeError,
            ["ddim_adjacent", "'false'"],
        ),
        "dpm-v2-variant-string": (
            lambda g, c: g.generate(["a"], dpm_v2_variant="no"),
            TypeError,
            ["dpm_v2_variant", "'no'"],
        ),
        "top-p-nan": (
            lambda g, c: g.generate(["a"], top_p=float("nan")),
            ValueError,
            ["top_p", "finite"],
        ),
        "top-p-inf": (
            lambda g, c: g.generate(["a"], top_p=float("inf")),
            ValueError,
            ["top_p", "finite"],
        ),
    }
)


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api(ctx, generator, case):
    call, kind, needles = API_CASES[case]
    with pytest.raises(kind) as err:
        call(generator, ctx)
    assert type(err.value) is kind, err.value
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


# ------------------------------------------------------------------------------ diffuseq-export


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its content."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


EXPORT_CASES: dict[str, tuple[Callable[[Ctx], Any], list[str], list[str]]] = {
    # name: (--out, extra flags, needles); nothing is deleted or written
    "force-parent-of-runs": (lambda c: c.run.parent, ["--force"], ["did not write", "nothing"]),
    "force-run": (lambda c: c.run, ["--force"], ["did not write", "nothing was deleted"]),
    "force-data": (lambda c: c.data, ["--force"], ["did not write", "nothing was deleted"]),
    "force-plain-file": (lambda c: c.decoded, ["--force"], ["not a folder", "nothing"]),
    "force-dot": (lambda c: ".", ["--force"], ["--out '.'", "names no folder"]),
    "long-name": (lambda c: c.root / ("m" * 300), [], ["--out", "255 bytes"]),
    "exists-without-force": (lambda c: c.data, [], ["already exists", "--force"]),
    "parent-is-a-file": (lambda c: c.decoded / "model", [], ["--out", "cannot be a folder"]),
    # issue 24
    "dot": (lambda c: ".", [], ["--out '.'", "names no folder"]),
    "dotdot": (lambda c: "..", [], ["--out '..'", "names no folder"]),
    "long-name-force": (lambda c: c.root / ("m" * 300), ["--force"], ["--out", "255 bytes"]),
    "long-parent": (lambda c: c.root / ("m" * 300) / "model", [], ["--out", "255 bytes"]),
    "nul": (lambda c: "a\x00b", [], ["--out", "NUL"]),
    "pattern-dotdot": (lambda c: c.root / "pm", ["--pattern", "../ema"], ["--pattern", "'..'"]),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export(ctx, case, capsys, monkeypatch, tmp_path):
    from diffuseq.cli.export import main as export_main

    monkeypatch.chdir(tmp_path)
    out, extra, needles = EXPORT_CASES[case]
    target = Path(out(ctx))
    watched = [ctx.root, tmp_path]
    before = [_tree(path) for path in watched]
    assert _exit_code(export_main, [str(ctx.run), "--out", str(target), *extra]) == 2
    _assert_names(_message(capsys.readouterr().err, "diffuseq-export"), needles)
    assert [_tree(path) for path in watched] == before  # nothing deleted, nothing written


# ------------------------------------------------------------------------------ diffuseq-plot

LOSS = '{"step": 0, "loss": 1.0}\n'
PLOT_CASES: dict[str, tuple[bytes | str | None, list[str], list[str]]] = {
    # name: (metrics.jsonl content or None for none, extra flags, needles)
    "step-string": ('{"step": "abc", "loss": 1}\n', [], ["line 1", "field 'step'", "'abc'"]),
    "step-null": (LOSS + '{"step": null, "loss": 1}\n', [], ["line 2", "field 'step'", "None"]),
    "step-bool": ('{"step": true, "loss": 1}\n', [], ["line 1", "field 'step'", "True"]),
    "step-nan": ('{"step": NaN, "loss": 1}\n', [], ["line 1", "field 'step'", "finite"]),
    "seconds-string": (
        LOSS + '{"step": 1, "seconds": "x", "decode_bleu": 0.1}\n',
        [],
        ["line 2", "field 'seconds'", "'x'"],
    ),
    "not-utf8": (LOSS.encode() + b'{"step": 1, "loss": "\xe9"}\n', [], ["line 2", "UTF-8"]),
    "not-json": (LOSS + '{"step": 1,\n', [], ["line 2", "not JSON"]),
    "list-line": ("[1]\n", [], ["line 1", "JSON object"]),
    "no-loss": ('{"step": 1}\n', [], ["no record with a step and a loss"]),
    "no-metrics": (None, [], ["holds no metrics.jsonl"]),
    "out-folder": (LOSS, ["--out", "{run}"], ["--out", "is a folder"]),
    "out-dot": (LOSS, ["--out", "."], ["--out", "is a folder"]),
    "out-not-png": (LOSS, ["--out", "{run}/loss.txt"], ["--out", ".png"]),
    "out-folder-missing": (LOSS, ["--out", "{run}/no/loss.png"], ["does not exist"]),
}


@pytest.mark.parametrize("case", sorted(PLOT_CASES))
def test_plot(case, capsys, tmp_path, monkeypatch):
    from diffuseq.cli.plot import main as plot_main

    monkeypatch.chdir(tmp_path)
    content, extra, needles = PLOT_CASES[case]
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        path = run / "metrics.jsonl"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    argv = [str(run), *(x.format(run=run) for x in extra)]
    assert _exit_code(plot_main, argv) == 2
    _assert_names(_message(capsys.readouterr().err, "diffuseq-plot"), needles)
    assert not list(tmp_path.rglob("*.png"))  # nothing written


def test_the_table_is_large_enough():
    counted = len(TRAIN_CASES) + len(DECODE_CASES) + len(EVAL_CASES) + len(API_CASES)
    assert counted + len(EXPORT_CASES) + len(PLOT_CASES) >= 190, counted
