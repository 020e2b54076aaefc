"""JSON-schema constrained decoding engines on SPIRAL's schemas and tokenizers: compile time, per-token mask time.

The local transformers planner and critic (``spiral.llm.transformers_chat``) constrain decoding to
the plan / verdict JSON schemas. This compares the maintained engines that do it — xgrammar,
llguidance, outlines-core — on what SPIRAL actually asks for:

- schemas: the tabletop plan schema (one ``anyOf`` branch per action shape, a predicate
  ``pattern``), the domain-free plan schema, the verdict schema with a 21-level score ``enum`` and
  with free numbers in [0, 1], the refine schema; all at the planner's default sizes;
- tokenizers: the tiny byte-level BPE the tests build (``tests/qwen_tools.py``, ~1.1k tokens) and a
  Qwen-size byte-level BPE (151k tokens) trained here on the Python sources on disk (nothing can be
  downloaded; the result is cached under ``--cache``).

Per engine × tokenizer × schema it measures the tokenizer preparation (once per tokenizer), the
grammar compile (cold, no cache), the first mask, and the per-token cost of decoding with random
logits (what a random-weight model does): fill the mask, apply it to the logits, take the argmax,
advance the matcher, until an end token or ``--max-tokens``. Each finished reply is parsed as the
agents parse it (``parse_json_text``) and checked with their own validators (pydantic
``Plan``/``Verdict``, the tabletop syntax check), so a column says whether the engine enforced the
schema; another says whether the reply is also RFC 8259 JSON (the agents' parser tolerates raw
control characters inside strings, strict JSON does not). A realistic reply per schema is also
replayed token by token (the tokenizer's own split): a rejected replay means the engine writes
some value differently (e.g. the score 1.0 only as ``1``), not that it is wrong.

The results file also holds rows of ``spiral-automaton``, the hand-written automaton that
llguidance replaced; they were measured by this script at commit 0025e2b, the last one that had it.
xgrammar and outlines-core are not dependencies of SPIRAL: ``pip install xgrammar outlines-core``
to rerun the comparison (an engine that is not installed is skipped).

    OMP_NUM_THREADS=1 python benchmarks/constrained_decoding.py --json benchmarks/results/constrained_decoding.json
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import machine, parser, write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

REPLIES = {  # one realistic compact reply per schema (replayed with the tokenizer's own split)
    "plan_tabletop": {"rationale": "open the box, then put the red block inside", "steps": [
        {"text": "open the box", "verb": "open", "objects": ["box"], "preconditions": [],
         "postconditions": ["open(box)"]},
        {"text": "move the red block into the box", "verb": "move", "objects": ["red_block", "box"],
         "preconditions": ["open(box)", "clear(red_block)"], "postconditions": ["in(red_block, box)"]}]},
    "plan_free": {"rationale": "pick the cup, pour", "steps": [
        {"text": "pick up the cup", "verb": "pick", "objects": ["cup"], "preconditions": ["free(hand)"],
         "postconditions": ["holding(cup)"]}]},
    "verdict_levels21": {"scores": {"action": 0.5, "preservation": 1.0, "continuity": 0.95, "consistency": 0.05},
                         "passed": False, "failure": "incomplete_action", "decision": "refine",
                         "feedback": "the block must end inside the box"},
    "verdict_free": {"scores": {"action": 0.52, "preservation": 1, "continuity": 0.9, "consistency": 0.1},
                     "passed": True, "failure": None, "decision": "accept", "feedback": ""},
    "refine": {"text": "move the red block into the open box slowly, keep the lamp still"},
}


def schemas() -> dict[str, tuple[dict[str, Any], Callable[[Any], Any]]]:
    """Each schema with the validator the agent runs on the parsed reply."""
    from spiral.critics.vlm import _to_verdict, verdict_schema
    from spiral.planners.llm import REFINE_SCHEMA, _tabletop_issues, _to_plan, plan_schema

    def tabletop(data: Any) -> Any:
        plan = _to_plan(data, "put the red block in the box", 0)
        issues = _tabletop_issues(plan, None, "put the red block in the box", simulate=False)
        if issues:
            raise ValueError("; ".join(issues))
        return plan

    def refine(data: Any) -> Any:
        if not (isinstance(data, dict) and set(data) == {"text"} and isinstance(data["text"], str) and data["text"]):
            raise ValueError("refine reply must be {'text': non-empty string}")
        return data

    return {
        "plan_tabletop": (plan_schema("tabletop", 12, 8), tabletop),
        "plan_free": (plan_schema(None, 12, 8), lambda d: _to_plan(d, "pour the tea", 0)),
        "verdict_levels21": (verdict_schema(21), _to_verdict),
        "verdict_free": (verdict_schema(0), _to_verdict),
        "refine": (REFINE_SCHEMA, refine),
    }


# -- tokenizers ------------------------------------------------------------------------------------


def tiny_tokenizer() -> Any:
    """The byte-level BPE of the tests' tiny Qwen2.5-VL (same recipe as ``qwen_tools.build_tiny_qwen25vl``)."""
    import qwen_tools
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=qwen_tools.SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    prompts = [f.read_text(encoding="utf-8") for f in sorted(qwen_tools.PROMPTS.glob("*.md"))]
    bpe.train_from_iterator(qwen_tools.CORPUS * 4 + prompts * 2, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def large_tokenizer(cache: Path, vocab: int, corpus_mb: int) -> tuple[Any, dict[str, Any]]:
    """A Qwen-size byte-level BPE trained on the Python sources on disk (cached: training takes ~1 min)."""
    import qwen_tools
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = cache / f"bpe{vocab // 1000}k.json"
    meta_path = path.with_suffix(".meta.json")
    if not path.is_file():
        roots = [Path(os.__file__).parent, Path(np.__file__).parent.parent]  # stdlib, site-packages
        files = [f for r in roots for f in sorted(glob.glob(str(r / "**" / "*.py"), recursive=True))]
        used = {"bytes": 0, "files": 0}

        def texts():
            for f in files:
                try:
                    s = Path(f).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                used["bytes"] += len(s.encode())
                used["files"] += 1
                yield s
                if used["bytes"] > corpus_mb * 1_000_000:
                    return

        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=qwen_tools.SPECIAL, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t = time.perf_counter()
        bpe.train_from_iterator(texts(), trainer)
        cache.mkdir(parents=True, exist_ok=True)
        bpe.save(str(path))
        meta_path.write_text(json.dumps({"corpus": "Python sources (stdlib, site-packages)", "corpus_bytes": used["bytes"],
                                         "files": used["files"], "train_s": round(time.perf_counter() - t, 1)}))
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(path)), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    return tok, json.loads(meta_path.read_text())


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable character → byte map (GPT-2 scheme), for engines that take raw token bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


