"""The generate extension of a served decoder: ``POST .../generate`` and ``.../generate_stream`` (SSE) give
transformers' greedy tokens, text round-trips through the tokenizer, bad requests are 400 naming the field,
a client that goes away stops its stream.

The in-process tests drive the ASGI app directly over a Llama-style test decoder exported here with the
cache layout of the contract; the end-to-end test (slow) exports a folder with ``exporter export``, serves it
in a subprocess and packages it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter.hf.decoding import DecoderLayout, greedy_tokens
from exporter.hf.facts import GenerationCase
from exporter.hf.reference import reference_generations
from exporter.hf.wrappers import DecoderWithPast
from exporter.runners.onnxruntime import OnnxRuntimeRunner
from exporter.serving.app import build_app
from exporter.serving.decoder import DecoderServing, TextCodec, TextPieces
from exporter.serving.signature import InputRule, ModelSignature, OutputInfo
from exporter.serving.state import ServerState
from tests.hf_models import llama_folder

NAME = "llama"
PROMPT_TEXT = "The quick brown fox"
NEW_TOKENS = 12


def export_decoder(folder: Path, out: Path) -> DecoderLayout:
    """The folder's model as ONNX with the contract's cache inputs and outputs (TorchScript exporter)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder).eval()
    config = model.config
    layers, kv, head = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    layout = DecoderLayout(layers, kv, head, config.vocab_size, config.max_position_embeddings, (2,))

    example = (
        torch.randint(0, config.vocab_size, (1, 5)),
        torch.ones(1, 8, dtype=torch.long),
        torch.arange(3, 8)[None],
        *[torch.randn(1, kv, 3, head) for _ in range(2 * layers)],
    )
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}}
    dynamic["position_ids"] = {0: "batch", 1: "seq"}
    dynamic.update({name: {0: "batch", 2: "past"} for name in layout.past_names})
    dynamic.update({name: {0: "batch", 2: "total"} for name in layout.present_names})
    dynamic["logits"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            DecoderWithPast(model, layers),
            example,
            str(out),
            input_names=list(layout.input_names),
            output_names=list(layout.output_names),
            dynamic_axes=dynamic,
            dynamo=False,
            opset_version=17,
        )
    return layout


@dataclass
class Decoder:
    folder: Path
    runner: OnnxRuntimeRunner
    serving: DecoderServing
    signature: ModelSignature
    expected: list[int]
    """transformers' greedy tokens after PROMPT_TEXT (eos not a stop)."""


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Decoder:
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = llama_folder(tmp_path_factory.mktemp("llama"))
    layout = export_decoder(folder, folder / "model.onnx")
    prompt = AutoTokenizer.from_pretrained(folder)(PROMPT_TEXT)["input_ids"]
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    (reference,) = reference_generations(model, [("fox", PROMPT_TEXT, prompt)], NEW_TOKENS)
    expected = list(reference.expected)
    case = GenerationCase("fox", tuple(prompt), tuple(expected), PROMPT_TEXT)
    serving = DecoderServing(layout, (case,), folder / "tokenizer.json", "text and token ids")
    rules = [InputRule(n, np.dtype("int64"), ("batch", "seq"), False, None) for n in layout.input_names]
    signature = ModelSignature(NAME, tuple(rules), (OutputInfo("logits", np.dtype("float32"), ()),), {}, None)
    runner = OnnxRuntimeRunner(folder / "model.onnx", threads=1)
    return Decoder(folder, runner, serving, signature, expected)


def state_of(decoder: Decoder, serving: DecoderServing | None = None) -> ServerState:
    state = ServerState(
        decoder.signature,
        max_body_bytes=1 << 20,
        max_batch_size=1,
        max_batch_delay_s=0.0,
        decoder=serving or decoder.serving,
    )
    return state


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    chunks: list[bytes]

    def json(self) -> Any:
        return json.loads(b"".join(self.chunks))

    def events(self) -> list[dict[str, Any]]:
        text = b"".join(self.chunks).decode()
        return [json.loads(block.removeprefix("data: ")) for block in text.split("\n\n") if block]


