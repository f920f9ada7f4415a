"""Load the pipeline once: choose device and dtype, apply the memory optimisations.

Every decision is logged on one line so that an operator reading the pod log knows what
the runtime actually does on the hardware it got.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open

from .settings import RuntimeSettings

log = logging.getLogger(__name__)

NAMED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The component whose weights define the checkpoint's precision, in order of preference.
DENOISERS = ("transformer", "unet", "prior", "decoder")


@dataclass
class LoadedPipeline:
    pipe: DiffusionPipeline
    device: str
    dtype: torch.dtype
    decisions: list[str] = field(default_factory=list)
    compiled: bool = False
    # The local folder it was loaded from (MODEL_ID, or the hub snapshot it resolved to).
    folder: Path | None = None


def accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return None


def saved_dtype(folder: Path) -> torch.dtype:
    """The floating dtype most of the denoiser's saved tensors have."""
    for name in DENOISERS:
        files = sorted((folder / name).glob("*.safetensors"))
        if files:
            break
    else:
        files = sorted(folder.rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"DTYPE=native needs safetensors weights to read the saved dtype; none in {folder}"
        )
    counts: Counter[str] = Counter()  # safetensors dtype names: F32, F16, BF16, ...
    for path in files:
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                dtype = weights.get_slice(key).get_dtype()
                counts[dtype] += 1
    floating = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    found = [(n, floating[d]) for d, n in counts.items() if d in floating]
    if not found:
        raise ValueError(f"DTYPE=native: no floating-point tensors in {files[0].parent}")
    return max(found, key=lambda pair: pair[0])[1]


def choose_dtype(setting: str, device: str, folder: Path) -> tuple[torch.dtype, str]:
    if setting in NAMED_DTYPES:
        return NAMED_DTYPES[setting], f"dtype {setting}: set by DTYPE"
    if setting == "native":
        dtype = saved_dtype(folder)
        return dtype, f"dtype {str(dtype).removeprefix('torch.')}: the weights' saved dtype"
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "dtype bfloat16: auto, the GPU supports bf16"
        return torch.float16, "dtype float16: auto, the GPU has no bf16"
    if device in ("xpu", "mps"):
        return torch.float16, f"dtype float16: auto on {device}"
    return torch.float32, "dtype float32: auto on CPU (half precision is slow there)"


def local_folder(model_id: str) -> Path:
    """A local folder for MODEL_ID: itself, or the hub snapshot it resolves to."""
    path = Path(model_id)
    if path.is_dir():
        return path
    if path.is_absolute() or model_id.startswith("."):
        raise FileNotFoundError(
            f"MODEL_ID={model_id} is not a folder. In KServe, check that storageUri was "
            "downloaded to /mnt/models (storage-initializer logs)."
        )
    return Path(DiffusionPipeline.download(model_id))


def compile_denoiser(pipe: DiffusionPipeline, mode: str) -> str:
    """Regional compilation: each transformer block compiled on its own, so all blocks share
    one compiled graph, compiled once rather than once per block (diffusers' own
    `compile_repeated_blocks` needs a `_repeated_blocks` list that SD3's transformer lacks)."""
    if mode == "off":
        return "compile off"
    blocks = getattr(getattr(pipe, "transformer", None), "transformer_blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        return f"compile {mode} skipped: {type(pipe).__name__} has no transformer blocks"
    for block in blocks:
        block.compile(mode=None if mode == "default" else mode)
    return f"compile {mode} applied to {len(blocks)} transformer blocks; warmed up before ready"


def load_pipeline(settings: RuntimeSettings) -> LoadedPipeline:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    found = accelerator()
    device = found or "cpu"
    folder = local_folder(settings.model_id)
    dtype, dtype_reason = choose_dtype(settings.dtype, device, folder)
    decisions = [f"device {device}", dtype_reason]

    pipe = DiffusionPipeline.from_pretrained(
        folder, dtype=dtype, low_cpu_mem_usage=settings.enable_low_cpu_mem
    )
    decisions.append(f"low_cpu_mem_usage {'applied' if settings.enable_low_cpu_mem else 'off'}")
    pipe.set_progress_bar_config(disable=True)

    offload = settings.enable_cpu_offload
    if offload == "false":
        pipe.to(device)
        decisions.append("cpu offload off")
    elif found is None:
        pipe.to(device)
        decisions.append(
            f"cpu offload {offload} skipped: it needs an accelerator and none was found"
        )
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        decisions.append("cpu offload sequential applied")
    else:
        pipe.enable_model_cpu_offload(device=device)
        decisions.append("cpu offload model applied")

    if settings.enable_attention_slicing:
        pipe.enable_attention_slicing()
        decisions.append("attention slicing applied")
    else:
        decisions.append("attention slicing off")

    vae = getattr(pipe, "vae", None)
    if not settings.enable_vae_slicing:
        decisions.append("vae slicing off")
    elif vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
        decisions.append("vae slicing applied")
    else:
        decisions.append(f"vae slicing skipped: {type(pipe).__name__} has no sliceable VAE")

    compiled = compile_denoiser(pipe, settings.compile)
    decisions.append(compiled)
    loaded = LoadedPipeline(
        pipe=pipe,
        device=device,
        dtype=dtype,
        decisions=decisions,
        compiled=compiled.startswith(f"compile {settings.compile} applied"),
        folder=folder,
    )
    log.info("loaded %s from %s", type(pipe).__name__, settings.model_id)
    for decision in decisions:
        log.info("startup decision: %s", decision)
    return loaded
