"""The model's sentence-embedding side: its tokenizer, `encode`, `search`, and the folders that carry its embeddings
elsewhere (a sentence-transformers folder, an ONNX graph).

`SentenceEmbeddingMixin` is a base class of `MultiTaskModel` (as transformers' models mix in `GenerationMixin`): it
relies on the model's `config`, `embed` and `device`. `encode` runs the engine of `encoding_mtl.py`, which the torch-free
ONNX runtime shares; `top_k` is the chunked search that `search` and the retrieval metrics use.

This file travels with saved models and imports only torch, numpy, transformers and its siblings.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer
from transformers.utils import cached_file, logging

try:
    from .encoding_mtl import TokenizerLock, check_batch_size, check_texts, encode_texts
    from .tasks_mtl import pick_prompt
except ImportError:  # imported as a top-level module
    from encoding_mtl import TokenizerLock, check_batch_size, check_texts, encode_texts
    from tasks_mtl import pick_prompt

logger = logging.get_logger(__name__)
NEEDS_LIBRARY = "needs this project installed (`pip install mtl-sentence-transformer`)"


class SentenceEmbeddingMixin:
    """`tokenizer`, `encode`, `search`, `max_length`, `save_sentence_transformer` and `export_onnx` of a
    `MultiTaskModel`."""

    # ------------------------------------------------------------------ embeddings
    @property
    def tokenizer(self):
        """The tokenizer saved beside the model (loaded on first use); settable. `AttributeError` when there is none,
        so `getattr(model, "tokenizer", None)` and `hasattr` work."""
        if self._tokenizer is None:
            source = self.name_or_path or getattr(self.config, "name_or_path", None)
            try:
                # With the encoder's config given, AutoTokenizer does not load config.json, whose remote-code
                # `auto_map` makes transformers ask "Do you wish to run the custom code?" where this project is absent.
                if source is None or cached_file(source, "tokenizer_config.json",
                                                 _raise_exceptions_for_missing_entries=False,
                                                 _raise_exceptions_for_connection_errors=False) is None:
                    raise OSError("no tokenizer_config.json")
                self._tokenizer = AutoTokenizer.from_pretrained(source, config=self.config.encoder)
            except (OSError, ValueError, TypeError) as error:
                raise AttributeError(
                    f"No tokenizer found beside the model at {source!r}: pass `tokenizer=` or save one there "
                    f"with `tokenizer.save_pretrained(...)`."
                ) from error
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    def __getattr__(self, name: str):
        if name == "tokenizer":  # the property raised: keep its message (nn.Module.__getattr__ would replace it)
            return type(self).tokenizer.fget(self)
        return super().__getattr__(name)

    # sentence-transformers' evaluators read `similarity_fn_name` and record their metrics through
    # `model_card_data.set_evaluation_metrics`; with these (and `encode`'s keywords) they run on this model directly.
    similarity_fn_name = "cosine"

    @property
    def model_card_data(self):
        """Where sentence-transformers' evaluators record their metrics (`model.model_card_data.metrics`)."""
        if "_evaluation_log" not in self.__dict__:
            try:
                from mtl_st.interop import EvaluationLog
            except ImportError as error:
                raise AttributeError(f"model_card_data {NEEDS_LIBRARY}.") from error
            self.__dict__["_evaluation_log"] = EvaluationLog()
        return self.__dict__["_evaluation_log"]

    def encode(
        self,
        sentences: str | list[str],
        tokenizer=None,
        batch_size: int = 32,
        normalize: bool | None = None,
        device: str | torch.device | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        *,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool | None = None,
        precision: str | None = "float32",
        output_value: str | None = "sentence_embedding",
        prompt: str | None = None,
        prompt_name: str | None = None,
        truncate_dim: int | None = None,
        **ignored: Any,
    ):
        """Embed sentences: `[n, hidden]` (numpy by default, else a CPU torch tensor); one string gives `[hidden]`.

        Sentences are tokenised a chunk at a time, sorted by token count within it so that each batch holds
        sentences of about the same length, embedded batch by batch under `torch.inference_mode`, and returned in the
        input order (`encoding_mtl.encode_texts`). Texts are truncated to `config.max_seq_length` (or the tokenizer's
        limit). `normalize=None` follows `config.normalize_embeddings`. `tokenizer=None` uses the tokenizer saved
        beside the model. Safe to call from several threads at once: the model's train/eval mode is never switched
        (a model in training mode encodes through an eval-mode view that shares its weights).

        sentence-transformers' `encode` keywords are accepted, so its evaluators run on this model directly:
        `convert_to_tensor` (a torch tensor), `normalize_embeddings` (same as `normalize`), `prompt` (prepended to
        every sentence), `truncate_dim` (first dimensions, normalised after truncation) and `precision` (`float32`
        or `None`; `int8`/`uint8`/`binary`/`ubinary` through sentence-transformers' `quantize_embeddings`) are
        honoured. `prompt_name` (`query`, `document`) picks one of the model's named prompts (a retrieval task's
        `prompts`; `prompt` wins when both are given). `output_value` must be `"sentence_embedding"`. Any other
        keyword (`pool`, `chunk_size`, ...) is ignored: one process encodes everything.
        """
        batch_size = check_batch_size(batch_size, "encode")
        if output_value != "sentence_embedding":
            raise ValueError(f"encode() returns sentence embeddings only, not output_value={output_value!r}.")
        prompt = pick_prompt(self.config.prompts, prompt, prompt_name)
        if ignored:
            logger.info(f"encode() ignores {sorted(ignored)} (sentence-transformers options without an effect here).")
        texts, single = check_texts(sentences, "encode")
        if prompt:
            texts = [prompt + text for text in texts]
        if normalize is None:
            normalize = normalize_embeddings if normalize_embeddings is not None else self.config.normalize_embeddings
        hidden = self.config.encoder.hidden_size
        width = hidden if truncate_dim is None else int(truncate_dim)
        if not 0 < width <= hidden:
            raise ValueError(f"truncate_dim must be in [1, {hidden}], got {truncate_dim!r}.")
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if device is not None:
            self.to(device)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and len(texts) > 10 * batch_size

        embeddings = encode_texts(texts, self._tokenize_for_encode(tokenizer),
                                  self._embed_for_encode(width, bool(normalize)), width, batch_size,
                                  pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                                  pad_type_id=getattr(tokenizer, "pad_token_type_id", 0) or 0,
                                  progress=_progress_bar(len(texts)) if show_progress_bar else None)
        if precision not in (None, "float32"):
            try:
                from mtl_st.interop import quantize
            except ImportError as error:
                raise ImportError(f"encode(precision={precision!r}) {NEEDS_LIBRARY}.") from error
            embeddings = quantize(embeddings, precision, convert_to_tensor)
            return embeddings[0] if single else embeddings
        if single:
            embeddings = embeddings[0]
        return torch.from_numpy(embeddings) if convert_to_tensor or not convert_to_numpy else embeddings

    def _tokenize_for_encode(self, tokenizer):
        """`encode_texts`' tokenize: token ids (and token type ids where the encoder takes them), truncated."""
        max_length = self.max_length(tokenizer)
        want_types = self._encoder_takes_token_type_ids and "token_type_ids" in getattr(
            tokenizer, "model_input_names", ("token_type_ids",))
        lock = TokenizerLock.of(tokenizer)

        def tokenize(texts: list[str]):
            with lock:
                encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                                    return_attention_mask=False, return_token_type_ids=want_types)
            return encoded["input_ids"], encoded.get("token_type_ids") if want_types else None

        return tokenize

    def _embed_for_encode(self, width: int, normalize: bool):
        """`encode_texts`' run: one padded numpy batch through the encoder and pooling, in eval mode, no gradients."""
        model = self._inference_view()
        device = self.device

        def run(ids: np.ndarray, mask: np.ndarray | None, types: np.ndarray | None) -> np.ndarray:
            with torch.inference_mode():
                pooled = model.embed(torch.from_numpy(ids).to(device),
                                     torch.from_numpy(mask).to(device) if mask is not None else None,
                                     torch.from_numpy(types).to(device) if types is not None else None)
                pooled = pooled[:, :width]
                if normalize:
                    pooled = nn.functional.normalize(pooled, p=2, dim=-1)
                return pooled.float().cpu().numpy()

        return run

    def _inference_view(self):
        """The model itself in eval mode, or, while it is training, an eval-mode copy of its modules that shares every
        parameter and buffer (so no thread ever sees the model's mode change, and dropout never runs in `encode`)."""
        if not self.training:
            return self
        tensors = [*self.parameters(), *self.buffers()]
        key = tuple((id(t), t.device) for t in tensors)
        if self._eval_view is None or self._eval_view[0] != key:
            memo = {id(t): t for t in tensors}
            for unshared in (self._eval_view, self._tokenizer, self.__dict__.get("_evaluation_log")):
                memo[id(unshared)] = None  # not needed by the view: left out of the copy
            view = copy.deepcopy(self, memo)
            view.eval()
            self._eval_view = (key, view)
        return self._eval_view[1]

    def encode_query(self, sentences, **kwargs):
        """`encode` with the model's `query` prompt when it has one (sentence-transformers' `encode_query`)."""
        if "query" in self.config.prompts and kwargs.get("prompt") is None:
            kwargs.setdefault("prompt_name", "query")
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences, **kwargs):
        """`encode` with the model's `document` prompt when it has one (sentence-transformers' `encode_document`)."""
        if "document" in self.config.prompts and kwargs.get("prompt") is None:
            kwargs.setdefault("prompt_name", "document")
        return self.encode(sentences, **kwargs)

    def similarity(self, embeddings_a, embeddings_b) -> torch.Tensor:
        """Cosine similarities `[len(a), len(b)]` of two sets of embeddings (sentence-transformers' `similarity`)."""
        a = nn.functional.normalize(torch.as_tensor(np.asarray(embeddings_a, dtype=np.float32)).reshape(
            -1, np.shape(embeddings_a)[-1]), dim=-1)
        b = nn.functional.normalize(torch.as_tensor(np.asarray(embeddings_b, dtype=np.float32)).reshape(
            -1, np.shape(embeddings_b)[-1]), dim=-1)
        return a @ b.T

    def search(self, queries: str | list[str], corpus: list[str], top_k: int = 10, batch_size: int = 32,
               tokenizer=None) -> list[list[tuple[int, float]]]:
        """Each query's `top_k` nearest corpus texts by cosine, best first, as `(corpus_index, score)` lists (one
        string gives one list). Queries get the model's `query` prompt and the corpus its `document` prompt, when
        the model has them."""
        queries, single = check_texts(queries, "search")
        prompts = self.config.prompts
        query_vectors = self.encode(queries, tokenizer, batch_size, normalize=True, prompt=prompts.get("query"))
        corpus_vectors = self.encode(check_texts(corpus, "search")[0], tokenizer, batch_size, normalize=True,
                                     prompt=prompts.get("document"))
        scores, indices = top_k_search(query_vectors, corpus_vectors, top_k)
        ranked = [list(zip(row_indices.tolist(), row_scores.tolist())) for row_scores, row_indices in
                  zip(scores, indices)]
        return ranked[0] if single else ranked

    def max_length(self, tokenizer) -> int:
        """Truncation length: `config.max_seq_length`, capped by the tokenizer's and the encoder's limits."""
        limits = [self.config.max_seq_length, getattr(self.config.encoder, "max_position_embeddings", None)]
        model_max = getattr(tokenizer, "model_max_length", None)
        if model_max is not None and model_max < 1_000_000:
            limits.append(model_max)
        limits = [int(limit) for limit in limits if limit]
        return min(limits) if limits else 512


    def save_sentence_transformer(self, path: str | os.PathLike, tokenizer=None) -> None:
        """Write the encoder + pooling (+ normalisation) as a sentence-transformers folder; the heads are left out.

        `SentenceTransformer(path)` loads it with no remote code and embeds as `self.encode` does: same encoder
        weights, pooling mode, `max_seq_length` and normalisation. `tokenizer=None` uses the saved tokenizer.
        """
        try:
            from mtl_st.interop import save_sentence_transformer
        except ImportError as error:
            raise ImportError(f"save_sentence_transformer {NEEDS_LIBRARY}.") from error
        save_sentence_transformer(self, path, tokenizer)

    def export_onnx(self, path: str | os.PathLike, quantize: str | None = None, tokenizer=None, **kwargs: Any):
        """Write an ONNX folder (graph with outputs `embeddings` and `<task>_logits`, tokenizer, config) that
        `mtl_st.onnx.OnnxMultiTaskModel.from_pretrained` runs without torch. `quantize="int8"`: dynamic per-channel
        int8. Needs the installed project and its `onnx` extra; see `mtl_st.onnx.export_onnx` for `**kwargs`."""
        try:
            from mtl_st.onnx.export import export_onnx
        except ImportError as error:
            raise ImportError(
                f"export_onnx {NEEDS_LIBRARY} with its onnx extra: `pip install 'mtl-sentence-transformer[onnx]'` "
                "(onnx, onnxscript, onnxruntime)."
            ) from error
        return export_onnx(self, path, quantize=quantize, tokenizer=tokenizer, **kwargs)