# -- engines ---------------------------------------------------------------------------------------


@dataclass
class Engine:
    """One library behind four calls: prepare the tokenizer, compile a schema, make a matcher, apply a mask."""

    name: str
    version: str
    prepare: Callable[[Any, int, list[int]], Any]
    compile: Callable[[Any, dict[str, Any]], Any]
    matcher: Callable[[Any, Any], Any]  # -> object with fill(bitmask), accept(token) -> bool


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set the logits of tokens whose bit is 0 to -inf (one plain-torch kernel shared by the engines here)."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    keep = bits.view(bitmask.shape[0], -1)[:, : logits.shape[-1]].bool()
    logits.masked_fill_(~keep, float("-inf"))


def xgrammar_engine(threads: int) -> Engine:
    import xgrammar as xgr

    class M:
        def __init__(self, g: Any):
            self.m = xgr.GrammarMatcher(g)

        def fill(self, bitmask: torch.Tensor) -> None:
            self.m.fill_next_token_bitmask(bitmask)

        def accept(self, t: int) -> bool:
            return self.m.accept_token(t)

    return Engine(
        "xgrammar", version("xgrammar"),
        prepare=lambda tok, v, eos: xgr.GrammarCompiler(
            xgr.TokenizerInfo.from_huggingface(tok, vocab_size=v, stop_token_ids=eos), max_threads=threads,
            cache_enabled=False),
        compile=lambda comp, s: comp.compile_json_schema(json.dumps(s), any_whitespace=False, separators=(",", ":"),
                                                          strict_mode=True),
        matcher=lambda comp, g: M(g))


