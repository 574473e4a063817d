"""The ``eval_seq2seq.py`` command line: inputs, bad input messages, JSON, extras, BERTScore."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from diffuseq.cli.evaluate import main
from diffuseq.evaluation import metrics

LINES_A = [
    {
        "recover": "[CLS] how do i learn python ? [SEP] [PAD]",
        "reference": "[CLS] how can i learn python ? [SEP]",
        "source": "[CLS] best way to learn python ? [SEP] [SEP]",
    },
    {
        "recover": "[CLS] [SEP] [PAD] [PAD]",
        "reference": "[CLS] what is love ? [SEP]",
        "source": "[CLS] define love [SEP] [SEP]",
    },
]
LINES_B = [
    {
        "recover": "[CLS] how can i learn python ? [SEP]",
        "reference": LINES_A[0]["reference"],
        "source": LINES_A[0]["source"],
    },
    {
        "recover": "[CLS] what is love [SEP]",
        "reference": LINES_A[1]["reference"],
        "source": LINES_A[1]["source"],
    },
]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _write(tmp_path / "seed101_step0.json", LINES_A)
    _write(tmp_path / "seed102_step0.json", LINES_B)
    return tmp_path


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([*argv, "--no_bertscore", "--workers", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _value(out: str, label: str) -> str:
    return next(line[len(label) + 1 :] for line in out.splitlines() if line.startswith(label + " "))


def test_single_file_numbers(folder, capsys):
    code, out, _ = _run(["--file", str(folder / "seed102_step0.json")], capsys)
    assert code == 0
    # line 1: hyp "how can i learn python ?" == reference -> BLEU 1, ROUGE-L 1, dist-1 1;
    # line 2: hyp "what is love" vs "what is love ?": p1 = p2 = p3 = 1; no 4-gram in a 3-token
    # hypothesis, so method4 gives p4 = 1 / (2 * 5 / ln 3) / 1 = 0.1099; BP = exp(1 - 4/3), so
    # BLEU = 0.7165 * 0.1099^(1/4) = 0.4125. ROUGE-L: tokens [what, is, love] on both sides -> 1.0;
    # len(" what is love ".split(" ")) = 5
    line2 = math.exp(1 - 4 / 3) * (math.log(3) / 10) ** 0.25
    assert float(_value(out, "avg BLEU score")) == pytest.approx((1 + line2) / 2, abs=1e-15)
    assert _value(out, "avg ROUGE-L score") == "1.0"
    assert _value(out, "avg dist1 score") == "1.0"
    assert _value(out, "avg len") == str((8 + 5) / 2)  # " how can i learn python ? " -> 8
    assert _value(out, "avg berscore") == "skipped (--no_bertscore)"
    assert "Compute diversity" not in out


def test_folder_diversity_and_mbr(folder, capsys):
    code, out, _ = _run(["--folder", str(folder)], capsys)
    assert code == 0 and "Compute diversity..." in out
    code, out, _ = _run(["--folder", str(folder), "--mbr"], capsys)
    assert code == 0 and "MBR..." in out and "avg ROUGE-l score" in out
    assert out.splitlines()[-1].startswith("avg dist1 score")  # no avg len in the MBR block


def test_text_pair_input(tmp_path, capsys):
    hyp = tmp_path / "hyp.txt"
    ref = tmp_path / "ref.txt"
    hyp.write_text("a b c d\nx y\n")
    ref.write_text("a b c d e\nx y\n")
    code, out, _ = _run(["--hyp", str(hyp), "--ref", str(ref)], capsys)
    assert code == 0
    # "a b c d" vs "a b c d e": exp(1 - 5/4); "x y" vs "x y": p1 = p2 = 1, p3 and p4 smoothed
    # to ln2 / 10 and ln2 / 20 (method4, k = 1, 2), so BLEU = (ln2^2 / 200)^(1/4) = 0.2214
    expected = (math.exp(1 - 5 / 4) + (math.log(2) ** 2 / 200) ** 0.25) / 2
    assert float(_value(out, "avg BLEU score")) == pytest.approx(expected, abs=1e-15)


def test_json_and_extras(folder, tmp_path, capsys):
    out_json = tmp_path / "out" / "eval.json"
    out_json.parent.mkdir()
    code, out, _ = _run(["--folder", str(folder), "--mbr", "--json", str(out_json)], capsys)
    assert code == 0 and "[extra]" not in out  # --json computes extras, only --extras prints them
    data = json.loads(out_json.read_text())
    # two candidates of equal length have S[0][1] == S[1][0] (matches are symmetric): a tie, the
    # first file wins; line 2 has an empty candidate (BLEU 0 both ways)
    assert data["mbr"]["selected_file_index"] == [0, 0]
    assert data["mbr"]["examples"][0]["recover"] == " how do i learn python ?  "
    assert data["files"][0]["extras"]["avg_dist2"] == pytest.approx(0.5)  # 1.0 and 0 (no bigrams)
    assert data["lines"] == out.splitlines()
    code, out, _ = _run(["--folder", str(folder), "--extras"], capsys)
    assert (
        "[extra] avg symmetric selfBleu score" in out
        and "[extra] corpus BLEU (sacrebleu, 0-100)" in out
    )


def _expect_error(argv: list[str], capsys, *fragments: str) -> None:
    code, out, err = _run(argv, capsys)
    assert code == 2, (out, err)
    message = " ".join(err.split())
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in message, message


def test_bad_inputs_are_user_errors(tmp_path, folder, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(["--folder", str(empty)], capsys, "no *json files")
    _expect_error(["--folder", str(tmp_path / "missing")], capsys, "no such folder")
    _expect_error([], capsys, "give exactly one input")
    _expect_error(["--folder", str(folder), "--file", "x.json"], capsys, "give exactly one input")
    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad / "a.json", [LINES_A[0], '{"recover": "x", "reference": '])
    _expect_error(["--folder", str(bad)], capsys, "a.json, line 2", "invalid JSON")
    _write(bad / "a.json", [LINES_A[0], {"recover": "x", "source": "y"}])
    _expect_error(["--folder", str(bad)], capsys, "a.json, line 2, field 'reference'", "missing")
    _write(bad / "a.json", [{"recover": 3, "reference": "r", "source": "s"}])
    _expect_error(["--folder", str(bad)], capsys, "line 1, field 'recover'", "must be a string")
    _write(bad / "a.json", [[1, 2]])
    _expect_error(["--folder", str(bad)], capsys, "line 1", "got a JSON")
    _write(bad / "a.json", LINES_A)
    _write(bad / "b.json", LINES_A[:1])
    _expect_error(
        ["--folder", str(bad)], capsys, "b.json, line 2", "has 1 lines but", "a.json has 2"
    )
    (bad / "b.json").write_text("")
    _expect_error(["--folder", str(bad)], capsys, "b.json", "empty")
    hyp, ref = _write(tmp_path / "h.txt", ["a", "b"]), _write(tmp_path / "r.txt", ["a"])
    _expect_error(["--hyp", str(hyp), "--ref", str(ref)], capsys, "r.txt, line 2", "line missing")


def test_explicit_bertscore_model_missing_is_an_error(folder, tmp_path, capsys):
    code = main(
        [
            "--folder",
            str(folder),
            "--bertscore_model",
            str(tmp_path / "nope"),
            "--bertscore_layer",
            "1",
        ]
    )
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no such folder" in err and "hf download" not in err  # a local path: no hub advice


def test_default_bertscore_model_missing_offline_skips_with_one_line(folder, capsys):
    try:
        metrics.resolve_local_model(metrics.DEFAULT_BERTSCORE_MODEL)
        pytest.skip("the default BERTScore model is cached on this machine")
    except metrics.OfflineAssetError:
        pass
    assert main(["--folder", str(folder), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1
    assert "not available offline" in captured.err and "--no_bertscore" in captured.err
    assert "avg berscore unavailable (model not available offline)" in captured.out
    assert "avg BLEU score" in captured.out and "avg selfBleu score" in captured.out


def _tiny_bert(path: Path) -> Path:
    """A random 2-layer BERT with a 16-token vocab saved as a local model folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] how do i can learn python ? what is love define".split()
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(path / "vocab.txt"), model_max_length=32).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(path)
    return path


