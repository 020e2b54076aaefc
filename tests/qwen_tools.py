"""A tiny random-weight Qwen2.5-VL checkpoint built in code (nothing can be downloaded in tests).

Byte-level BPE tokenizer trained here on SPIRAL's prompt templates and a few replies (so prompts stay
a few hundred tokens long), with
Qwen's chat and vision special tokens and a chat template of our own; a 2-layer, 64-wide language
model and a 2-block vision tower with Qwen's real patch geometry (14 px patches, 2-frame temporal
patches, 2×2 merges); preprocessor configs that keep 64×64 frames at 56×56 (4 tokens per image).
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent.parent / "spiral" / "prompts"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
# Our own template (ChatML + Qwen vision placeholders), stored with the tokenizer like a real checkpoint's.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}"
    "{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p.type == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    '{"rationale": "open the box first", "steps": [{"text": "move the red block into the box", "verb": "move", '
    '"objects": ["red_block", "box"], "preconditions": ["open(box)", "clear(red_block)"], '
    '"postconditions": ["in(red_block, box)"]}]}',
    '{"scores": {"action": 0.5, "preservation": 1.0, "continuity": 0.95, "consistency": 0.05}, "passed": false, '
    '"failure": "incomplete_action", "decision": "refine", "feedback": "the block must end inside the box"}',
    "You are the planning agent of a video generation system. Goal: put the green block on the blue block.",
    "at(yellow_block, left) on(lamp) free(right) switch_on switch_off close open not",
]


def build_tiny_qwen25vl(folder: str | Path, seed: int = 0) -> Path:
    """Write the checkpoint to ``folder`` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    prompts = [f.read_text(encoding="utf-8") for f in sorted(PROMPTS.glob("*.md"))]
    bpe.train_from_iterator(CORPUS * 4 + prompts * 2, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = TEMPLATE
    ids = dict(zip(SPECIAL, tok.convert_tokens_to_ids(SPECIAL)))
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "out_hidden_size": 64,
                       "fullatt_block_indexes": [1], "tokens_per_second": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 56 * 56, "patch_size": 14, "temporal_patch_size": 2,
              "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711]}
    (folder / "preprocessor_config.json").write_text(json.dumps({**pixels, "image_processor_type": "Qwen2VLImageProcessor"}))
    (folder / "video_preprocessor_config.json").write_text(json.dumps({**pixels,
                                                                       "video_processor_type": "Qwen2VLVideoProcessor"}))
    return folder
