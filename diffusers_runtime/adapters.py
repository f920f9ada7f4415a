"""LoRA adapters: found in LORA_DIR, checked against the served pipeline before they touch it,
loaded into it on first use with diffusers' adapter API (peft), LORA_CACHE_SIZE of them kept,
and each batch's set made the active one just before its pipeline call.

The directory is read again on every request and listing, so an adapter copied in is served
without a restart. The base weights are never touched: a batch without adapters runs with the
LoRA layers disabled, which is the base layers' own computation, byte for byte."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metrics
from .errors import BadRequest

log = logging.getLogger(__name__)

# What diffusers' save_lora_weights writes into a folder; a lone file is <name>.safetensors.
WEIGHTS = "pytorch_lora_weights.safetensors"
# {"description": one line} beside the weights: adapter.json in a folder, <name>.json by a file.
METADATA = "adapter.json"
# Names peft can key modules by (no dots), as wire.fields.LoraName.
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

Loras = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    metadata: Path

    def description(self) -> str | None:
        """From the metadata file, read only for a listing: a request needs none."""
        try:
            text = json.loads(self.metadata.read_text()).get("description")
        except (OSError, ValueError, AttributeError):
            return None
        return text if isinstance(text, str) else None

    def signature(self) -> tuple[str, int, int]:
        """Changes when the file is replaced: a replaced adapter is checked and loaded again."""
        stat = self.path.stat()
        return str(self.path), stat.st_mtime_ns, stat.st_size


class Adapters:
    """The adapters of one served pipeline PIPE (the runtime's model MODEL)."""

    def __init__(self, directory: Path | None, pipe: Any, model: str, cache_size: int) -> None:
        self.directory = directory
        self._pipe = pipe
        self._model = model
        self._cache_size = cache_size
        # Loaded into the pipeline, least recently used first: name -> file signature.
        self._loaded: OrderedDict[str, tuple[str, int, int]] = OrderedDict()
        # File signature -> what is wrong with it (None: nothing), so each file is read once.
        self._problems: dict[tuple[str, int, int], str | None] = {}
        # Entries whose names peft cannot take, each warned about once.
        self._skipped: set[Path] = set()

    def available(self) -> dict[str, Adapter]:
        if self.directory is None or not self.directory.is_dir():
            return {}
        found = {}
        for entry in sorted(self.directory.iterdir()):
            if entry.is_dir() and (entry / WEIGHTS).is_file():
                adapter = Adapter(entry.name, entry / WEIGHTS, entry / METADATA)
            elif entry.suffix == ".safetensors" and entry.is_file():
                adapter = Adapter(entry.stem, entry, entry.with_suffix(".json"))
            else:
                continue
            if set(adapter.name) <= NAME_CHARACTERS:
                found[adapter.name] = adapter
            elif entry not in self._skipped:
                self._skipped.add(entry)
                log.warning("LoRA %s skipped: a name may have letters, digits, _ and - only", entry)
        return found

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": a.name, "description": a.description()} for a in self.available().values()]

    def check(self, names: list[str], where: str = "") -> None:
        """Every adapter NAMES is here and fits this pipeline, or a BadRequest says why."""
        if not names:
            return
        available = self.available()
        for name in names:
            adapter = available.get(name)
            if adapter is None:
                listing = ", ".join(available) or "none (LORA_DIR holds no adapter)"
                raise BadRequest(
                    f"{where}loras: no adapter {name!r} here; available: {listing} "
                    f"(GET /v1/models/{self._model}/adapters)"
                )
            problem = self._problem(adapter)
            if problem:
                raise BadRequest(f"{where}loras: adapter {name!r} {problem}")

    def _problem(self, adapter: Adapter) -> str | None:
        signature = adapter.signature()
        if signature not in self._problems:
            self._problems[signature] = self._read_problem(adapter)
        return self._problems[signature]

    def _read_problem(self, adapter: Adapter) -> str | None:
        """What keeps ADAPTER from this pipeline, judged from its keys and shapes alone."""
        try:
            # diffusers' own reading, which converts the other layouts it knows (Kohya's, ...).
            state = self._pipe.lora_state_dict(str(adapter.path))
        except Exception as exc:  # safetensors and diffusers raise many kinds for a bad file
            # The reason, with the file's path, for the operator; the client gets no paths.
            log.warning("LoRA %s unreadable: %s: %s", adapter.path, type(exc).__name__, exc)
            return "could not be read: the file is truncated, corrupt or not a LoRA; replace it"
        family = type(self._pipe).__name__
        components = {
            name: getattr(self._pipe, name, None)
            for name in ("transformer", "unet", "text_encoder", "text_encoder_2")
        }
        layers: dict[str, dict[str, Any]] = {}
        for key, tensor in state.items():
            component, _, rest = key.partition(".")
            module = components.get(component)
            if module is None:
                return (
                    f"is for another model family: it has weights for {component!r}, which "
                    f"{family} has not (or a layout diffusers does not convert for it)"
                )
            for kind in ("lora_A", "lora_B"):
                layer, found, _ = rest.partition(f".{kind}.")
                if found:
                    if component not in layers:
                        layers[component] = dict(module.named_modules())
                    target = layers[component].get(layer)
                    target = getattr(target, "base_layer", target)  # already has LoRA layers
                    if target is None or not hasattr(target, "in_features"):
                        return (
                            f"is for another model: {component}.{layer} is not a layer of "
                            f"this {family}"
                        )
                    # lora_A maps the layer's inputs to the rank, lora_B the rank to its outputs.
                    want, got, side = (
                        (target.in_features, tensor.shape[-1], "inputs")
                        if kind == "lora_A"
                        else (target.out_features, tensor.shape[0], "outputs")
                    )
                    if want != got:
                        return (
                            f"was trained for another base model: {component}.{layer} has "
                            f"{want} {side} here, {got} in the adapter"
                        )
        if not layers:
            return "has no LoRA weights (lora_A / lora_B) that diffusers reads"
        return None

    def preload(self, names: list[str]) -> None:
        """Load NAMES now (LORA_PRELOAD), before the runtime reports ready."""
        self.check(names, "LORA_PRELOAD: ")
        available = self.available()
        for name in names:
            self._load(available[name], keep=set(names))

    def activate(self, loras: Loras) -> None:
        """Make LORAS the pipeline's adapters for its next call. On the engine's worker thread,
        between pipeline calls: a load delays the batches behind it by its time only."""
        if not loras:
            if self._loaded:
                self._pipe.disable_lora()
            return
        available = self.available()
        names = [name for name, _ in loras]
        for name in names:
            adapter = available.get(name)
            if adapter is None:
                raise BadRequest(f"loras: adapter {name!r} was removed from LORA_DIR")
            self._load(adapter, keep=set(names))
        self._pipe.enable_lora()
        self._pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])

    def _load(self, adapter: Adapter, keep: set[str]) -> None:
        name, signature = adapter.name, adapter.signature()
        if self._loaded.get(name) == signature:
            self._loaded.move_to_end(name)
            metrics.LORA_CACHE.labels(self._model, "hit").inc()
            return
        metrics.LORA_CACHE.labels(self._model, "miss").inc()
        problem = self._problem(adapter)
        if problem:  # replaced on disk by a bad file since the request was checked
            raise BadRequest(f"loras: adapter {name!r} {problem}")
        if name in self._loaded:  # replaced on disk since it was loaded
            self._unload(name)
        while len(self._loaded) >= self._cache_size:
            oldest = next(n for n in self._loaded if n not in keep)
            self._unload(oldest)
            metrics.LORA_EVICTIONS.labels(self._model).inc()
        started = time.monotonic()
        self._pipe.load_lora_weights(str(adapter.path), adapter_name=name)
        seconds = time.monotonic() - started
        self._loaded[name] = signature
        metrics.LORA_LOADS.labels(self._model).inc()
        metrics.LORA_LOAD_SECONDS.labels(self._model).observe(seconds)
        log.info("LoRA %s loaded from %s in %.0f ms", name, adapter.path, seconds * 1000)

    def _unload(self, name: str) -> None:
        self._pipe.delete_adapters([name])
        del self._loaded[name]
        log.info("LoRA %s unloaded", name)
