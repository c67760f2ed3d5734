import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer (from the cached float directory), read as lowbit reads it: a
    cache converted under transformers 5 names a tokenizer class 4.57 lacks (io/hf_config.py)."""
    from lowbit.io.default_model import default_model_dir
    from lowbit.io.hf_config import load_tokenizer
    return load_tokenizer(default_model_dir())


# transformers 5 draws tqdm bars when a test saves a model; they would land in captured stderr
from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_tok():
    """A 512-token byte-level BPE tokenizer trained on tests/data/prose.txt (fast to write and
    read as GGUF; trained on a fixture, so editing documentation cannot move a test)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([(DATA / "prose.txt").read_text()], vocab_size=512,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    return tok


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """Calibration / evaluation prose long enough for 64-token windows."""
    from clitools import PROSE
    f = tmp_path_factory.mktemp("text") / "prose.txt"
    f.write_text(PROSE)
    return f


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_tokenizer):
    """A tiny random Llama with the default model's tokenizer, saved as a model directory."""
    from tiny import VOCAB, tiny_model
    d = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama", vocab=VOCAB).save_pretrained(d)
    default_tokenizer.save_pretrained(d)
    return d


# ---- docs/errors.md stays true -----------------------------------------------------------------
# Every message lowbit raises during the run is recorded; when the whole suite has run, each row of
# docs/errors.md must match one of them (X: a path or name, OUT: the output, N/M: numbers, ...: any).
from lowbit.errors import LowbitError  # noqa: E402

RAISED: list[str] = []
_init = LowbitError.__init__


def _recording_init(self, *args):
    if args:
        RAISED.append(str(args[0]))
    _init(self, *args)


LowbitError.__init__ = _recording_init
from clitools import documented_errors  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    log = os.environ.get("LOWBIT_RAISED_LOG")  # where to list every message raised, to reword a row
    if log:
        Path(log).write_text("\n".join(sorted(set(RAISED))) + "\n")
    cfg = session.config
    whole = (not cfg.option.keyword and not cfg.option.markexpr and not getattr(cfg.option, "lf", False)
             and all(Path(a).resolve() == Path(__file__).parent.resolve() for a in cfg.args))
    if exitstatus != 0 or not whole or session.testscollected < 300:
        return
    missing = [row for row, rx in documented_errors() if not any(rx.search(m) for m in RAISED)]
    if missing:
        import sys
        print(f"\ndocs/errors.md rows that no test raised (reword the row or the message): {missing}",
              file=sys.stderr)
        session.exitstatus = 1
