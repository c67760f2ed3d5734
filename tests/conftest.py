import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer (from the cached float directory)."""
    from transformers import AutoTokenizer

    from lowbit.io.default_model import default_model_dir
    return AutoTokenizer.from_pretrained(str(default_model_dir()))


# transformers 5 draws tqdm bars when a test saves a model; they would land in captured stderr
from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()
