"""Speed tiers: how much of the exact computation a request trades for time.

`exact` runs the pipeline as diffusers does, byte for byte. The other tiers add mechanisms for
one pipeline call and take them away again after it, so requests of different tiers can follow
each other on one pipeline (they never share a call: the tier is part of the batch key):

- repeated text tokens: SD3 sends 256 T5 tokens to its transformer even when the T5 encoder is
  silent or dropped (all 256 are then the same vector, in every block). Attention over n
  identical keys equals attention over one of them with log(n) added to its score, and every
  other operation on the text stream is per token, so one token stands for all of them. Exact in
  arithmetic; the bytes differ only by float rounding.
- step cache (diffusers' TaylorSeer, `TaylorSeerCacheConfig`): after a few full steps, every
  other step predicts each transformer block's output from its last two full ones (a first-order
  Taylor step) instead of running it. The last block always runs: in SD3 it returns no text
  stream, which the hooks cannot predict.

Each tier is what measurement on the default model justified (`make bench`, docs); a
mechanism the pipeline cannot take is left out with one logged reason, so a tier falls back to
what is left of it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook, TaylorSeerCacheConfig, apply_taylorseer_cache
from diffusers.hooks.hooks import CacheContext, _set_cache_context

from wire.fields import Speed

log = logging.getLogger(__name__)

SPEEDS: tuple[Speed, ...] = get_args(Speed)

REPEATED_TOKENS_HOOK = "repeated_text_tokens"
STEP_CACHE_HOOK = "taylorseer_cache"  # the name diffusers registers it under


@dataclass(frozen=True)
class StepCache:
    """diffusers' TaylorSeer settings: full steps before the first prediction, then one full
    step every `interval`."""

    interval: int
    warmup: int
    order: int = 1


@dataclass(frozen=True)
class Tier:
    """The mechanisms of one tier."""

    repeated_tokens: bool = False
    step_cache: StepCache | None = None

    def describe(self) -> str:
        parts = []
        if self.repeated_tokens:
            parts.append("repeated text tokens attended as one (exact in arithmetic)")
        if self.step_cache is not None:
            c = self.step_cache
            parts.append(
                f"block outputs predicted (TaylorSeer, order {c.order}) in all but one of "
                f"every {c.interval} steps after the first {c.warmup}"
            )
        return "; ".join(parts) or "the pipeline as diffusers runs it"


# Chosen by measurement on the default model (docs/performance.md): balanced is the exact
# computation rearranged, fast the largest step cache that kept the evaluation within 2 points.
TIERS: dict[Speed, Tier] = {
    "exact": Tier(),
    "balanced": Tier(repeated_tokens=True),
    "fast": Tier(repeated_tokens=True, step_cache=StepCache(interval=2, warmup=4)),
}


class _RepeatedTokens:
    """Shared by the transformer hook that shortens the text and the attention processors that
    weigh its last token: log(copies) while a call runs, else None."""

    def __init__(self) -> None:
        self.log_copies: float | None = None


def trailing_copies(context: torch.Tensor) -> int:
    """How many of the last text tokens are the same vector in every sample of the batch."""
    same = (context == context[:, -1:, :]).all(dim=-1).all(dim=0)
    return int(torch.cumprod(same.flip(0).int(), 0).sum())


class _ShortenText(ModelHook):  # type: ignore[misc]
    def __init__(self, state: _RepeatedTokens) -> None:
        super().__init__()
        self.state = state

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        context: torch.Tensor | None = kwargs.get("encoder_hidden_states")
        copies = trailing_copies(context) if context is not None else 0
        if context is not None and copies > 1:
            kwargs["encoder_hidden_states"] = context[:, : context.shape[1] - copies + 1]
            self.state.log_copies = math.log(copies)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.state.log_copies = None


class WeightedJointAttention:
    """diffusers' `JointAttnProcessor2_0` with the last text token's score raised by
    log(copies) while the text is shortened."""

    def __init__(self, state: _RepeatedTokens) -> None:
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        batch, image_tokens, _ = hidden_states.shape
        head_dim = attn.to_k.out_features // attn.heads

        def project(states: torch.Tensor, q: Any, k: Any, v: Any, norm_q: Any, norm_k: Any) -> Any:
            """One stream's queries, keys and values, split into heads and normed."""
            query, key, value = (
                proj(states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                for proj in (q, k, v)
            )
            if norm_q is not None:
                query = norm_q(query)
            if norm_k is not None:
                key = norm_k(key)
            return query, key, value

        query, key, value = project(
            hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k
        )
        bias = None
        if encoder_hidden_states is not None:
            text_query, text_key, text_value = project(
                encoder_hidden_states,
                attn.add_q_proj,
                attn.add_k_proj,
                attn.add_v_proj,
                attn.norm_added_q,
                attn.norm_added_k,
            )
            query = torch.cat([query, text_query], dim=2)
            key = torch.cat([key, text_key], dim=2)
            value = torch.cat([value, text_value], dim=2)
            if self.state.log_copies is not None:
                bias = torch.zeros(1, key.shape[2], dtype=query.dtype, device=query.device)
                bias[0, -1] = self.state.log_copies
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        image, text = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image)), text