def llguidance_engine() -> Engine:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    class M:
        def __init__(self, m: Any):
            self.m = m

        def fill(self, bitmask: torch.Tensor) -> None:
            llguidance.torch.fill_next_token_bitmask(self.m, bitmask, 0)

        def accept(self, t: int) -> bool:
            return self.m.consume_token(t)

    def compile_(tok: Any, s: dict[str, Any]) -> Any:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(s, overrides={"whitespace_flexible": False})
        m = llguidance.LLMatcher(tok, grammar)  # validates the grammar; masks are computed lazily per state
        if m.is_error():
            raise ValueError(m.get_error())
        return grammar

    return Engine(
        "llguidance", version("llguidance"),
        prepare=lambda tok, v, eos: llguidance.hf.from_tokenizer(tok, n_vocab=v, eos_token=eos),
        compile=compile_,
        matcher=lambda tok, g: M(llguidance.LLMatcher(tok, g)))


def outlines_core_engine() -> Engine:
    import outlines_core as oc

    class M:
        def __init__(self, index: Any, eos: int):
            self.g, self.eos = oc.Guide(index), eos

        def fill(self, bitmask: torch.Tensor) -> None:
            self.g.write_mask_into(bitmask.data_ptr(), bitmask.numel(), bitmask.element_size())

        def accept(self, t: int) -> bool:
            if t == self.eos:  # the guide allows the end token in a final state but has no transition for it
                return self.g.is_finished()
            try:
                self.g.advance(t, return_tokens=False)
                return True
            except ValueError:
                return False

    def prepare(tok: Any, v: int, eos: list[int]) -> Any:
        dec = _byte_decoder()
        special = set(tok.added_tokens_decoder)
        vocab: dict[bytes, list[int]] = {}
        for piece, i in tok.get_vocab().items():
            if i in special or i >= v:
                continue
            vocab.setdefault(bytes(dec[c] for c in piece), []).append(i)
        return oc.Vocabulary(eos[0], vocab)

    def compile_(vocab: Any, s: dict[str, Any]) -> Any:
        return oc.Index(oc.json_schema.build_regex_from_schema(json.dumps(s), whitespace_pattern=""), vocab)

    return Engine("outlines-core", version("outlines-core"), prepare=prepare, compile=compile_,
                  matcher=lambda vocab, index: M(index, vocab.get_eos_token_id()))


ENGINES: dict[str, Callable[[argparse.Namespace], Engine]] = {
    "xgrammar": lambda a: xgrammar_engine(a.threads),
    "llguidance": lambda a: llguidance_engine(),
    "outlines-core": lambda a: outlines_core_engine(),
}


# -- measuring -------------------------------------------------------------------------------------


