"""RuntimeSettings: the runtime's whole configuration, read from the environment once."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wire.fields import Speed

Dtype = Literal["auto", "bfloat16", "float16", "float32", "native"]
Offload = Literal["false", "true", "model", "sequential"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Compile = Literal["off", "default", "max-autotune"]


class SettingsError(SystemExit):
    """Raised at start when the environment is wrong; exits with a message naming the variable."""


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    model_id: str = Field("/mnt/models", description="Local folder or hub id of the pipeline")
    model_name: str = Field("model", description="Name on the KServe endpoint path")
    dtype: Dtype = "auto"
    enable_low_cpu_mem: bool = True
    enable_attention_slicing: bool = False
    enable_vae_slicing: bool = False
    enable_cpu_offload: Offload = "false"
    torch_threads: int | None = Field(None, ge=1)
    # Text for a terminal; the container images set json, what log collectors expect.
    log_format: LogFormat = "text"
    log_level: LogLevel = "INFO"
    # The address KServe's REST server listens on: every interface in a pod (KServe's own choice,
    # which it offers no flag for); the local stack and the tests set 127.0.0.1.
    host: str = "0.0.0.0"

    max_pixels: int = Field(1024 * 1024, ge=64 * 64)
    max_steps: int = Field(100, ge=1)
    max_images_per_request: int = Field(4, ge=1)
    max_prompt_chars: int = Field(2000, ge=1)
    default_steps: int = Field(20, ge=1)
    default_guidance_scale: float = Field(7.0, ge=0)
    # OpenAI's `quality` as step presets: low, medium (= DEFAULT_STEPS) and high. Unset, low is
    # half the default steps and high twice them, within MAX_STEPS.
    quality_low_steps: int | None = Field(None, ge=1)
    quality_high_steps: int | None = Field(None, ge=1)
    default_strength: float = Field(0.8, gt=0, le=1)
    # The tier a request without `speed` gets. balanced drew the default model's evaluation
    # exactly as exact does, 1.7-2.6x faster (docs/performance.md); exact is diffusers' bytes.
    default_speed: Speed = "balanced"
    # torch.compile of the denoiser's transformer blocks (regional: one compiled block serves
    # all), warmed up before the runtime reports ready at each of COMPILE_WARMUP_SIZES
    # ("WxH,WxH"; empty: the model's default size) in every speed tier.
    compile: Compile = "off"
    compile_warmup_sizes: str = Field("", pattern=r"^(\d+x\d+(,\d+x\d+)*)?$")
    max_input_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_input_pixels: int = Field(4096 * 4096, ge=64 * 64)

    # LoRA adapters (adapters.py): each a folder diffusers' save_lora_weights wrote, or one
    # .safetensors file (diffusers' or Kohya's layout), under LORA_DIR; unset, the `loras`
    # folder of a local model (KServe's /mnt/models/loras). Read on first use (or at start:
    # LORA_PRELOAD, comma-separated), LORA_CACHE_SIZE of them kept in the pipeline.
    lora_dir: str | None = None
    max_loras_per_request: int = Field(4, ge=1)
    lora_cache_size: int = Field(8, ge=1)
    lora_preload: str = Field("", pattern=r"^([A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*)?$")

    # Dynamic batching: requests that can share one pipeline call wait up to the window.
    # A batch size of 1 turns batching off.
    max_batch_size: int = Field(4, ge=1)
    batch_window_ms: float = Field(10.0, ge=0)

    # After SIGTERM (a scale-down, a rollout) the generations under way get this long to
    # finish; the pod's terminationGracePeriodSeconds must be longer still. KServe's own 30 s
    # is shorter than a long generation on a busy GPU.
    shutdown_grace_seconds: int = Field(30, ge=1)

    @field_validator("quality_low_steps", "quality_high_steps")
    @classmethod
    def _within_max_steps(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = info.data.get("max_steps")
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"more than MAX_STEPS ({limit}); lower it or raise MAX_STEPS")
        return value

    @field_validator("lora_cache_size")
    @classmethod
    def _holds_a_request(cls, value: int, info: ValidationInfo) -> int:
        most = info.data.get("max_loras_per_request")
        if most is not None and value < most:
            raise ValueError(
                f"smaller than MAX_LORAS_PER_REQUEST ({most}): one request's adapters must fit"
            )
        return value

    def preloaded_loras(self) -> list[str]:
        return self.lora_preload.split(",") if self.lora_preload else []

    def warmup_sizes(self) -> list[tuple[int, int]]:
        return (
            [
                (int(width), int(height))
                for width, height in (
                    size.split("x") for size in self.compile_warmup_sizes.split(",")
                )
            ]
            if self.compile_warmup_sizes
            else []
        )

    def quality_steps(self, default_steps: int | None = None) -> dict[str, int]:
        """Steps per quality preset; `auto` and DALL-E 3's `standard` / `hd` map onto them.
        Medium is the served default: DEFAULT_STEPS, or the steps given (a model's serving.json)."""
        medium = min(default_steps or self.default_steps, self.max_steps)
        return {
            "low": self.quality_low_steps or max(1, medium // 2),
            "medium": medium,
            "high": self.quality_high_steps or min(medium * 2, self.max_steps),
        }

    @field_validator("enable_cpu_offload", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _uppercase(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def load_settings() -> RuntimeSettings:
    try:
        return RuntimeSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']} (got {err['input']!r})"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid runtime configuration: {problems}") from None