async def call(
    state: ServerState, runner: OnnxRuntimeRunner, path: str, body: Any, leave_after: int | None = None
) -> Reply:
    """One request through the app; ``leave_after``: the client disconnects after that many body chunks."""
    app = build_app(state)
    if state.worker is None:
        state.attach(runner, "onnxruntime_onnx")
        state.ready = True
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    gone = asyncio.Event()
    sent: list[MutableMapping[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": data, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        chunks = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
        if leave_after is not None and len(chunks) >= leave_after:
            gone.set()
            await asyncio.sleep(0.05)  # the disconnect is seen before the next token

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    chunks = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
    return Reply(start["status"], dict(start["headers"]), chunks)


def run(decoder: Decoder, path: str, body: Any, **kwargs: Any) -> Reply:
    state = state_of(decoder, kwargs.pop("serving", None))
    return asyncio.run(call(state, decoder.runner, path, body, **kwargs))


GENERATE = f"/v2/models/{NAME}/generate"
STREAM = f"/v2/models/{NAME}/generate_stream"


def test_the_exported_decoder_generates_transformers_tokens(decoder: Decoder) -> None:
    case = decoder.serving.cases[0]
    assert greedy_tokens(decoder.runner, decoder.serving.layout, case.prompt, NEW_TOKENS) == decoder.expected


def test_generate_text_gives_transformers_tokens_and_their_text(decoder: Decoder) -> None:
    parameters = {"max_tokens": NEW_TOKENS, "ignore_eos": True}
    body = {"text_input": PROMPT_TEXT, "parameters": parameters, "id": "7"}
    reply = run(decoder, GENERATE, body)
    assert reply.status == 200, reply.chunks
    answer = reply.json()
    assert answer["output_ids"] == decoder.expected
    assert answer["model_name"] == NAME and answer["id"] == "7" and answer["finish_reason"] == "length"
    codec = TextCodec(decoder.serving)
    assert answer["text_output"] == codec.decode(decoder.expected)
    assert answer["prompt_tokens"] == len(decoder.serving.cases[0].prompt)


def test_generate_from_token_ids_at_the_top_level(decoder: Decoder) -> None:
    prompt = list(decoder.serving.cases[0].prompt)
    reply = run(decoder, GENERATE, {"input_ids": prompt, "max_tokens": 5, "ignore_eos": True})
    assert reply.status == 200 and reply.json()["output_ids"] == decoder.expected[:5]


def test_generate_stops_at_eos_unless_told(decoder: Decoder) -> None:
    eos = decoder.expected[3]
    layout = replace(decoder.serving.layout, eos_token_ids=(eos,))
    serving = replace(decoder.serving, layout=layout)
    body = {"text_input": PROMPT_TEXT, "parameters": {"max_tokens": NEW_TOKENS}}
    answer = run(decoder, GENERATE, body, serving=serving).json()
    stop = decoder.expected.index(eos)
    assert answer["output_ids"] == decoder.expected[: stop + 1] and answer["finish_reason"] == "stop"


def test_generate_stream_sends_one_event_per_token(decoder: Decoder) -> None:
    body = {"text_input": PROMPT_TEXT, "parameters": {"max_tokens": NEW_TOKENS, "ignore_eos": True}}
    reply = run(decoder, STREAM, body)
    assert reply.status == 200 and reply.headers[b"content-type"].startswith(b"text/event-stream")
    events = reply.events()
    assert [e["output_ids"][0] for e in events] == decoder.expected
    assert [e["index"] for e in events] == list(range(NEW_TOKENS))
    assert events[-1]["finish_reason"] == "length" and "finish_reason" not in events[0]
    whole = TextCodec(decoder.serving).decode(decoder.expected)
    assert "".join(e["text_output"] for e in events) == whole


def test_a_client_that_leaves_stops_the_stream(decoder: Decoder) -> None:
    body = {"input_ids": [5, 6, 7], "parameters": {"max_tokens": 40, "ignore_eos": True}}
    reply = run(decoder, STREAM, body, leave_after=2)
    assert 2 <= len(reply.events()) < 5


def test_text_pieces_hold_a_split_character_until_it_is_whole(decoder: Decoder) -> None:
    codec = TextCodec(decoder.serving)
    ids = codec.encode("héllo ✓ 日本")
    pieces = TextPieces(codec)
    sent = [pieces.add(token, last=i == len(ids) - 1) for i, token in enumerate(ids)]
    assert "".join(sent) == "héllo ✓ 日本"
    assert all("\ufffd" not in piece for piece in sent)
    assert "" in sent  # some byte-level token ended inside a character and waited for the next


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"parameters": {"max_tokens": 2}}, "text_input"),
        ({"text_input": "a", "input_ids": [1]}, "input_ids"),
        ({"text_input": 5}, "text_input"),
        ({"text_input": ""}, "text_input"),
        ({"input_ids": []}, "input_ids"),
        ({"input_ids": [1, "2"]}, "input_ids[1]"),
        ({"input_ids": [1, 100000]}, "input_ids[1]"),
        ({"input_ids": [1, True]}, "input_ids[1]"),
        ({"input_ids": [1] * 257}, "input_ids"),
        ({"input_ids": [1], "parameters": {"max_tokens": 0}}, "parameters.max_tokens"),
        ({"input_ids": [1], "parameters": {"max_tokens": 2.5}}, "parameters.max_tokens"),
        ({"input_ids": [1], "max_tokens": 10**6}, "max_tokens"),
        ({"input_ids": [1], "max_tokens": 2, "parameters": {"max_tokens": 2}}, "max_tokens"),
        ({"input_ids": [1], "parameters": {"ignore_eos": "yes"}}, "parameters.ignore_eos"),
        ({"input_ids": [1], "parameters": {"temperature": 0.7}}, "parameters.temperature"),
        ({"input_ids": [1], "parameters": {"top_p": 0.9}}, "parameters.top_p"),
        ({"input_ids": [1], "parameters": []}, "parameters"),
        ({"input_ids": [1], "prompt": "x"}, "prompt"),
        ({"input_ids": [1], "id": 3}, "id"),
        ([1, 2], "body"),
        (b"{not json", "body"),
    ],
)
def test_bad_generate_requests_are_400_naming_the_field(decoder: Decoder, body: Any, field: str) -> None:
    for path in (GENERATE, STREAM):
        reply = run(decoder, path, body)
        assert reply.status == 400, reply.chunks
        assert reply.json()["field"] == field