def test_bertscore_with_local_model(folder, tmp_path, capsys):
    import torch
    from bert_score import score

    model = _tiny_bert(tmp_path / "tiny")
    argv = [
        "--file",
        str(folder / "seed101_step0.json"),
        "--bertscore_model",
        str(model),
        "--bertscore_layer",
        "1",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    printed = _value(capsys.readouterr().out, "avg berscore")
    assert printed.startswith("tensor(")
    scorer = metrics.BertScorer(model=str(model), layer=1, verbose=False)
    hyps = [" how do i learn python ?  ", "    "]  # an empty hypothesis scores 0 (bert_score)
    refs = [" how can i learn python ? ", " what is love ? "]
    value, text = scorer(hyps, refs)
    assert printed == text == str(torch.tensor(value))
    # the original's call, bert_score.score(), gives the same F1 (it fails on the empty sentence
    # under transformers 5, which the scorer works around)
    direct = score(hyps[:1], refs[:1], model_type=str(model), num_layers=1, lang="en")[2]
    assert 0 < value == pytest.approx(float(direct[0]) / 2, abs=1e-7)


def test_tokenizer_adapter_for_bert_score():
    class Tokenizer:  # a transformers-5 tokenizer saved without model_max_length
        model_max_length = int(1e30)

        def encode(self, text, add_special_tokens=True):
            return [101, 102] if text == "" else [101, 7, 102]

    tokenizer = Tokenizer()
    metrics._adapt_tokenizer_for_bert_score(tokenizer, max_length=512)
    assert tokenizer.model_max_length == 512
    assert tokenizer.build_inputs_with_special_tokens([]) == [101, 102]
