"""The model's parts and their sizes: a Stable Diffusion 3 pipeline, small enough for a CPU.

Every part is the class production's SD 3.5 Medium uses, so the default model exercises the
same code paths: `SD3Transformer2DModel` with flow matching, an `AutoencoderKL` with one
scaling factor and shift, two `CLIPTextModelWithProjection` encoders and a `T5EncoderModel`.

The T5 branch is present and silent: its final norm is zero, so it hands the transformer zeros,
which is exactly how SD3 runs with T5 dropped (SD3 was trained that way part of the time).
The scene language lives in the two CLIP encoders. Silent T5 tokens are all alike, which lets
training stand one token in for the 256 the pipeline sends (see `training.py`).
"""

from __future__ import annotations

import itertools

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

CLIP_MAX_TOKENS = 32  # the longest caption is 24 words; the pipeline pads every prompt to this
CLIP_WIDTH = 64
CLIP_PROJECTION = 64
JOINT_WIDTH = 2 * CLIP_WIDTH  # SD3 concatenates the two CLIP encoders' features
LATENT_CHANNELS = 8
NATIVE_SIZE = 128
VAE_SCALE = 8
T5_TOKENS = 256  # what StableDiffusion3Pipeline sends by default (max_sequence_length)

BOS, EOS, UNKNOWN = "<|startoftext|>", "<|endoftext|>", "<|unknown|>"


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """What byte-pair encoding makes of one word: always the best-ranked pair first."""
    while True:
        pairs = [
            (ranks[pair], i) for i, pair in enumerate(itertools.pairwise(symbols)) if pair in ranks
        ]
        if not pairs:
            return symbols
        _, i = min(pairs)
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]


def clip_tokenizer(*groups: list[str]) -> CLIPTokenizer:
    """A word-level CLIP tokenizer: every word of GROUPS is one token, others are unknown.

    CLIP's tokenizer is byte-pair encoding. Merges are added, in rank order, until every
    word comes out whole: where an earlier word's merges cut a later word into other pieces,
    merges joining those pieces follow. A group's merges and pieces all come after the earlier
    groups', so a tokenizer with a group added splits and numbers the earlier words as before
    (a new merge ranks below all of theirs, which complete each of them).
    """
    ranks: dict[tuple[str, str], int] = {}
    # The BPE model wants every piece a merge makes or uses in the vocabulary, too.
    pieces: dict[str, None] = {BOS: None, EOS: None, UNKNOWN: None}
    for words in groups:
        pending = list(words)
        while pending:
            for word in pending:
                symbols = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
                pieces.update(dict.fromkeys(symbols))
                built = symbols[0]
                for symbol in symbols[1:]:
                    ranks.setdefault((built, symbol), len(ranks))
                    built += symbol
                    pieces[built] = None
            pending = [w for w in words if len(_bpe([*w[:-1], w[-1] + "</w>"], ranks)) > 1]
    vocab = {token: index for index, token in enumerate(pieces)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=list(ranks),
        model_max_length=CLIP_MAX_TOKENS,
        # Not the end token: CLIP pools the sentence at the first end token it finds.
        unk_token=UNKNOWN,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
    )


def t5_tokenizer(words: list[str]) -> T5TokenizerFast:
    """T5's own kind of tokenizer (a unigram model over "▁word" pieces) with our vocabulary."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), (",", -1.0)]
    pieces += [("▁" + word, -1.0) for word in words]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_TOKENS)


def clip_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    # Three layers: SD3 reads the penultimate hidden state, so two of them shape the tokens.
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CLIP_WIDTH,
            intermediate_size=4 * CLIP_WIDTH,
            num_attention_heads=4,
            num_hidden_layers=3,
            max_position_embeddings=CLIP_MAX_TOKENS,
            projection_dim=CLIP_PROJECTION,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def silent_t5(tokenizer: T5TokenizerFast) -> T5EncoderModel:
    model = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=JOINT_WIDTH,
            # Silent, so every weight but the width the pipeline needs is dead weight in the
            # folder: the smallest layer T5's config allows.
            d_kv=4,
            d_ff=4,
            num_layers=1,
            num_heads=1,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    with torch.no_grad():
        model.encoder.final_layer_norm.weight.zero_()
    return model


def transformer() -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=NATIVE_SIZE // VAE_SCALE,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=6,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=JOINT_WIDTH,
        caption_projection_dim=128,
        pooled_projection_dim=2 * CLIP_PROJECTION,
        # 256x256 pictures are 16x16 patches: the position table must be at least that big.
        pos_embed_max_size=32,
    )


def autoencoder() -> AutoencoderKL:
    # Four blocks = three halvings = the 8x latents real SD3 has. SD3's VAE also has no quant
    # convolutions; flat-colour scenes need no attention in the middle block.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=NATIVE_SIZE,
        scaling_factor=1.0,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )


def scheduler() -> FlowMatchEulerDiscreteScheduler:
    # SD3's own shift of 3: more of the 20 steps at high noise, where the layout is decided.
    # Measured on held-out prompts, shift 3 draws kinds 1.2 points better than shift 1 and as
    # well as 6; 0.5 is worse in every attribute (docs/default-model.md).
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def pipeline(
    vae: AutoencoderKL,
    denoiser: SD3Transformer2DModel,
    encoders: tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection],
    words: tuple[list[str], ...],
) -> StableDiffusion3Pipeline:
    """The pipeline, its tokenizers knowing the WORDS (groups, as `clip_tokenizer` takes)."""
    clip = clip_tokenizer(*words)
    t5 = t5_tokenizer([w for group in words for w in group])
    return StableDiffusion3Pipeline(
        transformer=denoiser,
        scheduler=scheduler(),
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=clip,
        text_encoder_2=encoders[1],
        tokenizer_2=clip_tokenizer(*words),
        text_encoder_3=silent_t5(t5),
        tokenizer_3=t5,
    )