def test_without_a_tokenizer_text_is_refused_and_ids_are_served(decoder: Decoder) -> None:
    serving = replace(decoder.serving, tokenizer=None, tokenizer_note="token ids only (no tokenizer)")
    reply = run(decoder, GENERATE, {"text_input": "hi"}, serving=serving)
    assert reply.status == 400 and reply.json()["field"] == "text_input"
    assert "token ids only" in reply.json()["error"]
    missing = run(decoder, GENERATE, {"max_tokens": 2}, serving=serving)
    assert missing.status == 400 and missing.json()["field"] == "input_ids"
    ids = list(decoder.serving.cases[0].prompt)
    answer = run(decoder, GENERATE, {"input_ids": ids, "max_tokens": 3, "ignore_eos": True}, serving=serving)
    assert answer.json()["output_ids"] == decoder.expected[:3] and "text_output" not in answer.json()


def test_generation_ends_at_the_context(decoder: Decoder) -> None:
    layout = replace(decoder.serving.layout, max_positions=8)
    serving = replace(decoder.serving, layout=layout)
    answer = run(decoder, GENERATE, {"input_ids": [5, 6, 7, 8, 9, 10], "max_tokens": 8}, serving=serving)
    assert len(answer.json()["output_ids"]) == 3 and answer.json()["finish_reason"] == "length"


@pytest.mark.slow
def test_an_exported_folder_serves_generate_and_packages_its_tokenizer(tmp_path: Path) -> None:
    """``exporter export FOLDER``, then ``exporter serve``: generate and generate_stream give the golden
    generation's tokens, the text round-trips, a bad request is 400 naming the field; the bundle has the
    tokenizer."""
    import http.client
    import subprocess
    import sys

    from tests.test_serve import start

    folder = llama_folder(tmp_path / "llama")
    out = tmp_path / "artifacts"
    command = [sys.executable, "-m", "exporter", "export", str(folder), "--to", "onnx", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    generation = json.loads((out / "golden" / "generation.json").read_text())
    case = generation["cases"][0]
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    server = start(out)
    try:
        name = json.loads((out / "manifest.json").read_text())["name"]
        status, metadata = server.request("GET", f"/v2/models/{name}")
        assert status == 200 and metadata["generate"]["text"] is True
        body = {"input_ids": case["prompt"], "parameters": {"max_tokens": len(case["expected"])}}
        body["parameters"]["ignore_eos"] = True
        status, answer = server.request("POST", f"/v2/models/{name}/generate", body)
        assert status == 200 and answer["output_ids"] == case["expected"]
        if case["text"]:
            text_body = {"text_input": case["text"], "parameters": body["parameters"]}
            status, by_text = server.request("POST", f"/v2/models/{name}/generate", text_body)
            assert (
                by_text["output_ids"] == case["expected"] and by_text["text_output"] == answer["text_output"]
            )
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", f"/v2/models/{name}/generate_stream", json.dumps(body).encode())
        raw = connection.getresponse().read().decode()
        connection.close()
        events = [json.loads(b.removeprefix("data: ")) for b in raw.split("\n\n") if b]
        assert [e["output_ids"][0] for e in events] == case["expected"]
        assert "".join(e["text_output"] for e in events) == answer["text_output"]
        status, error = server.request("POST", f"/v2/models/{name}/generate", {"input_ids": [-1]})
        assert status == 400 and error["field"] == "input_ids[0]"
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr
    assert "golden generation" in stderr and "identical through generate" in stderr
    bundle = tmp_path / "bundle"
    packaged = subprocess.run(
        [sys.executable, "-m", "exporter", "package", str(out), "--out", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert packaged.returncode == 0, packaged.stderr[-2000:]
    assert (bundle / "artifacts" / "tokenizer" / "tokenizer.json").is_file()
    assert (bundle / "artifacts" / "golden" / "generation.json").is_file()
    assert any(
        line.startswith("tokenizers==") for line in (bundle / "requirements.txt").read_text().splitlines()
    )
    assert "generate_stream" in (bundle / "README.md").read_text()
