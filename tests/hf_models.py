"""Tiny Hugging Face folders for the tests: configs with random weights saved by ``save_pretrained`` (no
downloads), and a byte-level BPE tokenizer trained here on a few sentences.

The weights are drawn wider than transformers' default (``initializer_range`` 0.02 makes a tiny random
decoder's logits nearly flat, so greedy decoding repeats one token and compares little); the seed is fixed.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TRAINING_TEXT", "bert_folder", "gpt2_folder", "llama_folder", "save_tokenizer"]

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Exporters turn trained models into artifacts that are proven right and measured fast.",
    "A decoder generates one token at a time, reusing the keys and values it has cached.",
    "Numbers are measured, never assumed; every report says what was run.",
]
_INIT_RANGE = 0.25


def save_tokenizer(folder: Path, vocab_size: int = 320, input_names: tuple[str, ...] = ()) -> int:
    """A byte-level BPE tokenizer (``tokenizer.json`` + ``tokenizer_config.json``); returns its size.
    ``input_names``: what it makes (BERT's tokenizers make ``token_type_ids`` too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        **({"model_input_names": list(input_names)} if input_names else {}),
    )
    fast.save_pretrained(folder)
    return tokenizer.get_vocab_size()


def llama_folder(folder: Path, *, layers: int = 2, tokenizer: bool = True, seed: int = 0) -> Path:
    """A Llama-style decoder: grouped-query attention (4 heads, 2 key/value heads), rotary positions,
    tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = save_tokenizer(folder) if tokenizer else 320
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=_INIT_RANGE,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def gpt2_folder(folder: Path, *, layers: int = 2, tokenizer: bool = True, seed: int = 0) -> Path:
    """A GPT-2-style decoder: learned positions, fused QKV (Conv1D), multi-head attention."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = save_tokenizer(folder) if tokenizer else 320
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=64,
        n_layer=layers,
        n_head=4,
        n_positions=256,
        initializer_range=_INIT_RANGE,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    return folder


def bert_folder(
    folder: Path, *, architecture: str = "BertModel", tokenizer: bool = True, seed: int = 0
) -> Path:
    """A BERT-style encoder (``BertModel``: feature-extraction; ``BertForSequenceClassification``:
    text-classification) with the test tokenizer."""
    import transformers

    names = ("input_ids", "token_type_ids", "attention_mask")
    vocab = save_tokenizer(folder, input_names=names) if tokenizer else 320
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=3,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    getattr(transformers, architecture)(config).eval().save_pretrained(folder)
    return folder
