"""The Ollama Modelfile lowbit writes beside a GGUF: its Go TEMPLATE, default SYSTEM and stops,
against templates written out by hand from the chat templates they come from (the default
model's ChatML, and a Llama-3-style template whose BOS opens only the first message)."""
import pytest

from lowbit.errors import LowbitError
from lowbit.io.ollama import modelfile

CHATML = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ range .Messages }}'
          '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
          '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
          '{{ end }}{{ end }}<|im_start|>assistant\n')


def test_default_model_gets_chatml_with_its_default_system_message(default_tokenizer):
    text = modelfile(default_tokenizer, "m.gguf")
    assert text == ("FROM ./m.gguf\n"
                    f'TEMPLATE """{CHATML}"""\n'
                    'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""\n'
                    'PARAMETER stop "<|im_end|>"\n')


LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def test_llama3_style_template_leaves_bos_to_llama_cpp(tiny_tok):
    tok = tiny_tok
    saved = tok.chat_template, tok.bos_token
    try:
        tok.chat_template = LLAMA3
        text = modelfile(tok, "x.gguf")
    finally:
        tok.chat_template = saved[0]
    h = "<|start_header_id|>{}<|end_header_id|>\n\n"
    want = ("{{ if .System }}" + h.format("system") + "{{ .System }}<|eot_id|>{{ end }}{{ range .Messages }}"
            '{{ if eq .Role "user" }}' + h.format("user") + "{{ .Content }}<|eot_id|>"
            '{{ else if eq .Role "assistant" }}' + h.format("assistant") + "{{ .Content }}<|eot_id|>"
            "{{ end }}{{ end }}" + h.format("assistant"))
    assert text == f'FROM ./x.gguf\nTEMPLATE """{want}"""\nPARAMETER stop "<|eot_id|>"\nPARAMETER stop "<|im_end|>"\n'


def test_a_tokenizer_without_chat_template_is_refused(tiny_tok):
    saved = tiny_tok.chat_template
    try:
        tiny_tok.chat_template = None
        with pytest.raises(LowbitError, match="no chat template"):
            modelfile(tiny_tok, "x.gguf")
    finally:
        tiny_tok.chat_template = saved


def test_export_writes_the_modelfile_beside_the_gguf(tiny_dir, tmp_path, capsys):
    from clitools import one_line_error, run
    out = tmp_path / "tiny.gguf"
    code, _, err = run(["export", str(tiny_dir), "--format", "gguf", "--ollama", "-o", str(out)], capsys)
    assert code == 0, err
    text = (tmp_path / "Modelfile").read_text()
    assert text.startswith("FROM ./tiny.gguf\nTEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n")
    code, _, err = run(["export", str(tiny_dir), "--format", "gptq", "--ollama", "-o", str(tmp_path / "g")], capsys)
    one_line_error(code, err, "--ollama", "--format gguf")
    assert not (tmp_path / "g").exists()
