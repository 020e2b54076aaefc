"""Test helpers for the OpenAI-compatible agents: a tiny random GGUF, a llama.cpp server, a fault proxy.

Nothing is downloaded at test time. ``make llama-cpp`` puts the llama-cpp-python source
distribution in ``.cache/sdist`` and builds its wheel once into ``.cache/wheels``, both mirrored to
``~/.cache/spiral-video`` (``SPIRAL_SHARED_CACHE``), and the sdist is looked up in either; from the sdist
we take the converter that llama.cpp ships (``vendor/llama.cpp/convert_hf_to_gguf.py`` with its
``conversion`` and ``gguf-py`` folders). The model is a 2-layer transformers Llama with random
weights and a SentencePiece tokenizer trained here on a few sentences (byte fallback, so any JSON
can be spelled); its chat template renders image parts as ``<image>`` so the text-only server
accepts the agents' multimodal messages. The GGUF is cached under ``.cache/llm-test/``
(``SPIRAL_CACHE`` overrides ``.cache``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LLAMA_CPP_VERSION = "0.3.36"
RECIPE = "tiny-llama-v1"  # bump when the model/tokenizer recipe below changes

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% else %}<image>{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = [
    "move the red block into the box", "open the box", "close the box", "switch on the lamp",
    "stack the green block on the blue block", "move the yellow block to the far left slot",
    '{"rationale": "", "steps": [{"text": "open the box", "verb": "open", "objects": ["box"]}]}',
    '"preconditions": ["not open(box)"], "postconditions": ["open(box)", "in(red_block, box)"]',
    '{"scores": {"action": 0.5, "preservation": 1.0, "continuity": 0.95, "consistency": 0.0}}',
    '"passed": true, "failure": null, "decision": "accept", "feedback": "the block did not move"',
    "at(blue_block, center) clear(green_block) free(right) on(lamp) scene_drift incomplete_action",
    "<|system|> <|user|> <|assistant|> <image> Goal: Observed scene: Requested action:",
]


def cache_dir() -> Path:
    """Where sdists, wheels and test models live (git-ignored)."""
    return Path(os.environ.get("SPIRAL_CACHE", REPO / ".cache"))


def shared_cache_dir() -> Path:
    """The per-user mirror that ``scripts/llama_cpp.sh`` copies sdists and wheels to (``SPIRAL_SHARED_CACHE``)."""
    return Path(os.environ.get("SPIRAL_SHARED_CACHE", Path.home() / ".cache" / "spiral-video"))


def find_sdist() -> Path | None:
    """The llama-cpp-python sdist fetched by ``make llama-cpp``: in the project cache or its per-user mirror,
    wherever the install step left it."""
    name = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    for folder in (cache_dir(), shared_cache_dir()):
        if (folder / "sdist" / name).is_file():
            return folder / "sdist" / name
    return None


def converter_dir() -> Path:
    """llama.cpp's HF→GGUF converter (script + ``conversion`` + ``gguf-py``), extracted once from the sdist."""
    out = cache_dir() / f"llama-convert-{LLAMA_CPP_VERSION}"
    if (out / "convert_hf_to_gguf.py").is_file():
        return out
    sdist = find_sdist()
    if sdist is None:
        raise FileNotFoundError("llama-cpp-python sdist missing; run `make llama-cpp`")
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers()
                   if m.name.startswith(prefix) and m.name[len(prefix):].startswith(keep) and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name[len(prefix):]
        tf.extractall(tmp, members=members, filter="data")
    tmp.rename(out)
    return out


def _tokenizer_corpus() -> list[str]:
    """Sentences the agents' prompts are made of (templates, schemas, scene text): fewer tokens per prompt."""
    from spiral.critics.vlm import verdict_schema
    from spiral.llm.prompts import PROMPT_DIR
    from spiral.planners.llm import _domain_text, plan_schema

    texts = list(CORPUS) + [_domain_text("tabletop")]
    texts += [p.read_text() for p in sorted(PROMPT_DIR.glob("*.md"))]
    texts += [json.dumps(plan_schema("tabletop", 3, 2), separators=(",", ":")), json.dumps(verdict_schema())]
    return [line for t in texts for line in t.splitlines() if line.strip()]