def decode(engine: Engine, prepared: Any, grammar: Any, tok: Any, vocab: int, eos: list[int], seed: int,
           max_tokens: int, forced: list[int] | None = None) -> dict[str, Any]:
    """Decode one reply under the constraint; random logits (or the forced token ids) choose each token."""
    m = engine.matcher(prepared, grammar)
    bitmask = torch.full((1, (vocab + 31) // 32), -1, dtype=torch.int32)
    gen = torch.Generator().manual_seed(seed)
    fill_ns, apply_ns, accept_ns, out = [], [], [], []
    ended = rejected = False
    for step in range(max_tokens if forced is None else len(forced) + 1):
        t0 = time.perf_counter_ns()
        m.fill(bitmask)
        t1 = time.perf_counter_ns()
        logits = torch.randn(1, vocab, generator=gen)
        t2 = time.perf_counter_ns()
        apply_bitmask(logits, bitmask)
        choice = int(logits.argmax())
        t3 = time.perf_counter_ns()
        if forced is not None:
            choice = forced[step] if step < len(forced) else eos[0]
            allowed = (int(bitmask[0, choice // 32]) >> (choice % 32)) & 1
            rejected |= not allowed
        ok = m.accept(choice)
        t4 = time.perf_counter_ns()
        fill_ns.append(t1 - t0)
        apply_ns.append(t3 - t2)
        accept_ns.append(t4 - t3)
        if not ok:
            rejected = True
            break
        if choice in eos:
            ended = True
            break
        out.append(choice)
    return {"tokens": out, "ended": ended, "rejected": rejected, "fill_ns": fill_ns, "apply_ns": apply_ns,
            "accept_ns": accept_ns}


def _check(validate: Callable[[Any], Any], text: str) -> tuple[bool, str | None]:
    """Parse the reply as the agents do (``parse_json_text``) and run the agent's validator on it."""
    from spiral.llm.structured import parse_json_text

    try:
        validate(parse_json_text(text))
        return True, None
    except ValueError as e:
        return False, f"{' '.join(str(e).split())[:160]} in {text[:120]!r}"


def _strict_json(text: str) -> bool:
    """Is the reply RFC 8259 JSON? (the agents' parser also lets raw control characters through strings)"""
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _ms(ns: list[int]) -> float:
    return round(statistics.fmean(ns) / 1e6, 4) if ns else float("nan")


def _p95(ns: list[int]) -> float:
    return round(float(np.percentile(np.asarray(ns), 95)) / 1e6, 4) if ns else float("nan")


def _skipped(args: argparse.Namespace, engine: str, tok_name: str, schema: str) -> bool:
    return any(fnmatch.fnmatch(f"{engine}:{tok_name}:{schema}", pat) for pat in args.skip)


def measure(engine: Engine, tok: Any, tok_name: str, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """One row per schema (a generator, so that engines can take turns schema by schema)."""
    vocab = len(tok)
    eos = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    t = time.perf_counter()
    prepared = engine.prepare(tok, vocab, eos)
    prep_ms = (time.perf_counter() - t) * 1e3
    for sname, (schema, validate) in schemas().items():
        if args.schemas and sname not in args.schemas or _skipped(args, engine.name, tok_name, sname):
            continue
        row: dict[str, Any] = {"engine": engine.name, "tokenizer": tok_name, "vocab": vocab, "schema": sname,
                               "prepare_tokenizer_ms": round(prep_ms, 2)}
        try:
            t = time.perf_counter()
            grammar = engine.compile(prepared, schema)
            row["compile_ms"] = round((time.perf_counter() - t) * 1e3, 2)
        except Exception as e:  # noqa: BLE001 - an engine that cannot take a schema is a result, not a crash
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            yield row
            print(f"  {engine.name} {tok_name} {sname}: compile failed: {row['error']}", flush=True)
            continue
        fills, applies, accepts, firsts, lengths, errors, valid, strict, ended = [], [], [], [], [], [], 0, 0, 0
        for r in range(args.replies):
            d = decode(engine, prepared, grammar, tok, vocab, eos, seed=1000 * r + 7, max_tokens=args.max_tokens)
            firsts.append(d["fill_ns"][0])
            fills += d["fill_ns"][1:]
            applies += d["apply_ns"]
            accepts += d["accept_ns"]
            lengths.append(len(d["tokens"]))
            ended += d["ended"]
            text = tok.decode(d["tokens"], skip_special_tokens=True)
            ok, err = _check(validate, text)
            valid += ok and d["ended"] and not d["rejected"]
            strict += ok and _strict_json(text)
            if err:
                errors.append(err)
        forced = tok(json.dumps(REPLIES[sname], separators=(",", ":")), add_special_tokens=False)["input_ids"]
        rep = decode(engine, prepared, grammar, tok, vocab, eos, seed=0, max_tokens=0, forced=forced)
        row.update({
            "first_mask_ms": round(statistics.median(firsts) / 1e6, 3),
            "mask_ms_mean": _ms(fills), "mask_ms_p95": _p95(fills),
            "accept_ms_mean": _ms(accepts), "apply_ms_mean": _ms(applies),
            "replies": args.replies, "ended": ended, "schema_valid": valid, "strict_json": strict,
            "reply_tokens_mean": round(statistics.fmean(lengths), 1),
            "first_invalid": errors[0] if errors else None, "replay_tokens": len(forced),
            "replay_rejected_at": None if rep["ended"] and not rep["rejected"] else
            tok.decode(forced[: len(rep["tokens"]) + 1]), "replay_accepted": rep["ended"] and not rep["rejected"],
            "replay_mask_ms_mean": _ms(rep["fill_ns"]), "replay_accept_ms_mean": _ms(rep["accept_ns"]),
        })
        yield row
        print(f"  {engine.name:13s} {tok_name:9s} {sname:16s} compile {row['compile_ms']:9.2f} ms  "
              f"mask {row['mask_ms_mean']:.4f} ms (p95 {row['mask_ms_p95']:.4f})  valid {valid}/{args.replies}  "
              f"replay {'ok' if row['replay_accepted'] else 'REJECTED'}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "constrained_decoding.json", threads=1,
                threads_help="compile threads for engines that take them (masks run on one torch thread)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    ap.add_argument("--tokenizers", default="tiny,large", help="tiny (the tests' 1.1k BPE), large (151k BPE)")
    ap.add_argument("--schemas", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated ENGINE:TOKENIZER:SCHEMA patterns not to run, e.g. "
                    "'outlines-core:large:plan_*' (its index over a 151k vocabulary takes minutes per schema)")
    ap.add_argument("--replies", type=int, default=5, help="random-logit replies per engine × tokenizer × schema")
    ap.add_argument("--max-tokens", type=int, default=1024, help="token cap per reply (the backend's default)")
    ap.add_argument("--large-vocab", type=int, default=151_643, help="size of the large BPE (Qwen2.5's is 151,643)")
    ap.add_argument("--corpus-mb", type=int, default=200, help="MB of Python source to train the large BPE on")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/spiral-bench-tokenizers"))
    args = ap.parse_args(argv)
    args.schemas = [s for s in args.schemas.split(",") if s]
    args.skip = [s for s in args.skip.split(",") if s]
    torch.set_num_threads(1)
    toks: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name in args.tokenizers.split(","):
        if name == "tiny":
            toks[name] = (tiny_tokenizer(), {"corpus": "SPIRAL prompts + sample replies (tests/qwen_tools.py)"})
        elif name == "large":
            toks[name] = large_tokenizer(args.cache, args.large_vocab, args.corpus_mb)
        else:
            raise SystemExit(f"unknown tokenizer {name!r}; use tiny and/or large")
    load0 = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    engines: list[Engine] = []
    for ename in args.engines.split(","):
        if ename not in ENGINES:
            raise SystemExit(f"unknown engine {ename!r}; choose from {', '.join(ENGINES)}")
        try:
            engine = ENGINES[ename](args)
        except ImportError as e:
            print(f"{ename}: not installed ({e}); skipped")
            continue
        versions[engine.name] = engine.version
        engines.append(engine)
    for tname, (tok, _) in toks.items():
        # engines take turns schema by schema, so a change in the shared machine's load hits them alike
        gens = [measure(e, tok, tname, args) for e in engines]
        while gens:
            for g in list(gens):
                row = next(g, None)
                if row is None:
                    gens.remove(g)
                else:
                    rows.append(row)
    result = {
        "benchmark": "constrained_decoding", "engines": versions,
        "tokenizers": {k: {"vocab": len(t), **meta} for k, (t, meta) in toks.items()},
        "settings": {"skipped": args.skip, "replies": args.replies, "max_tokens": args.max_tokens,
                     "compile_threads": args.threads, "torch_threads": 1, "whitespace": "none (compact JSON)"},
        "rows": rows,
        "machine": {**machine(), "numpy": np.__version__,
                    "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]},
    }
    _table(rows)
    write_result(args.json, result)
    return result


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="constrained decoding on SPIRAL's schemas (CPU, 1 thread; ms)")
    for c in ("engine", "tokenizer", "schema", "prep tok", "compile", "1st mask", "mask mean", "mask p95",
              "accept", "valid", "RFC JSON", "replay"):
        table.add_column(c)
    for r in rows:
        if "error" in r:
            table.add_row(r["engine"], r["tokenizer"], r["schema"], f"{r['prepare_tokenizer_ms']:.1f}",
                          "error", "", "", "", "", "", "", r["error"][:40])
            continue
        table.add_row(r["engine"], r["tokenizer"], r["schema"], f"{r['prepare_tokenizer_ms']:.1f}",
                      f"{r['compile_ms']:.1f}", f"{r['first_mask_ms']:.2f}", f"{r['mask_ms_mean']:.3f}",
                      f"{r['mask_ms_p95']:.3f}", f"{r['accept_ms_mean']:.3f}", f"{r['schema_valid']}/{r['replies']}",
                      f"{r['strict_json']}/{r['replies']}", "ok" if r["replay_accepted"] else "rejected")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
