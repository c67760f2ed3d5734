import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer (from the cached float directory)."""
    from transformers import AutoTokenizer

    from lowbit.io.default_model import default_model_dir
    return AutoTokenizer.from_pretrained(str(default_model_dir()))
