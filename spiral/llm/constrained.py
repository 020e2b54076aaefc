"""JSON-schema constrained decoding for local transformers models, through llguidance.

Why: a local model (and certainly a random-weight test model) does not reliably write JSON, let
alone JSON that matches the plan or verdict schema. Servers such as vLLM and SGLang constrain
decoding with a grammar engine; the local backend does the same with llguidance (guidance-ai; one
of the grammar backends of vLLM, SGLang and llama.cpp): the schema is compiled to a grammar over
the model's tokenizer, and at every step a matcher computes the bitmask of tokens that keep the
output a prefix of some schema-valid document. Tokens outside it get ``-inf``, so whatever
``generate`` then picks (greedy or sampled) stays inside the language, and when the end token
comes the text is schema-valid JSON. The agent's pydantic validation and repair loop still run on top.

Chosen over xgrammar and outlines-core by ``benchmarks/constrained_decoding.py`` on SPIRAL's
schemas and tokenizers (``docs/transformers_vlm.md`` has the numbers): it compiles our schemas in
milliseconds, masks a 151k-token vocabulary in 0.2-1.6 ms per token, enforces every keyword we use
(string lengths with JSON-valid characters, ``pattern``, numeric bounds, ``prefixItems``), and is
one dependency-free wheel. Output is compact JSON (no whitespace between tokens).

llguidance has no transformers ``LogitsProcessor`` of its own, so :class:`SchemaLogitsProcessor`
is the few lines that drive its matcher from ``generate``. The matcher fills a numpy bitmask
(``llguidance.numpy``) that torch shares without a copy, and the mask is applied with plain torch
ops: ``llguidance.torch`` imports ``torch._dynamo`` (~10 s on a busy CPU) and wraps its kernel in
``torch.compile``, whose first call on a CPU took ~80 s here.
"""

from __future__ import annotations

import logging
from typing import Any

from spiral.llm.structured import LLMError

log = logging.getLogger("spiral.llm")

INSTALL = "pip install 'spiral-video[vlm]'"
# Compact JSON, and fail on any keyword the engine cannot enforce instead of silently ignoring it.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":", "lenient": False}


def require_llguidance() -> Any:
    """Import llguidance or explain which extra installs it."""
    try:
        import llguidance
        import llguidance.hf
        import llguidance.numpy
    except ImportError as e:
        raise ImportError(f"constrained decoding for the transformers VLM agents needs llguidance: {INSTALL} "
                          "(or set the agent's option constrained: false)") from e
    return llguidance


def grammar_tokenizer(tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer (costs ~1-5 s for a 150k vocabulary: build once)."""
    llguidance = require_llguidance()
    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(eos_ids))
    except ValueError as e:
        raise LLMError(f"constrained decoding needs a fast (Rust) Hugging Face tokenizer: {e}; "
                       "fix: use the checkpoint's tokenizer.json, or set the agent's option constrained: false") \
            from None


def schema_grammar(schema: dict[str, Any], name: str = "reply") -> str:
    """The llguidance grammar of a JSON schema (compact JSON); an unsupported schema is one clear line."""
    llguidance = require_llguidance()
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as e:
        raise LLMError(f"the {name} schema cannot be compiled for constrained decoding: {e}; "
                       "fix: set the agent's option constrained: false") from None


def apply_bitmask(scores: Any, bitmask: Any) -> None:
    """Set, in place, the scores of the tokens whose bit in ``bitmask`` (1 × ceil(V/32) int32) is 0 to -inf."""
    import torch

    words = bitmask.to(scores.device)
    bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32, device=scores.device)) & 1
    allowed = bits.view(words.shape[0], -1)[:, : scores.shape[-1]].bool()
    scores.masked_fill_(~allowed, float("-inf"))


class SchemaLogitsProcessor:
    """A transformers logits processor that keeps one sequence inside a compiled grammar.

    Each call first feeds the matcher the tokens ``generate`` appended since the last call, then
    asks it for the next-token bitmask and masks the scores. Use a new processor per ``generate``
    call (it remembers where the prompt ended). Should the matcher ever fail (it should not:
    masked tokens cannot be picked), only an end token is left, the reply goes to validation and
    repair, and ``error`` says why.
    """

    def __init__(self, tokenizer: Any, grammar: str, vocab_size: int, eos_ids: list[int], name: str = "reply"):
        llguidance = require_llguidance()
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise LLMError(f"the {name} schema cannot be enforced by constrained decoding: "
                           f"{' '.join(self.matcher.get_error().split())[:300]}; fix: set the agent's option "
                           "constrained: false")
        import torch

        self._fill = llguidance.numpy.fill_next_token_bitmask
        self._words = llguidance.numpy.allocate_token_bitmask(1, vocab_size)
        self.bitmask = torch.from_numpy(self._words)  # the same memory: what the matcher fills, torch reads
        self.eos = list(eos_ids)
        self.error: str | None = None
        self._seen: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[0] != 1:
            raise ValueError("constrained decoding runs one sequence at a time")
        if self._seen is not None and self.error is None:
            for tok in input_ids[0, self._seen:].tolist():
                if not self.matcher.consume_token(tok):
                    self.error = " ".join(self.matcher.get_error().split())[:300]
                    log.warning("constrained decoding left the grammar (%s); the reply goes to repair", self.error)
                    break
        self._seen = input_ids.shape[1]
        if self.error is not None:
            ended = scores.new_full(scores.shape, float("-inf"))
            ended[:, self.eos] = scores[:, self.eos]
            return ended
        self._fill(self.matcher, self._words)
        apply_bitmask(scores, self.bitmask)
        return scores