@dataclass
class Speeds:
    """The tiers as this pipeline can run them, decided once at load."""

    tiers: dict[Speed, Tier]
    # Mechanism -> why this pipeline cannot take it.
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_pipeline(cls, pipe: Any) -> Speeds:
        name = type(pipe).__name__
        transformer = getattr(pipe, "transformer", None)
        unavailable = {}
        processors = getattr(transformer, "attn_processors", None) or {}
        if not processors or any(
            type(p).__name__ != "JointAttnProcessor2_0" for p in processors.values()
        ):
            unavailable["repeated_tokens"] = f"{name} has no SD3-style joint attention"
        if not _cached_blocks(transformer):
            unavailable["step_cache"] = f"{name} has no transformer blocks to predict"
        tiers = {
            speed: Tier(**{k: v for k, v in vars(tier).items() if k not in unavailable})
            for speed, tier in TIERS.items()
        }
        for mechanism, reason in unavailable.items():
            log.info("speed tiers: %s skipped: %s", mechanism.replace("_", " "), reason)
        return cls(tiers, unavailable)

    def describe(self) -> dict[str, str]:
        return {speed: tier.describe() for speed, tier in self.tiers.items()}

    @contextlib.contextmanager
    def applied(self, pipe: Any, speed: Speed) -> Iterator[None]:
        """The tier's mechanisms on PIPE for one call; the pipeline as it was afterwards."""
        tier = self.tiers[speed]
        transformer = getattr(pipe, "transformer", None)
        with contextlib.ExitStack() as stack:
            if tier.repeated_tokens:
                stack.enter_context(_repeated_tokens(transformer))
            if tier.step_cache is not None:
                stack.enter_context(_step_cache(transformer, tier.step_cache))
            yield


def _cached_blocks(transformer: Any) -> list[str]:
    """The blocks a step cache predicts: every joint block but the last."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) < 2:
        return []
    return [f"transformer_blocks.{index}" for index in range(len(blocks) - 1)]


@contextlib.contextmanager
def _repeated_tokens(transformer: Any) -> Iterator[None]:
    state = _RepeatedTokens()
    original = transformer.attn_processors
    transformer.set_attn_processor(WeightedJointAttention(state))
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_ShortenText(state), REPEATED_TOKENS_HOOK)
    try:
        yield
    finally:
        registry.remove_hook(REPEATED_TOKENS_HOOK, recurse=False)
        transformer.set_attn_processor(original)


@contextlib.contextmanager
def _step_cache(transformer: Any, cache: StepCache) -> Iterator[None]:
    config = TaylorSeerCacheConfig(
        cache_interval=cache.interval,
        disable_cache_before_step=cache.warmup,
        max_order=cache.order,
        taylor_factors_dtype=torch.float32,
        cache_identifiers=[rf"{re.escape(name)}" for name in _cached_blocks(transformer)],
    )
    apply_taylorseer_cache(transformer, config)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    # New hooks on child modules: the registry's cached list of them is stale.
    registry.invalidate_child_registries_cache()
    # SD3's pipeline opens no cache context around its transformer calls (Flux's does): one
    # context for the whole call, whose guidance halves always run together as one batch.
    _set_cache_context(transformer, CacheContext("denoise"))
    try:
        yield
    finally:
        _set_cache_context(transformer, None)
        registry.remove_hook(STEP_CACHE_HOOK, recurse=True)
        registry.invalidate_child_registries_cache()
