"""Hugging Face transformers as brainsurgeon models (optional extra ``brainsurgeon[hf]``).

:class:`HFEncoder` wraps a ``transformers`` encoder so it is an ordinary tensor-in,
tensor-out module that every verb understands:

* input ``x`` (N, 2, L) int64: ``x[:, 0]`` the token ids, ``x[:, 1]`` the attention mask
  (or a tokenizer's dict batch, called as ``model(**batch)`` or ``model(batch)``);
* output (N, D): the sentence embedding, ``mean_t(h_t * m_t) / sum_t m_t`` over the last
  hidden states (mean pooling, as sentence-transformers' model cards say), L2-normalised
  when ``normalize``; or the logits of a sequence-classification head.

Padding columns that no sample of a batch uses are trimmed before the encoder (exact: the
mask removes them anyway), so short sentences padded to 128 tokens cost what they are.

The model spec is ``{"name": "hf", "kwargs": {"config": <config.json>, "head", "pooling",
"normalize", "source"}}``: a run rebuilds the architecture from the recorded config (no
download, no weights file of the original needed) and loads its own tensors. Only
safetensors weights are read (no pickle). ``transformers`` is imported here and only here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .adapters.rows import valid_rows

HEADS = ("embedding", "classification")
POOLINGS = ("mean", "cls")


def transformers_module():
    """``import transformers`` offline, or a clear error naming the extra."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "Hugging Face models need the transformers package: "
            "pip install 'brainsurgeon[hf]' -c constraints.txt"
        ) from None
    transformers.logging.set_verbosity_error()
    _register_layer_types(transformers)
    return transformers


class HFEncoder(nn.Module):
    """A ``transformers`` encoder as ``(N, 2, L) int64 -> (N, D)``; see the module docstring."""

    def __init__(
        self,
        backbone: nn.Module,
        head: str = "embedding",
        pooling: str = "mean",
        normalize: bool = True,
        trim: bool = True,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.head, self.pooling, self.normalize, self.trim = head, pooling, normalize, trim

    def forward(self, x: Tensor | dict[str, Tensor] | None = None, **batch: Tensor) -> Tensor:
        ids, mask, types = self._unpack(x, batch)
        concrete = _concrete(mask)
        if self.trim and concrete:
            used = int(mask.sum(1).max().item()) if mask.numel() else 0
            keep = max(used, 1)
            ids, mask = ids[:, :keep], mask[:, :keep]
            types = None if types is None else types[:, :keep]
        kwargs = {"input_ids": ids, "attention_mask": mask if concrete else _additive(mask)}
        if types is not None:
            kwargs["token_type_ids"] = types
        with valid_rows(mask if concrete else None):  # statistics skip the padding
            out = self.backbone(**kwargs)
        if self.head == "classification":
            return out.logits
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    def example_input(self, shape: tuple[int, ...] = (2, 128), batch: int = 1) -> Tensor:
        """A full-length input (B, 2, L): token ids 1.. (no padding), attention mask 1."""
        length = int(shape[-1])
        vocab = int(getattr(self.backbone.config, "vocab_size", 2))
        ids = (torch.arange(length) % max(vocab - 1, 1) + 1).expand(batch, length)
        return torch.stack([ids, torch.ones_like(ids)], 1).contiguous()

    @staticmethod
    def _unpack(x, batch) -> tuple[Tensor, Tensor, Tensor | None]:
        if isinstance(x, dict):
            batch = {**x, **batch}
        elif x is not None:
            if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] not in (2, 3):
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ConfigError(
                    f"a Hugging Face model takes token ids and attention mask stacked as "
                    f"(N, 2, L) int64 (or a tokenizer's dict batch), got {shape}"
                )
            x = x.long()
            return x[:, 0], x[:, 1], (x[:, 2] if x.shape[1] == 3 else None)
        if "input_ids" not in batch:
            raise ConfigError("a dict batch needs 'input_ids' (and 'attention_mask')")
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        return ids, mask, batch.get("token_type_ids")


def _concrete(mask: Tensor) -> bool:
    """Whether ``mask`` holds real values (not traced, compiled or batched by vmap), so the
    unused padding can be trimmed by looking at it."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    try:
        from torch._C._functorch import is_batchedtensor, is_gradtrackingtensor
    except ImportError:  # pragma: no cover - older torch
        return True
    return not (is_batchedtensor(mask) or is_gradtrackingtensor(mask))


def _additive(mask: Tensor) -> Tensor:
    """The (B, 1, 1, L) additive attention mask transformers builds itself, made here without
    data-dependent checks (so per-sample statistics can ``vmap`` the model)."""
    dtype = torch.get_default_dtype()
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _register_layer_types(transformers) -> None:
    """Teach the layout table, the layer-input statistics and the tracer transformers' types."""
    from ..curvature.layer_inputs import INPUT_RULES, _linear
    from .adapters.tensors import LAYOUTS, TensorLayout, _weight_and_bias

    conv1d = getattr(transformers.pytorch_utils, "Conv1D", None)
    if conv1d is not None and conv1d not in LAYOUTS:
        # GPT-2's Conv1D stores the weight transposed: (in_features, out_features).
        LAYOUTS[conv1d] = lambda m: _weight_and_bias(m, TensorLayout("weight", 1, 0))
        INPUT_RULES[conv1d] = _linear
    from ..structured.hf_rules import register as register_structured

    register_structured()


