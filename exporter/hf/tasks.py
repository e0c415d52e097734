"""Tasks in Optimum's spellings: which transformers class loads a folder for each, and what it outputs.

The task comes from ``config.json``'s ``architectures`` (``LlamaForCausalLM`` is ``text-generation``,
``BertModel`` is ``feature-extraction``) unless ``--task`` names one. Output names are the model output
class's fields that a deployment reads, as Optimum names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exporter.errors import UsageError

__all__ = ["TASKS", "Task", "resolve_task"]


@dataclass(frozen=True)
class Task:
    """One task: the ``transformers`` auto class that loads it and the outputs it exports, in order."""

    name: str
    auto_class: str
    outputs: tuple[str, ...]
    architecture_suffixes: tuple[str, ...]

    @property
    def is_decoder(self) -> bool:
        return self.name == "text-generation"


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("text-generation", "AutoModelForCausalLM", ("logits",), ("ForCausalLM", "LMHeadModel")),
        Task(
            "text-classification",
            "AutoModelForSequenceClassification",
            ("logits",),
            ("ForSequenceClassification",),
        ),
        Task(
            "token-classification",
            "AutoModelForTokenClassification",
            ("logits",),
            ("ForTokenClassification",),
        ),
        Task("fill-mask", "AutoModelForMaskedLM", ("logits",), ("ForMaskedLM",)),
        Task(
            "question-answering",
            "AutoModelForQuestionAnswering",
            ("start_logits", "end_logits"),
            ("ForQuestionAnswering",),
        ),
        Task("feature-extraction", "AutoModel", ("last_hidden_state",), ("Model",)),
    )
}
_ALIASES = {"text-generation-with-past": "text-generation", "default": "feature-extraction"}


def resolve_task(given: str | None, architectures: Sequence[str]) -> Task:
    """``--task`` (Optimum's spelling) when given, else the first architecture's task.

    Raises:
        UsageError: an unknown ``--task``, or architectures that name no task this tool exports.
    """
    if given is not None:
        name = _ALIASES.get(given, given)
        if name not in TASKS:
            raise UsageError(f"--task {given}: not a task exporter exports; use one of {', '.join(TASKS)}")
        return TASKS[name]
    for architecture in architectures:
        for task in TASKS.values():  # "Model" last: "BertForMaskedLM" also ends in a longer suffix first
            if any(architecture.endswith(suffix) for suffix in task.architecture_suffixes):
                return task
    shown = ", ".join(architectures) or "none"
    raise UsageError(
        f"config.json's architectures ({shown}) name no task exporter knows: pass --task with one of "
        f"{', '.join(TASKS)}"
    )