def _train_tokenizer(folder: Path) -> int:
    import sentencepiece as spm

    lines = _tokenizer_corpus() * 2
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(folder / "tokenizer"), vocab_size=1500, model_type="bpe",
        hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        max_sentence_length=16384, minloglevel=2, num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return sp.get_piece_size()


def build_tiny_gguf() -> Path:
    """A ~0.3 MB random-weight Llama GGUF with a chat template; built once, then read from the cache."""
    key = hashlib.sha256((RECIPE + CHAT_TEMPLATE + "\n".join(_tokenizer_corpus())).encode()).hexdigest()[:10]
    out = cache_dir() / "llm-test" / f"{RECIPE}-{key}.gguf"
    if out.is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    conv = converter_dir()
    work = out.parent / f"hf-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n_vocab = _train_tokenizer(work)
    (work / "tokenizer.vocab").unlink(missing_ok=True)
    (work / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "add_eos_token": False, "chat_template": CHAT_TEMPLATE}))
    (work / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(work)
    tmp = out.with_suffix(".tmp")
    subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(work), "--outfile", str(tmp),
                    "--outtype", "f32"], check=True, capture_output=True, cwd=conv)
    tmp.replace(out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    """A running ``python -m llama_cpp.server`` on loopback."""

    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(model: Path, log_path: Path, api_key: str | None = None, n_ctx: int = 8192,
                 wait_s: float = 60.0) -> LlamaServer:
    """Start llama-cpp-python's OpenAI-compatible server on a free loopback port and wait until it answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(n_ctx), "--n_threads", "1", "--n_threads_batch", "1", "--n_batch", "1024",
           # logits for every prompt token (the server's default) makes prompt processing several times slower
           "--logits_all", "false", "--model_alias", "tiny-llama"]
    if api_key:
        cmd += ["--api_key", api_key]
    logf = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until stopped
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=log_path.parent)
    server = LlamaServer(proc, port, log_path)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama server exited ({proc.returncode}); log: {log_path.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {api_key or 'x'}"})
            if conn.getresponse().status in (200, 401):
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"llama server did not answer within {wait_s}s; log: {log_path}")


# -- fault-injecting proxy ------------------------------------------------------------------------

FAULTS = ("timeout", "429", "500", "truncated", "schema_invalid")


@dataclass
class ProxyStats:
    """What the proxy did: requests seen, faults injected by kind, request bodies (for payload checks)."""

    requests: int = 0
    forwarded: int = 0
    faults: dict[str, int] = field(default_factory=lambda: {k: 0 for k in FAULTS})
    sequence: list[str] = field(default_factory=list)  # per request: the fault injected, or "ok"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    # per POST, in arrival order: (the fault injected or "ok", the JSON body), to compare a retry with its original
    exchanges: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    @property
    def injected(self) -> int:
        return sum(self.faults.values())


class FaultProxy:
    """A threaded loopback HTTP proxy to an upstream server that fails ``rate`` of requests on purpose.

    Faults (chosen by a seeded RNG, in request order; the kind from a reshuffled bag): ``timeout`` (holds the connection for
    ``hang_s`` and closes it unanswered), ``429`` and ``500`` (error JSON), ``truncated`` (the real
    answer's headers with half its body, then a closed connection) and ``schema_invalid`` (a real
    200 answer whose message content is JSON of the wrong shape; counted only when the upstream
    answer was a 200).
    """

    def __init__(self, upstream_port: int, rate: float = 0.3, seed: int = 0, hang_s: float = 3.0,
                 faults: tuple[str, ...] = FAULTS):
        self.upstream_port, self.rate, self.hang_s, self.kinds = upstream_port, rate, hang_s, faults
        self.rng = random.Random(seed)
        self._bag: list[str] = []
        self.lock = threading.Lock()
        self.stats = ProxyStats()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _pick(self, body: dict[str, Any] | None) -> str | None:
        with self.lock:
            self.stats.requests += 1
            kind = None
            if self.rng.random() < self.rate:
                if not self._bag:  # kinds come from a reshuffled bag, so a short run still sees each of them
                    self._bag = list(self.kinds)
                    self.rng.shuffle(self._bag)
                kind = self._bag.pop()
            self.stats.sequence.append(kind or "ok")
            self.stats.exchanges.append((kind or "ok", body))
            return kind

    def _count(self, kind: str) -> None:
        with self.lock:
            self.stats.faults[kind] += 1

    def _forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        with self.lock:
            self.stats.forwarded += 1
        return r.status, [(k, v) for k, v in r.getheaders() if k.lower() not in ("content-length", "connection",
                                                                                  "transfer-encoding")], data

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: list | None = None, length: int | None = None) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers or [("Content-Type", "application/json")]:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body) if length is None else length))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its own timeout)
                    self.close_connection = True

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                fwd = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                parsed = None
                if body:
                    try:
                        parsed = json.loads(body)
                        with proxy.lock:
                            proxy.stats.bodies.append(parsed)
                    except ValueError:
                        pass
                kind = proxy._pick(parsed) if method == "POST" else None
                if kind in ("timeout", "429", "500", "truncated"):
                    proxy._count(kind)
                if kind == "timeout":
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
                    return
                if kind in ("429", "500"):
                    err = {"error": {"message": f"injected {kind}", "type": "injected", "code": int(kind)}}
                    extra = [("Retry-After", "0")] if kind == "429" else []
                    self._send(int(kind), json.dumps(err).encode(), [("Content-Type", "application/json"), *extra])
                    self.close_connection = True
                    return
                status, headers, data = proxy._forward(method, self.path, body, fwd)
                if kind == "truncated":
                    self._send(status, data[: len(data) // 2], headers, length=len(data))
                    self.close_connection = True
                    return
                if kind == "schema_invalid" and status == 200:  # only a real answer can be made wrong
                    try:
                        obj = json.loads(data)
                        obj["choices"][0]["message"]["content"] = json.dumps({"steps": "none", "scores": [2]})
                        data = json.dumps(obj).encode()
                        proxy._count(kind)
                    except (ValueError, KeyError, IndexError, TypeError):
                        pass
                self._send(status, data, headers)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self._handle("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

        return Handler


def need_llama() -> None:
    """Skip (outside CI) or fail (under CI, where `make test` installs both) when the llama.cpp server or the
    converter sdist is missing: the tests that talk to a real loopback server call this first."""
    import pytest

    why = None
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        why = "llama-cpp-python[server] is not installed"
    if why is None and find_sdist() is None:
        why = "the llama-cpp-python sdist (converter) is not cached"
    if why:  # tests/conftest.py turns a skip into a failure under CI
        pytest.skip(f"{why}; run `make llama-cpp` (builds the wheel once into .cache/wheels)")


def serve_tiny(log_dir: Path, api_key: str):
    """A loopback llama.cpp server on the tiny GGUF model, for a module-scoped fixture (call ``.stop()``)."""
    need_llama()
    return start_server(build_tiny_gguf(), Path(log_dir) / "server.log", api_key=api_key)


def client_options(base_url: str, key_env: str, **kw) -> dict:
    """Options of an ``llm`` planner, ``vlm`` critic or VLM judge talking to :func:`serve_tiny`'s server: quick
    retries (the fault-proxy tests count them), the key read from ``key_env``; ``kw`` overrides any of them."""
    return {"base_url": base_url, "model": "tiny-llama", "api_key_env": key_env, "timeout": 30, "max_retries": 4,
            "backoff_base": 0.05, "backoff_max": 0.2, "max_tokens": 512, **kw}
