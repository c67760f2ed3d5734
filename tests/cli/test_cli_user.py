"""The command line as a user meets it, run as a real subprocess (the entry point `main()`, its
signal handling and typer's usage errors on the installed typer/click): no input gives a
traceback; usage errors exit 2 with a usage line; Ctrl-C exits 130 and says what was kept;
--overwrite replaces only what lowbit wrote; a model saved without a tokenizer quantizes."""
import signal
import subprocess
import sys
import time

import pytest

from lowbit.pipeline.layer_store import work_dir_for
from clitools import PROSE, SUBPROCESS_ENV
from tiny import VOCAB, slow_model, tiny_model



def lowbit(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lowbit.cli", *map(str, args)], env=SUBPROCESS_ENV,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, **kw)


USAGE = [  # (arguments, a word the usage message names)
    (["quantize", "--bitz", "4", "-o", "x"], "--bitz"),
    (["quantize", "--method"], "--method"),
    (["quantize", "--bits", "four"], "--bits"),
    (["eval", "--max-windows", "abc"], "--max-windows"),
    (["frobnicate"], "frobnicate"),
    (["export", "-o", "x"], "--format"),
    (["quantize", "--sym", "--nonsense"], "--nonsense"),
]


@pytest.mark.parametrize("args,word", USAGE)
def test_usage_errors_exit_2_with_a_usage_line(args, word, tmp_path):
    r = lowbit(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Error:" in r.stderr and word in r.stderr, r.stderr


BAD_INPUT = [  # (arguments with {t} for a temporary directory, words of the one line)
    (["quantize", "{t}/none", "-o", "{t}/o"], ["does not exist"]),
    (["quantize", "{model}", "--format", "gguf", "--bits", "3", "-o", "{t}/o.gguf"], ["do not apply to GGUF"]),
    (["quantize", "{model}", "--format", "onnx", "-o", "{t}/o"], ["unknown output format 'onnx'"]),
    (["quantize", "{model}", "--gguf-type", "Q4_K_M", "-o", "{t}/o"], ["--gguf-type applies to --format gguf"]),
    (["quantize", "{model}", "--method", "rtn", "--damp-percent", "0.1", "-o", "{t}/o"], ["--damp-percent", "gptq"]),
    (["quantize", "{model}", "--method", "rtn", "--calib", "{t}/c.txt", "-o", "{t}/o"], ["--calib", "calibrate"]),
    (["quantize", "{model}", "--no-eval", "--data", "{t}/c.txt", "-o", "{t}/o"], ["--data", "--no-eval"]),
    (["quantize", "{model}", "--preset", "w4x", "-o", "{t}/o"], ["unknown preset"]),
    (["quantize", "{model}", "--method", "magic", "-o", "{t}/o"], ["magic"]),
    (["quantize", "{model}", "--smooth", "maybe", "-o", "{t}/o"], ["smooth"]),
    (["quantize", "{model}", "--bits", "9", "-o", "{t}/o"], ["bits=9"]),
    (["quantize", "{model}", "--method", "rtn", "--iters", "100", "-o", "{t}/o"], ["--iters", "signround"]),
    (["quantize", "{model}", "--method", "gptq", "--calib", "wikii", "-o", "{t}/o"], ["unknown text 'wikii'"]),
    (["info", "{t}/c.txt"], ["not a model"]),
    (["eval", "{t}/none"], ["does not exist"]),
    (["export", "{model}", "--format", "awq", "--bits", "3", "-o", "{t}/o"], ["AWQ"]),
]


@pytest.mark.parametrize("args,words", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path, tiny_dir):
    (tmp_path / "c.txt").write_text(PROSE)
    r = lowbit(*[a.format(t=tmp_path, model=tiny_dir) for a in args])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("lowbit: error: ") and all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.gguf").exists()


def test_version():
    from lowbit import __version__
    r = lowbit("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"lowbit {__version__}"


def test_overwrite_replaces_only_what_lowbit_wrote(tmp_path, tiny_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    r = lowbit("quantize", tiny_dir, "--method", "rtn", "--no-eval", "-o", notes, "--overwrite")
    assert r.returncode == 2 and "lowbit did not write" in r.stderr, r.stderr
    assert notes.read_text() == "my notes"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2")
    r = lowbit("quantize", tiny_dir, "--method", "rtn", "--no-eval", "-o", mine, "--overwrite")
    assert r.returncode == 2 and (mine / "data.csv").read_text() == "1,2"
    out = tmp_path / "q"
    assert lowbit("quantize", tiny_dir, "--method", "rtn", "--no-eval", "-o", out).returncode == 0
    r = lowbit("quantize", tiny_dir, "--method", "rtn", "--bits", "8", "--no-eval", "-o", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert '"bits": 8' in (out / "lowbit.json").read_text()


def test_progress_reaches_a_log_file(tmp_path, tiny_dir):
    """stderr is not a terminal here: one line per layer with the time left, and the layout
    note once (it was printed twice)."""
    r = lowbit("quantize", tiny_dir, "--method", "rtn", "--group-size", "32", "--no-eval", "-o", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    layer_lines = [l for l in lines if l.startswith("lowbit: layers: ")]
    assert [l.split()[2] for l in layer_lines] == ["1/2", "2/2"], r.stderr
    assert "left" in layer_lines[0]
    assert sum("changed layout" in l for l in lines) == 1, r.stderr


def test_api_reports_progress_through_logging(tmp_path, tiny_dir, caplog):
    import logging

    import lowbit as lb
    with caplog.at_level(logging.INFO, logger="lowbit.progress"):
        lb.quantize(str(tiny_dir), "w4g32", tmp_path / "q")
    assert [r.getMessage().split()[1] for r in caplog.records if r.name == "lowbit.progress"] == ["1/2", "2/2"]


def test_ctrl_c_exits_130_keeps_the_partial_run_and_resume_continues(tmp_path, default_tokenizer, text_file):
    src, out = tmp_path / "src", tmp_path / "out"
    slow_model(src, default_tokenizer)
    args = [sys.executable, "-m", "lowbit.cli", "quantize", str(src), "-o", str(out), "--method", "gptq",
            "--group-size", "64", "--calib", str(text_file), "--nsamples", "32", "--seqlen", "128",
            "--no-eval", "--checkpoint-seconds", "0"]
    proc = subprocess.Popen(args, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    work = work_dir_for(out)
    deadline = time.monotonic() + 300
    while not (work / "layer-00001.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("lowbit: interrupted: nothing was written at") and "--resume" in last, err[-2000:]
    assert "Traceback" not in err and not out.exists() and work.is_dir()
    # without --resume the partial run is kept and the run refused (no terminal to ask)
    again = subprocess.run(args, env=SUBPROCESS_ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 2 and "partial run is kept" in again.stderr and work.is_dir(), again.stderr
    resumed = subprocess.run(args + ["--resume"], env=SUBPROCESS_ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0 and "resuming: layers 0-" in resumed.stderr, resumed.stderr[-2000:]
    assert out.is_dir() and not work.exists()


def test_model_without_tokenizer(tmp_path, tiny_dir, text_file, default_tokenizer):
    """A fine-tune saved without its tokenizer: RTN needs none; GPTQ says how to give one."""
    bare = tmp_path / "bare"
    tiny_model("llama", vocab=VOCAB).save_pretrained(bare)
    r = lowbit("quantize", bare, "--method", "rtn", "--group-size", "32", "--no-eval", "-o", tmp_path / "rtn")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    r = lowbit("quantize", bare, "--method", "gptq", "--calib", text_file, "--no-eval", "-o", tmp_path / "g")
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--tokenizer" in lines[0], r.stderr
    r = lowbit("quantize", bare, "--method", "gptq", "--group-size", "32", "--calib", text_file, "--nsamples", "16",
               "--seqlen", "64", "--tokenizer", tiny_dir, "--data", text_file, "--max-windows", "2", "--json",
               "-o", tmp_path / "g")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g" / "tokenizer.json").is_file()
    r = lowbit("eval", tmp_path / "rtn", "--data", text_file, "--seqlen", "64", "--max-windows", "2")
    assert r.returncode == 2 and "--tokenizer" in r.stderr, r.stderr