def top_k_search(queries, corpus, k: int = 100, query_chunk: int = 256, corpus_chunk: int = 50_000) -> tuple:
    """`(scores, indices)`, each `[n_queries, min(k, n_corpus)]` torch tensors: every query's `k` nearest corpus rows
    by cosine, best first (ties by the lower corpus index, as sentence-transformers breaks them). A chunked matrix
    product with `torch.topk`: queries x corpus is never held whole, nor is a normalised copy of the corpus made (a
    100k-document corpus needs its embeddings and one `query_chunk x corpus_chunk` block of scores)."""
    queries = nn.functional.normalize(torch.as_tensor(np.asarray(queries, dtype=np.float32)), p=2, dim=-1)
    corpus = torch.as_tensor(np.asarray(corpus, dtype=np.float32))  # not copied: its norms divide the scores
    inverse_norms = 1.0 / corpus.norm(dim=-1).clamp_min(1e-12)
    k = min(k, len(corpus))
    all_scores = torch.empty(len(queries), k)
    all_indices = torch.empty(len(queries), k, dtype=torch.long)
    for q_start in range(0, len(queries), query_chunk):
        block = queries[q_start : q_start + query_chunk]
        best_scores = torch.full((len(block), 0), -math.inf)
        best_indices = torch.empty((len(block), 0), dtype=torch.long)
        for c_start in range(0, len(corpus), corpus_chunk):
            scores = (block @ corpus[c_start : c_start + corpus_chunk].T).mul_(inverse_norms[c_start : c_start + corpus_chunk])
            chunk_scores, chunk_indices = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
            merged_indices = torch.cat([best_indices, chunk_indices + c_start], dim=1)
            best_scores, position = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
            best_indices = torch.gather(merged_indices, 1, position)
        order = torch.from_numpy(np.lexsort((best_indices.numpy(), -best_scores.numpy()), axis=1))
        all_scores[q_start : q_start + len(block)] = torch.gather(best_scores, 1, order)
        all_indices[q_start : q_start + len(block)] = torch.gather(best_indices, 1, order)
    return all_scores, all_indices


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="Encoding", unit="sentence")

    def progress(done: int) -> None:
        bar.update(done)
        if bar.n >= total:
            bar.close()

    return progress


__all__ = ["SentenceEmbeddingMixin", "top_k_search", "NEEDS_LIBRARY"]
