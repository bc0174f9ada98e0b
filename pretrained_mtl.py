"""The base class of the multi-task model: its config class and weight initialisation, and how a model is built
around an encoder checkpoint (`from_encoder`), loaded (`from_pretrained`, with its checks) and saved
(`save_pretrained`, with the pipeline, tokenizer, sentence-transformers module files and card).

This file travels with saved models and imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import logging

try:
    from .configuration_mtl import MultiTaskConfig
    from .embedding_mtl import NEEDS_LIBRARY
    from .encoding_mtl import write_sentence_transformer_modules
except ImportError:  # imported as a top-level module
    from configuration_mtl import MultiTaskConfig
    from embedding_mtl import NEEDS_LIBRARY
    from encoding_mtl import write_sentence_transformer_modules

logger = logging.get_logger(__name__)
CUSTOM_PIPELINE = {"impl": "pipeline_mtl.MultiTaskPipeline", "pt": ["AutoModel"], "type": "text"}


class MultiTaskPreTrainedModel(PreTrainedModel):
    config_class = MultiTaskConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the heads. The encoder is a `PreTrainedModel` and initialises itself with its own scheme."""
        if isinstance(module, nn.Linear):
            std = getattr(self.config.encoder, "initializer_range", 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | os.PathLike,
        tasks: list[dict],
        pooling: str = "mean",
        normalize_embeddings: bool = False,
        classifier_dropout: float | None = None,
        max_seq_length: int | None = None,
        **encoder_kwargs: Any,
    ) -> MultiTaskPreTrainedModel:
        """Build a model around a pretrained encoder checkpoint; the heads are freshly initialised.

        The encoder's weights are exactly the checkpoint's (copied in after construction, so the weight
        initialisation that `post_init` runs cannot touch them). `max_seq_length` defaults to the checkpoint's
        `sentence_bert_config.json` when it has one. `encoder_kwargs` go to `AutoModel.from_pretrained`
        (e.g. `revision`, `attn_implementation`). Needs the installed project (`mtl_st.checkpoints`).
        """
        try:
            from mtl_st.checkpoints import load_encoder, read_max_seq_length, resolve_checkpoint
        except ImportError as error:
            raise ImportError(f"MultiTaskModel.from_encoder {NEEDS_LIBRARY}.") from error

        source = resolve_checkpoint(name_or_path)
        encoder_kwargs.setdefault("dtype", torch.float32)
        pretrained = load_encoder(source, **encoder_kwargs)
        if max_seq_length is None:
            max_seq_length = read_max_seq_length(source)
        encoder_config = pretrained.config.to_dict()
        encoder_config.pop("_name_or_path", None)  # a machine-specific path; the checkpoint is `base_model_name_or_path`
        config = MultiTaskConfig(
            encoder=encoder_config,
            tasks=tasks,
            pooling=pooling,
            normalize_embeddings=normalize_embeddings,
            classifier_dropout=classifier_dropout,
            max_seq_length=max_seq_length,
        )
        config.base_model_name_or_path = str(name_or_path)
        # `to_dict()` leaves out the attention implementation; without this the encoder is rebuilt with the default.
        config._attn_implementation = pretrained.config._attn_implementation
        model = cls(config)
        model.encoder.load_state_dict(pretrained.state_dict(), strict=True)
        model.name_or_path = source
        model.config.name_or_path = source
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args,
                        allow_new_heads: bool = False, **kwargs):
        """As `PreTrainedModel.from_pretrained`, refusing what would silently give a wrong model.

        - A plain encoder checkpoint (a BERT folder, a Hub id of one) is not a MultiTaskModel: loading it would build
          a default encoder around random weights. The error points to `from_encoder`.
        - A head without weights in the checkpoint (a `config.json` with an added task, weights saved without a
          head) would answer at random: the error names the tasks. `allow_new_heads=True` starts them fresh, for
          training them.
        """
        config = kwargs.get("config")
        if not isinstance(config, PretrainedConfig):
            found = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **{
                key: kwargs[key] for key in ("revision", "cache_dir", "token", "local_files_only", "subfolder")
                if key in kwargs})[0]
            if found.get("model_type") not in (None, cls.config_class.model_type):  # None: the loader says what is wrong
                raise ValueError(
                    f"{pretrained_model_name_or_path} holds a {found.get('model_type')!r} checkpoint, not a "
                    f"MultiTaskModel ({cls.config_class.model_type!r}): build one around it with "
                    f"MultiTaskModel.from_encoder({str(pretrained_model_name_or_path)!r}, tasks=[...]).")
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        heads = sorted({key.split(".")[1] for key in missing if key.startswith("heads.")})
        if heads and not allow_new_heads:
            raise ValueError(f"{pretrained_model_name_or_path} has no weights for the heads of tasks {heads} "
                             f"(missing {missing[:4]}{' ...' if len(missing) > 4 else ''}): they would answer at "
                             "random. Pass allow_new_heads=True to start them fresh for training.")
        encoder_missing = [key for key in missing if not key.startswith("heads.")]
        if encoder_missing:
            raise ValueError(f"{pretrained_model_name_or_path} lacks encoder weights {encoder_missing[:4]}"
                             f"{' ...' if len(encoder_missing) > 4 else ''}.")
        return (model, info) if wants_info else model

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """As `PreTrainedModel.save_pretrained`, plus what a Hub repo of this model needs.

        The `multitask` pipeline is declared in `custom_pipelines` (its file is copied with the model code), the
        tokenizer is saved when the model holds one, and the sentence-transformers module files (`modules.json`,
        `sentence_bert_config.json`, `1_Pooling/`, `2_Normalize/`) are written, so `SentenceTransformer(path,
        trust_remote_code=True)` embeds with this model's pooling, normalisation and `max_seq_length`. Where this
        project is installed, a model card `README.md` is written when there is none.
        """
        # Imported here, not at the top: the pipeline imports this module. transformers copies every file this module
        # imports relatively (the pipeline included) into the saved folder.
        try:
            from .pipeline_mtl import MultiTaskPipeline  # noqa: F401  (copied with the model; named in custom_pipelines)
        except ImportError:
            from pipeline_mtl import MultiTaskPipeline  # noqa: F401

        self.config.custom_pipelines = {"multitask": dict(CUSTOM_PIPELINE)}
        super().save_pretrained(save_directory, *args, **kwargs)
        self.config._prefer_registered_pipeline()
        if not kwargs.get("is_main_process", True):
            return
        if self._tokenizer is not None:
            self._tokenizer.save_pretrained(save_directory)
        write_sentence_transformer_modules(save_directory, self.config.encoder.hidden_size, self.config.pooling,
                                           self.config.normalize_embeddings, self.max_length(self._tokenizer),
                                           self.config.prompts)
        try:
            from mtl_st.modelcard import write_model_card
        except ImportError:
            return  # loaded as remote code where the project is absent: no card (the folder works without one)
        write_model_card(self, save_directory, overwrite=False)


def build_encoder(config) -> PreTrainedModel:
    """`AutoModel.from_config` without the unused pooler, where the class has one."""
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


__all__ = ["MultiTaskPreTrainedModel", "build_encoder", "CUSTOM_PIPELINE"]
