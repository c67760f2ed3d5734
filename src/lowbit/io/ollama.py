"""An Ollama Modelfile beside a GGUF file, so `ollama create NAME -f Modelfile` takes it as is.

Ollama's TEMPLATE is a Go template, the tokenizer's chat template is Jinja: the Go template is
derived by rendering the Jinja one on marker messages and reading off what it puts around each
role's content (the opening of the assistant's turn, a default system message), which covers
the templates that wrap each message on its own (ChatML, Llama 3, Gemma, Mistral-style and
the like). Stop tokens: EOS and the end-of-turn text that follows each message.
"""
from __future__ import annotations

from pathlib import Path

from lowbit.errors import LowbitError

_MARK = "\u2063{}\u2063"  # invisible separators: no template alters them


def _render(tokenizer, messages, gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _around(text: str, mark: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise LowbitError("the chat template does not place each message's content once: "
                          "write the Modelfile's TEMPLATE by hand")
    before, after = text.split(mark)
    return before, after


def chat_parts(tokenizer) -> dict:
    """{role: (prefix, suffix)} for system / user / assistant, the assistant's opening (gen),
    the template's default system message (or None) and the text before the first message."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise LowbitError("the tokenizer has no chat template: an Ollama Modelfile needs one (or write it by hand)")
    S, U, A = (_MARK.format(r) for r in ("system", "user", "assistant"))
    sys_only = _render(tokenizer, [{"role": "system", "content": S}], False)
    start, sys_rest = _around(sys_only, S)
    parts = {}
    with_user = _render(tokenizer, [{"role": "system", "content": S}, {"role": "user", "content": U}], False)
    if not with_user.startswith(sys_only):
        raise LowbitError("the chat template renders earlier messages differently as the conversation grows: "
                          "write the Modelfile's TEMPLATE by hand")
    # the system suffix is what comes after its content and before the next message
    u_before, u_after = _around(with_user[len(sys_only):], U)
    parts["user"] = (u_before, u_after)
    convo = [{"role": "system", "content": S}, {"role": "user", "content": U}]
    with_gen = _render(tokenizer, convo, True)
    gen = with_gen[len(with_user):]
    with_answer = _render(tokenizer, convo + [{"role": "assistant", "content": A}], False)
    a_before, a_after = _around(with_answer[len(with_user):], A)
    parts["assistant"] = (a_before, a_after)
    # the system block's own prefix: what the start holds beyond the conversation's opening, a
    # BOS that only the first message gets (llama.cpp adds it itself); ChatML's BOS <|im_start|>
    # opens every message, so there it is part of each prefix
    bos = getattr(tokenizer, "bos_token", None) or ""
    opening = bos if bos and start.startswith(bos) and not u_before.startswith(bos) else ""
    parts["system"] = (start[len(opening):], sys_rest)
    default_system = None
    user_only = _render(tokenizer, [{"role": "user", "content": U}], False)
    head = user_only[: user_only.index(U)]
    if head != opening + u_before:  # something (a system block) comes first by default
        body = head[len(opening):]
        sp, ss = parts["system"]
        if body.startswith(sp) and body.endswith(ss + u_before):
            default_system = body[len(sp): len(body) - len(ss + u_before)]
    return {"roles": parts, "gen": gen, "default_system": default_system, "opening": opening}


def _go(text: str) -> str:
    if "{{" in text or '"""' in text:
        raise LowbitError("the chat template's text holds '{{' or '\"\"\"': write the Modelfile's TEMPLATE by hand")
    return text


def modelfile(tokenizer, gguf_name: str) -> str:
    p = chat_parts(tokenizer)
    (sp, ss), (up, us), (ap, as_) = (p["roles"][r] for r in ("system", "user", "assistant"))
    # no "{{-": it would trim the newlines that end the template's turns; system messages come
    # in .System (as Ollama's own templates take them), the rest in .Messages
    template = ("{{ if .System }}" + _go(sp) + "{{ .System }}" + _go(ss) + "{{ end }}"
                "{{ range .Messages }}"
                '{{ if eq .Role "user" }}' + _go(up) + "{{ .Content }}" + _go(us)
                + '{{ else if eq .Role "assistant" }}' + _go(ap) + "{{ .Content }}" + _go(as_)
                + "{{ end }}{{ end }}" + _go(p["gen"]))
    stops = []
    for text in (as_.strip(), getattr(tokenizer, "eos_token", None)):
        if text and text not in stops:
            stops.append(text)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if p["default_system"]:
        lines.append(f'SYSTEM """{_go(p["default_system"])}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, tokenizer) -> Path:
    """OUT's Modelfile: beside OUT.gguf, named Modelfile (or OUT.Modelfile when one is there)."""
    gguf_path = Path(gguf_path)
    text = modelfile(tokenizer, gguf_path.name)
    target = gguf_path.parent / "Modelfile"
    if target.exists() and not target.read_text().startswith(f"FROM ./{gguf_path.name}\n"):
        target = gguf_path.with_suffix(".Modelfile")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return target
