"""Quantize stage: lossy (int8, bf16) candidates from ONNX Runtime, torchao PT2E and OpenVINO/NNCF, each
judged against the parity budget and timed beside the float model of its runtime; per runtime, the fastest
that passes ships in that runtime's lossy backend (``model.int8.onnx``, ``model.lossy.xml``).

Where to look: ``search`` runs the stage (``run_quantization``); ``candidates`` is the candidate registry
(one ``register`` call adds one); ``judge`` and ``budget`` judge a model; ``repairs``, ``mixed_precision``
and ``sensitivity`` rescue one that missed; ``selection`` times them and picks what ships; ``shipping``
reads from the backend registry which backend and file a runtime's choice ships as; ``types`` holds the
hand-off types. This ``__init__`` imports nothing, so importing one module never pulls in the rest.
"""