def read_hf_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked; a clear error otherwise."""
    if not path.is_dir():
        raise ConfigError(
            f"{path} is not a Hugging Face model directory; pass a folder with config.json and "
            "model.safetensors (e.g. from save_pretrained), or 'minilm'"
        )
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ConfigError(f"{path} has no config.json; it is not a Hugging Face model directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{cfg_path} is not valid JSON ({err}); re-download the model") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise ConfigError(f"{cfg_path} has no 'model_type'; it is not a transformers config")
    return cfg


def _weights_file(path: Path) -> Path:
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found[0]
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise ConfigError(
            f"{path} holds only pickled weights (.bin/.pt), which brainsurgeon does not load; "
            "convert them to safetensors (model.save_pretrained(dir, safe_serialization=True))"
        )
    raise ConfigError(f"{path} has no model.safetensors; the model directory holds no weights")


def _backbone_class(transformers, head: str):
    return (
        transformers.AutoModelForSequenceClassification
        if head == "classification"
        else transformers.AutoModel
    )


def build_backbone(config: dict[str, Any], head: str, attn: str = "sdpa") -> nn.Module:
    """A randomly initialised ``transformers`` model of ``config`` (weights are loaded after)."""
    tf = transformers_module()
    model_type = config.get("model_type")
    try:
        cfg = tf.AutoConfig.for_model(
            model_type, **{k: v for k, v in config.items() if k != "model_type"}
        )
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"no Hugging Face adapter for model type {model_type!r} ({err}); brainsurgeon "
            "wraps transformers' AutoModel / AutoModelForSequenceClassification families"
        ) from None
    cfg._attn_implementation = attn
    kwargs = {"add_pooling_layer": False} if head == "embedding" and _has_pooler(cfg) else {}
    with torch.device("cpu"):
        return _backbone_class(tf, head).from_config(cfg, **kwargs)


def _has_pooler(cfg) -> bool:
    return cfg.model_type in ("bert", "roberta", "xlm-roberta", "camembert", "ernie")


def hf(
    input_shape,
    num_classes,
    config: dict[str, Any],
    head: str = "embedding",
    pooling: str = "mean",
    normalize: bool = True,
    source: str | None = None,
    attn: str = "sdpa",
) -> nn.Module:
    """Rebuild an :class:`HFEncoder` from its recorded ``config`` (placeholder weights)."""
    return HFEncoder(build_backbone(config, head, attn), head, pooling, normalize)


def load_pretrained(
    path: str | os.PathLike,
    *,
    head: str = "embedding",
    max_length: int = 128,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> HFEncoder:
    """Load a Hugging Face model directory (config.json + safetensors) as an :class:`HFEncoder`
    carrying a brainsurgeon spec. ``pooling``/``normalize`` default to the
    sentence-transformers files next to the model (``1_Pooling``, ``modules.json``), else
    mean pooling and normalisation."""
    from safetensors.torch import load_file

    from ..state import set_spec
    from .builders import model_spec

    path = Path(path).expanduser().resolve()
    config = read_hf_config(path)
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if isinstance(positions, int) and int(max_length) > positions:
        raise ConfigError(
            f"max_length {max_length} is longer than the {positions} positions the model has "
            f"(max_position_embeddings in {path / 'config.json'}); use at most {positions}"
        )
    weights = _weights_file(path)
    st_pool, st_norm = _sentence_transformers_options(path)
    pooling = pooling or st_pool
    normalize = st_norm if normalize is None else normalize
    model = hf(None, 0, config, head=head, pooling=pooling, normalize=normalize)
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ConfigError(f"{weights} is not a readable safetensors file ({err})") from None
    _load_backbone_tensors(model.backbone, tensors, weights)
    hidden = int(config.get("hidden_size") or config.get("dim") or config.get("n_embd") or 0)
    num_out = int(config.get("num_labels", 2)) if head == "classification" else hidden
    kwargs = dict(config=config, head=head, pooling=pooling, normalize=normalize, source=str(path))
    set_spec(model, model_spec("hf", (2, int(max_length)), num_out, kwargs))
    return model.eval()


def _load_backbone_tensors(backbone: nn.Module, tensors: dict[str, Tensor], where: Path) -> None:
    """Load ``tensors`` whatever prefix the checkpoint uses (``bert.``, ``model.``, none)."""
    own = backbone.state_dict()
    prefix = getattr(backbone, "base_model_prefix", "")
    mapped = {}
    for key, value in tensors.items():
        for cand in (key, key.removeprefix(f"{prefix}."), f"{prefix}.{key}"):
            if cand in own:
                mapped[cand] = value
                break
    missing = [k for k in own if k not in mapped and "position_ids" not in k]
    if missing:
        raise ConfigError(
            f"{where} does not match its config.json: {len(missing)} tensors are missing "
            f"(first: {missing[:3]}); the weights belong to another model"
        )
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ConfigError(
            f"{where}: {k} has shape {tuple(mapped[k].shape)} but the config needs "
            f"{tuple(own[k].shape)}; the weights belong to another model"
        )
    backbone.load_state_dict(mapped, strict=False)


def _sentence_transformers_options(path: Path) -> tuple[str, bool]:
    pooling, normalize = "mean", True
    pool_cfg = path / "1_Pooling" / "config.json"
    if pool_cfg.exists():
        try:
            cfg = json.loads(pool_cfg.read_text())
            pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    modules = path / "modules.json"
    if modules.exists():
        try:
            normalize = any(
                "Normalize" in m.get("type", "") for m in json.loads(modules.read_text())
            )
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    return pooling, normalize


def is_hf(model: nn.Module) -> bool:
    return isinstance(model, HFEncoder)


__all__ = [
    "HEADS",
    "HFEncoder",
    "build_backbone",
    "is_hf",
    "load_pretrained",
    "read_hf_config",
    "transformers_module",
]
