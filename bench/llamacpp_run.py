"""Run llama.cpp (llama-cpp-python) on GGUF files; executed by the peer venv's python, never
imported by lowbit. One JSON request on stdin, one JSON answer on stdout.

  {"op": "logits", "model": PATH, "windows": [[ids...], ...], "out": NPY_PREFIX}
      -> per window, float32 logits (tokens, vocab) saved as NPY_PREFIX.<i>.npy
  {"op": "eval", "ref": PATH, "models": {name: PATH}, "windows": [[ids...], ...]}
      -> {name: {"nll", "kld", "top1", "tokens", "seconds"}} (sums over predicted tokens; the
         reference runs once per window, every model sees the same windows)
  {"op": "chat", "model": PATH, "messages": [...], "max_tokens": N} -> {"text": ...}
  {"op": "tokenize", "model": PATH, "text": STR} -> {"ids": [...]} (no BOS, special tokens as text)
  {"op": "quantize", "src": PATH, "dst": PATH, "ftype": "Q4_K_M"} -> {"seconds": s}
  {"op": "plan", "src": PATH, "ftype": "Q4_K_M"} -> {tensor: type} llama.cpp's quantizer would convert
      (a dry run; tensors it copies unchanged are left out)
  {"op": "speed", "model": PATH, "ids": [...], "new_tokens": N, "reps": R, "threads": T}
      -> {"prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes"}: the prompt evaluated
         in one batch, then N greedy tokens one at a time; medians of R runs after a warm-up
"""
import ctypes
import json
import re
import sys
import time

import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as _capi

_default_model_params = _capi.llama_model_default_params


def _model_params():
    """No extra buffer types (weight repacking): on CPUs with AMX, llama.cpp's AMX matmul
    (ggml_backend_amx_mul_mat) crashes with a general protection fault in this VM, for every
    quantized file; the plain CPU kernels compute the same products."""
    p = _default_model_params()
    p.use_extra_bufts = False
    return p


_capi.llama_model_default_params = _model_params  # what llama_cpp.Llama() reads its defaults from


def _llm(path, n_ctx, logits_all=True):
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                           n_threads=2, n_threads_batch=2, verbose=False, seed=0)


def _window_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def op_logits(req):
    llm = _llm(req["model"], max(len(w) for w in req["windows"]))
    for i, ids in enumerate(req["windows"]):
        np.save(f"{req['out']}.{i}.npy", _window_logits(llm, ids))
    return {"windows": len(req["windows"])}


def op_eval(req):
    n_ctx = max(len(w) for w in req["windows"])
    ref = _llm(req["ref"], n_ctx)
    models = {name: _llm(path, n_ctx) for name, path in req["models"].items()}
    res = {name: {"nll": 0.0, "kld": 0.0, "top1": 0, "tokens": 0, "seconds": 0.0} for name in ["ref", *models]}
    for ids in req["windows"]:
        t0 = time.time()
        p = _log_softmax(_window_logits(ref, ids))[:-1]  # position t predicts token t+1
        res["ref"]["seconds"] += time.time() - t0
        for name, llm in [("ref", None), *models.items()]:
            t0 = time.time()
            q = p if llm is None else _log_softmax(_window_logits(llm, ids))[:-1]
            r = res[name]
            r["seconds"] += time.time() - t0 if llm is not None else 0.0
            r["nll"] -= float(q[np.arange(len(ids) - 1), ids[1:]].sum())
            r["kld"] += float((np.exp(p) * (p - q)).sum())
            r["top1"] += int((p.argmax(-1) == q.argmax(-1)).sum())
            r["tokens"] += len(ids) - 1
    return res


def op_chat(req):
    llm = _llm(req["model"], 512, logits_all=False)
    r = llm.create_chat_completion(messages=req["messages"], max_tokens=req.get("max_tokens", 16),
                                   temperature=0.0, seed=0)
    return {"text": r["choices"][0]["message"]["content"]}


def op_tokenize(req):
    llm = llama_cpp.Llama(model_path=req["model"], vocab_only=True, verbose=False)
    return {"ids": llm.tokenize(req["text"].encode("utf-8"), add_bos=False, special=False)}


def op_quantize(req):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{req['ftype']}")
    params.nthread = 2
    t0 = time.time()
    rc = llama_cpp.llama_model_quantize(req["src"].encode(), req["dst"].encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")
    return {"seconds": time.time() - t0}


def op_plan(req):
    lines = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{req['ftype']}")
    params.dry_run = True
    rc = llama_cpp.llama_model_quantize(req["src"].encode(), b"/dev/null", ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize (dry run) returned {rc}")
    # lines like "[  7/ 272] blk.0.attn_v.weight - [...], type = f16, size = 0.21 MiB -> 0.11 MiB (q8_0)"
    pat = re.compile(r"\]\s+(\S+)\s+- \[.*MiB ->.*MiB \((\w+)\)")
    return dict(m.groups() for m in map(pat.search, "".join(lines).splitlines()) if m)


def op_speed(req):
    import resource
    import statistics

    ids, n = req["ids"], req["new_tokens"]
    threads = req.get("threads", 2)
    # n_batch = n_ctx: without logits_all, llm.scores has n_batch rows and eval writes row n_tokens - 1
    ctx = len(ids) + n + 8
    llm = llama_cpp.Llama(model_path=req["model"], n_ctx=ctx, n_batch=ctx, n_ubatch=len(ids),
                          n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)

    def run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(n):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return t1 - t0, (time.perf_counter() - t1) / n

    run()
    runs = [run() for _ in range(req.get("reps", 3))]
    return {"prefill_tokens_per_s": len(ids) / statistics.median(r[0] for r in runs),
            "decode_tokens_per_s": 1 / statistics.median(r[1] for r in runs),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


if __name__ == "__main__":
    req = json.load(sys.stdin)
    ans = {"logits": op_logits, "eval": op_eval, "chat": op_chat, "quantize": op_quantize,
           "plan": op_plan, "tokenize": op_tokenize, "speed": op_speed}[req["op"]](req)
    json.dump(ans, sys.stdout)
