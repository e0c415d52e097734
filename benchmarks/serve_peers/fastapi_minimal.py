"""The 40-line KServe v2 server: FastAPI + uvicorn (uvloop, httptools), orjson both ways, no validation,
no batching; one route that hands the request's tensors to ONNX Runtime as they come.

    python fastapi_minimal.py MODEL.onnx NAME PORT THREADS
"""

import sys

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from ort_session import open_session

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}
DATATYPES = {np.dtype(v).name: k for k, v in DTYPES.items()}
path, name, port, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
session = open_session(path, threads)
output_names = [o.name for o in session.get_outputs()]
app = FastAPI()


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request) -> Response:
    body = orjson.loads(await request.body())
    feed = {
        t["name"]: np.asarray(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
        for t in body["inputs"]
    }
    results = session.run(None, feed)
    outputs = [
        {"name": n, "datatype": DATATYPES[r.dtype.name], "shape": r.shape, "data": r.reshape(-1)}
        for n, r in zip(output_names, results, strict=True)
    ]
    content = orjson.dumps({"model_name": model, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False)
