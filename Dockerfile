# selora-serve for GPU hosts: the official vLLM OpenAI server image (the vLLM version the
# integration is pinned to) plus this package. Build: docker build -t selora-serve .
# Run:   docker run --gpus all -p 8000:8000 -v /models:/models -v /adapters:/adapters \
#          selora-serve --model /models/Llama-3-8B --adapters /adapters --tensor-parallel-size 1
# Ray:   docker run ... --entrypoint serve selora-serve run selora_serve.ray:build_app \
#          model=/models/Llama-3-8B adapters=s3://adapters/prod num_replicas=1   (or KubeRay: deploy/)
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/selora-serve
COPY pyproject.toml README.md ./
COPY selora_serve ./selora_serve
COPY converters ./converters
# vLLM and torch come from the base image; install only what this package adds (numba: the
# compiled CPU decode of adapters), with the extras whose features the image must have: s3://
# roots (obstore) and the Ray Serve LLM app (the `ray` extra's list, pinned as in pyproject.toml;
# never ray[llm], which pins another vLLM). The decode kernels are compiled once here, into
# numba's cache beside the package, so no container compiles them at start.
RUN python3 -m pip install --no-cache-dir ptwt PyWavelets prometheus-client obstore 'numba>=0.60' \
    'ray[serve]==2.60.0' pyarrow pandas jsonref boto3 \
 && python3 -m pip install --no-cache-dir --no-deps . \
 && python3 -c "import selora_serve, vllm, obstore, numba, ray.serve.llm; print('selora-serve on vLLM', vllm.__version__, '| ray', __import__('ray').__version__)" \
 && python3 -c "from selora_serve.spectral import fused; fused.warm_up()"

EXPOSE 8000
ENTRYPOINT ["selora-serve"]
CMD ["--help"]
