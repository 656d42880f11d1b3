"""Rollouts with vLLM, colocated with training on the same GPU. The only module that imports vllm.

Weights reach the engine through vLLM's public extension API only: the engine is built with
``worker_extension_cls`` pointing at ``WeightSyncExtension`` (below), and ``sync_weights`` calls
``LLM.collective_rpc("cat_load_weights", ...)``, which runs the extension's method inside each
worker, where it hands the tensors to the model's own ``load_weights``. The engine core runs in
this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so tensors are passed by reference, not
copied through IPC. After every update the prefix cache is reset (a stale cache would serve
KV blocks computed by the old weights).

Log-probs are requested as ``processed_logprobs`` so that they are those of the distribution
actually sampled from (after temperature / top-k / top-p), like the hf backend's.

Not tested on CPU machines (vLLM needs a GPU); ``to_completions`` is the pure part and is.
"""

from __future__ import annotations

import os

from cat.errors import ConfigError
from cat.generation import SamplingParams
from cat.types import Completion


class WeightSyncExtension:
    """Mixed into vLLM's worker class by ``worker_extension_cls``."""

    def cat_load_weights(self, weights) -> int:
        self.model_runner.model.load_weights(weights=weights)
        return len(weights)


def to_completions(request_outputs, n: int) -> list[list[Completion]]:
    """vLLM RequestOutputs (one per prompt, ``n`` samples each) -> Completions in prompt order."""
    result = []
    for request in request_outputs:
        group = []
        for out in request.outputs[:n]:
            ids = tuple(out.token_ids)
            logprobs = tuple(
                float(step[token].logprob) if step is not None and token in step else float("nan")
                for token, step in zip(ids, out.logprobs or [None] * len(ids), strict=True)
            )
            group.append(Completion(
                text=out.text, token_ids=ids, logprobs=logprobs,
                finish_reason="length" if out.finish_reason == "length" else "stop",
            ))
        result.append(group)
    return result


class VLLMGenerator:
    def __init__(self, model, tokenizer, *, gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1,
                 seed: int = 0, max_model_len: int | None = None, enable_sleep_mode: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError(
                "generation.backend=vllm needs vLLM on a CUDA machine: pip install 'cat-rl[vllm]' "
                "(or set generation.backend=hf)"
            ) from None
        self.tokenizer = tokenizer
        self.llm = LLM(
            model=model.name_or_path,
            tokenizer=getattr(tokenizer, "name_or_path", None) or model.name_or_path,
            dtype=str(model.dtype).removeprefix("torch."),
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            enable_sleep_mode=enable_sleep_mode,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightSyncExtension",
        )
        self.sync_weights(model)

    def sync_weights(self, model) -> None:
        weights = [(name, param.detach()) for name, param in model.state_dict().items()]
        self.llm.collective_rpc("cat_load_weights", args=(weights,))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        requests, sampling = [], []
        for i, ids in enumerate(prompts):
            requests.append({"prompt_token_ids": list(ids)})
            sampling.append(VLLMSamplingParams(
                n=params.n,
                max_tokens=params.max_new_tokens,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=1.0 if params.greedy else params.top_p,
                top_k=-1 if params.greedy or params.top_k == 0 else params.top_k,
                stop=list(params.stop) or None,
                logprobs=0,
                seed=None if params.seed is None else params.seed + i,
            ))
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return to_completions(outputs, params.n)
