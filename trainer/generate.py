"""Sample text from a phi model: temperature / top-k / top-p (nucleus), KV-cached decoding.

`generate` works on token ids; `generate_text` on strings with a `tokenizers.Tokenizer`;
`load_model` reads an exported HF directory (trainer/export.py) or a `.safetensors`/`.pt` state dict.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from trainer.files import load_weights
from trainer.model import KVCache, Phi


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids `[B]` from last-position logits `[B, V]`; temperature 0 is greedy."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError(f"bad sampling settings: temperature={temperature}, top_k={top_k}, top_p={top_p}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model: Phi, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             vocab_limit: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Continue `input_ids [B, T]` by up to `max_new_tokens`; rows that emit `eos_id` stop (padded with it).

    `vocab_limit` masks the padding rows of the embedding (ids >= the tokenizer's size). Beyond the
    context window (or with `use_cache=False`) it recomputes over the last `max_position_embeddings` tokens."""
    model.eval()
    ctx = model.config.max_position_embeddings
    B, T = input_ids.shape
    if T == 0:
        raise ValueError("empty prompt: give at least one token (e.g. the EOS id)")
    cached = use_cache and T + max_new_tokens <= ctx
    cache = KVCache(model.config, B, T + max_new_tokens, input_ids.device,
                    next(model.parameters()).dtype) if cached else None
    out, done, pos = input_ids, torch.zeros(B, dtype=torch.bool, device=input_ids.device), 0
    for _ in range(max_new_tokens):
        if cached:
            logits = model(out[:, pos:], cache=cache, start_pos=pos)[:, -1]
            pos = out.shape[1]
        else:
            logits = model(out[:, -ctx:])[:, -1]
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out = torch.cat([out, nxt[:, None]], 1)
        if eos_id is not None and bool(done.all()):
            break
    return out


def generate_text(model: Phi, tokenizer, prompts: list[str], max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int | None = 50, top_p: float | None = 0.95, seed: int | None = None,
                  stop_at_eos: bool = True) -> list[str]:
    """Continuations (prompt excluded) of each prompt; prompts are run one by one (no padding needed)."""
    from trainer.tokenizer import EOS_TOKEN

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    eos = tokenizer.token_to_id(EOS_TOKEN)
    as_trained = as_prepare_encodes(tokenizer)
    texts = []
    for prompt in prompts:
        ids = as_trained.encode(prompt, add_special_tokens=False).ids
        if not ids and eos is None:
            raise ValueError(f"an empty prompt starts from the tokenizer's {EOS_TOKEN}, and this tokenizer has none: "
                             f"give a prompt (-p)")
        ids = ids or [eos]
        x = torch.tensor([ids], device=device)
        y = generate(model, x, max_new_tokens, temperature, top_k, top_p, eos if stop_at_eos else None,
                     vocab_limit=tokenizer.get_vocab_size(), generator=gen)
        new = [i for i in y[0, len(ids):].tolist() if not (stop_at_eos and i == eos)]
        texts.append(tokenizer.decode(new, skip_special_tokens=False))
    return texts


def as_prepare_encodes(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` that encodes text as `prepare` encodes a document (`trainer.data`): a `<|endoftext|>`
    written in it is spelled out as text, as training saw it inside documents (EOS came only after each one).
    Encoded as the EOS id, such a prompt asked the model to start a new document there."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy


def load_model(path: str | Path, device: str = "cpu", config_name: str | None = None, **overrides) -> Phi:
    """A `Phi` from an exported HF directory (config.json + safetensors), or from a bare state-dict file
    (`.safetensors`, or a `.pt` holding a state dict or `{"model": state_dict, ...}`) given `config_name`."""
    from trainer.export import load_hf
    from trainer.model import CONFIGS

    p = Path(path)
    if p.is_dir():
        model = load_hf(p, **overrides)
    elif p.is_file():
        if config_name not in CONFIGS:
            raise ValueError(f"{p}: a bare weights file needs config_name, one of {sorted(CONFIGS)}")
        state = load_weights(p)
        state = state.get("model", state)
        state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
        model = Phi(CONFIGS[config_name])
        for k, v in overrides.items():
            setattr(model.config, k, v)
        model.load_state_dict(state)
    else:
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return model.to(device).eval()
