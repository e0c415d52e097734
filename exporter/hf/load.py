"""A Hugging Face folder becomes a module with flat named inputs, its spec and its facts.

The folder is read as data first (``exporter.hf.folder``: refusals before anything loads); then transformers
loads it offline (``local_files_only``), never with remote code unless ``--trust-checkpoint``, safetensors
first and pickled ``.bin`` weights only through weights-only loading. A decoder's golden prompts are a few
built-in sentences through the folder's tokenizer (token ids drawn from a fixed seed without one), and
transformers' greedy generations after them are the reference every artifact must reproduce.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.errors import CalibrationError, LoadError, first_line
from exporter.hf.decoding import DecoderLayout
from exporter.hf.facts import DEFAULT_NEW_TOKENS, GenerationCase, HfFacts
from exporter.hf.folder import HfFolder
from exporter.hf.spec import FolderSpec, decoder_layout, folder_spec
from exporter.hf.tasks import Task
from exporter.hf.wrappers import DecoderWithPast, EncoderWrapper

__all__ = ["GOLDEN_SENTENCES", "LoadedFolder", "folder_input_names", "load_folder", "quiet_transformers"]

GOLDEN_SENTENCES = (
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "Exporters turn a trained model into deployment artifacts that are proven to be right and measured to "
    "be fast, and a decoder is proven by the tokens it generates, one at a time, through its cache.",
)
"""Golden prompts of three lengths (a few, a dozen and some forty tokens with a typical tokenizer)."""
_DRAWN_PROMPT_LENGTHS = (3, 12, 40)
MAX_FILE_PROMPTS = 16
"""Prompts read from a text file (``--calibration FILE.txt``) beside the built-in ones."""


@dataclass
class LoadedFolder:
    """The wrapper module (``model`` is the transformers model inside), the tokenizer and the facts."""

    module: torch.nn.Module
    facts: HfFacts
    tokenizer: Any | None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or advisory logs from transformers while it loads (the CLI prints its own lines)."""
    import logging as std_logging

    from transformers.utils import logging

    for name in ("torchao", "torch.utils._pytree"):  # import-time lines when transformers pulls in torchao
        std_logging.getLogger(name).setLevel(std_logging.ERROR)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()


def folder_input_names(folder: HfFolder, task: Task, trust: bool) -> tuple[str, ...]:
    """The inputs an encoder is exported with: what the tokenizer makes that ``forward`` also takes
    (BERT: ``input_ids``, ``token_type_ids``, ``attention_mask``; DistilBERT has no token types)."""
    import transformers

    config = _config(folder, trust)
    model_class = _model_class(transformers, task, config)
    taken = set(inspect.signature(model_class.forward).parameters)
    made = ("input_ids", "attention_mask", "token_type_ids")
    if folder.has_tokenizer:
        made = tuple(_tokenizer(folder, trust).model_input_names)
    return tuple(name for name in made if name in taken) or ("input_ids",)


def folder_spec_of(folder: HfFolder, task: Task, trust: bool) -> FolderSpec:
    """The spec, output names and (for a decoder) cache layout, read from the config and tokenizer only."""
    config = _config(folder, trust)
    names = () if task.is_decoder else folder_input_names(folder, task, trust)
    return folder_spec(task, config, names, _eos_ids(folder, config))


def load_folder(
    folder: HfFolder,
    task: Task,
    trust: bool,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    prompts_file: Path | None = None,
) -> LoadedFolder:
    """Load the folder's model for ``task`` and wrap it; for a decoder, run the reference generations from
    the built-in prompts and, when given, the lines of ``prompts_file`` (real text: ``--calibration
    FILE.txt``, which is what lossy candidates are then judged on too).

    Raises:
        LoadError: transformers cannot build or load the model from the folder.
    """
    import transformers

    config = _config(folder, trust)
    model_class = getattr(transformers, task.auto_class)
    with quiet_transformers():
        try:
            model = model_class.from_pretrained(
                folder.path,
                local_files_only=True,
                trust_remote_code=trust,
                dtype=torch.float32,
                use_safetensors=folder.weights_format == "safetensors",
            )
        except Exception as error:
            raise LoadError(
                f"transformers cannot load '{folder.path}' as {task.name}: {first_line(error)}"
            ) from None
    model.eval()
    tokenizer = _tokenizer(folder, trust) if folder.has_tokenizer else None
    layout = decoder_layout(config, _eos_ids(folder, config)) if task.is_decoder else None
    module: torch.nn.Module
    generation: tuple[GenerationCase, ...] = ()
    if layout is not None:
        module = DecoderWithPast(model, layout.num_layers)
        texts = read_prompts(prompts_file, tokenizer) if prompts_file is not None else ()
        generation = _reference(model, tokenizer, layout, new_tokens, texts)
    else:
        module = EncoderWrapper(model, task.outputs)
    facts = HfFacts(
        task=task.name,
        model_type=folder.model_type,
        architectures=folder.architectures,
        layout=layout,
        tokenizer_files=folder.tokenizer_files,
        generation=generation,
        max_new_tokens=new_tokens,
    )
    return LoadedFolder(module.eval(), facts, tokenizer)


