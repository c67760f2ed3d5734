"""Writes tests/data/saved-by-transformers-MAJOR/: a tiny Llama (RoPE theta 100000, head_dim
32 != hidden/heads, untied head) and a 512-token BPE tokenizer, saved by the installed
transformers' own save_pretrained, plus the float model's logits on fixed ids (reference.safetensors).
Run once under each transformers major version lowbit supports:

    python tests/data/make_saved_by.py      # under transformers 4.57 and again under 5.x
"""
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

HERE = Path(__file__).parent


def main():
    major = transformers.__version__.split(".")[0]
    out = HERE / f"saved-by-transformers-{major}"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([(HERE / "prose.txt").read_text()], vocab_size=512, show_progress=False,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", unk_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                      rope_theta=100000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.data.normal_(0, 0.05)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            p.data *= 8  # sharp attention: positions, and so RoPE, matter to the logits
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ids = torch.tensor([tok((HERE / "prose.txt").read_text())["input_ids"][:96]])
    with torch.no_grad():
        logits = model(ids).logits
    save_file({"ids": ids, "logits": logits.contiguous()}, str(out / "reference.safetensors"),
              metadata={"transformers": transformers.__version__})
    print(out, sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
