"""docs/errors.md, row by row where no other test raises the message in this process: each input is
run through the CLI and must answer with exactly the row's line (conftest.py then checks every row
of the table against what the whole suite raised)."""
import json
import shutil

import pytest

from clitools import PROSE, documented_errors, one_line_error, run


ROWS = dict(documented_errors())


def _setup(case, tmp_path, tiny_dir):
    """argv for a documented input, with whatever files it needs made in tmp_path."""
    q = ["quantize", str(tiny_dir), "-o", str(tmp_path / "out"), "--no-eval"]
    if case == "config.json without model_type":
        d = tmp_path / "m"
        shutil.copytree(tiny_dir, d)
        cfg = json.loads((d / "config.json").read_text())
        del cfg["model_type"]
        (d / "config.json").write_text(json.dumps(cfg))
        return ["info", str(d)]
    if case == "`-o notes.txt --overwrite` (a file lowbit did not write)":
        (tmp_path / "notes.txt").write_text("mine\n")
        return ["quantize", str(tiny_dir), "-o", str(tmp_path / "notes.txt"), "--overwrite", "--method", "rtn",
                "--no-eval"]
    if case == "a partial run of OUT, no `--resume`":
        (tmp_path / ".out.lowbit-partial").mkdir()
        (tmp_path / ".out.lowbit-partial" / "run.json").write_text("{}\n")
        return q + ["--method", "rtn"]
    if case == "`--method gptq` on a model without tokenizer files":
        d = tmp_path / "notok"
        d.mkdir()
        for f in tiny_dir.iterdir():
            if f.name in ("config.json", "model.safetensors", "generation_config.json"):
                shutil.copy(f, d / f.name)
        return ["quantize", str(d), "-o", str(tmp_path / "out"), "--method", "gptq", "--no-eval"]
    if case == "`quantize --method rtn --damp-percent 0.1`":
        return q + ["--method", "rtn", "--damp-percent", "0.1"]
    if case == "`quantize --method rtn --calib F`":
        (tmp_path / "calib.txt").write_text(PROSE)
        return q + ["--method", "rtn", "--calib", str(tmp_path / "calib.txt")]
    if case == "`export --format onnx`":
        return ["export", str(tiny_dir), "--format", "onnx", "-o", str(tmp_path / "o")]
    if case == "`export --format gguf -o o`":
        return ["export", str(tiny_dir), "--format", "gguf", "-o", str(tmp_path / "o")]
    if case == "`export --format gptq -o o.gguf`":
        return ["export", str(tiny_dir), "--format", "gptq", "-o", str(tmp_path / "o.gguf")]
    if case == "`quantize --grid nf4 --bits 3`":
        return q + ["--method", "rtn", "--grid", "nf4", "--bits", "3"]
    if case == "`quantize --format gguf --grid nf4`":
        return ["quantize", str(tiny_dir), "-o", str(tmp_path / "o.gguf"), "--format", "gguf", "--grid", "nf4",
                "--method", "rtn", "--no-eval"]
    raise KeyError(case)


CASES = ["config.json without model_type", "`-o notes.txt --overwrite` (a file lowbit did not write)",
         "a partial run of OUT, no `--resume`", "`--method gptq` on a model without tokenizer files",
         "`quantize --method rtn --damp-percent 0.1`", "`quantize --method rtn --calib F`",
         "`export --format onnx`", "`export --format gguf -o o`", "`export --format gptq -o o.gguf`",
         "`quantize --grid nf4 --bits 3`", "`quantize --format gguf --grid nf4`"]


@pytest.mark.parametrize("case", CASES)
def test_documented_line(case, tmp_path, tiny_dir, capsys):
    code, _, err = run(_setup(case, tmp_path, tiny_dir), capsys)
    one_line_error(code, err)
    line = [l for l in err.strip().splitlines() if l.startswith("lowbit: error: ")][0]
    assert ROWS[case].search(line), (case, line)
    assert not (tmp_path / "out").exists()