def golden_token_inputs(
    tokenizer: Any, names: Sequence[str], max_batch: int | None = None, max_seq: int | None = None
) -> dict[str, np.ndarray]:
    """The golden sentences through the tokenizer, padded to one batch: an encoder's real-text case, kept
    inside the spec's batch and sequence ranges."""
    sentences = list(GOLDEN_SENTENCES)[:max_batch]
    encoded = tokenizer(
        sentences, padding=True, truncation=max_seq is not None, max_length=max_seq, return_tensors="np"
    )
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in names}


def read_prompts(path: Path, tokenizer: Any | None) -> tuple[str, ...]:
    """The first ``MAX_FILE_PROMPTS`` non-empty lines of a UTF-8 text file, as prompts.

    Raises:
        CalibrationError: the file is missing, not UTF-8 text, or has no non-empty line, or the folder has no
            tokenizer to turn text into tokens.
    """
    where = f"--calibration '{path}'"
    if tokenizer is None:
        raise CalibrationError(f"{where}: text prompts need the folder's tokenizer, and it has none")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CalibrationError(f"{where} cannot be read as UTF-8 text: {first_line(error)}") from None
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise CalibrationError(f"{where} has no text: give one prompt a line")
    return lines[:MAX_FILE_PROMPTS]


def _reference(
    model: Any, tokenizer: Any | None, layout: DecoderLayout, new_tokens: int, texts: Sequence[str]
) -> tuple[GenerationCase, ...]:
    from exporter.hf.reference import reference_generations

    prompts: list[tuple[str, str | None, list[int]]] = []
    room = max(layout.max_positions - new_tokens, 1)
    if tokenizer is not None:
        for index, text in enumerate(GOLDEN_SENTENCES, start=1):
            ids = [int(i) for i in tokenizer(text)["input_ids"]][:room]
            prompts.append((f"prompt-{index}", text, ids))
        for index, text in enumerate(texts, start=1):
            ids = [int(i) for i in tokenizer(text)["input_ids"]][:room]
            prompts.append((f"text-{index}", text, ids))
    else:
        rng = np.random.default_rng(0)
        for index, length in enumerate(_DRAWN_PROMPT_LENGTHS, start=1):
            ids = rng.integers(0, layout.vocab_size, size=min(length, room)).tolist()
            prompts.append((f"prompt-{index}", None, [int(i) for i in ids]))
    with quiet_transformers():
        return reference_generations(model, prompts, new_tokens)


def _config(folder: HfFolder, trust: bool) -> Any:
    import transformers

    with quiet_transformers():
        try:
            return transformers.AutoConfig.from_pretrained(
                folder.path, local_files_only=True, trust_remote_code=trust
            )
        except Exception as error:
            raise LoadError(f"config.json in '{folder.path}' cannot be read: {first_line(error)}") from None


def _model_class(transformers: Any, task: Task, config: Any) -> Any:
    auto = getattr(transformers, task.auto_class)
    try:
        return auto._model_mapping[type(config)]
    except (KeyError, AttributeError):
        raise LoadError(
            f"transformers has no {task.name} model for model_type '{config.model_type}': pass --task "
            "with the task the folder was trained for"
        ) from None


def _tokenizer(folder: HfFolder, trust: bool) -> Any:
    from transformers import AutoTokenizer

    with quiet_transformers():
        try:
            return AutoTokenizer.from_pretrained(folder.path, local_files_only=True, trust_remote_code=trust)
        except Exception as error:
            raise LoadError(
                f"the tokenizer in '{folder.path}' cannot be loaded: {first_line(error)}"
            ) from None


def _eos_ids(folder: HfFolder, config: Any) -> tuple[int, ...]:
    """End-of-sequence ids: ``generation_config.json``'s, else the config's (an int or a list)."""
    eos: Any = None
    generation = Path(folder.path) / "generation_config.json"
    if generation.is_file() and not generation.is_symlink():
        import json

        with contextlib.suppress(ValueError, OSError):
            data = json.loads(generation.read_text(encoding="utf-8"))
            eos = data.get("eos_token_id") if isinstance(data, dict) else None
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    values = eos if isinstance(eos, list) else [eos]
    return tuple(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
