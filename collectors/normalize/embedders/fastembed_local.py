"""A local embedding model through ``fastembed`` (the ``embeddings`` extra), from a path only.

The directory holds what fastembed loads: ``model.onnx`` (input ids and attention mask in,
token embeddings out; mean-pooled and L2-normalised here), ``tokenizer.json``,
``tokenizer_config.json`` (``model_max_length`` and ``pad_token``) and optionally
``config.json`` and ``special_tokens_map.json``. Nothing is ever downloaded: the model is
registered under a local name, loaded with fastembed's ``specific_model_path`` and
``local_files_only``, and ``HF_HUB_OFFLINE`` is set for the process. A missing extra, a
missing directory or a model that does not load fails at start, naming the path.

>>> FastembedEmbedder("/nonexistent/model")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: normalizer.embeddings.model_path '/nonexistent/model': no model.onnx, tokenizer.json, ...
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from observer.collectors.normalize.embedders.protocol import l2_normalised

from observer.core.extras import require

FEATURE = "normalizer.embeddings.embedder: fastembed"
MODEL_FILE = "model.onnx"
REQUIRED_FILES = (MODEL_FILE, "tokenizer.json", "tokenizer_config.json")


def _register(fastembed: Any, name: str, dimension: int) -> None:
    """Register ``name`` as a mean-pooled, normalised custom model (once per process)."""
    from fastembed.common.model_description import ModelSource, PoolingType

    known = {m["model"].lower() for m in fastembed.TextEmbedding.list_supported_models()}
    if name.lower() in known:
        return
    fastembed.TextEmbedding.add_custom_model(
        model=name, pooling=PoolingType.MEAN, normalization=True,
        # A source is required by the description; with specific_model_path and
        # local_files_only it is never used.
        sources=ModelSource(hf=name), dim=dimension, model_file=MODEL_FILE,
    )


class FastembedEmbedder:
    """An :class:`~observer.collectors.normalize.embedders.protocol.Embedder` over a local
    fastembed model; its id is ``fastembed:<name>/<dimension>``."""

    def __init__(self, model_path: str, model_name: str = "", max_chars: int = 4000,
                 threads: int = 1, batch_size: int = 64) -> None:
        # The extra first: without it nothing else matters, and the message says what to do.
        fastembed = require("fastembed", extra="embeddings", feature=FEATURE)
        path = Path(model_path).expanduser()
        where = f"normalizer.embeddings.model_path {model_path!r}"
        if not model_path:
            raise ValueError("normalizer.embeddings.embedder is fastembed but model_path is empty")
        missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise ValueError(f"{where}: no {', '.join(missing)} there (a fastembed model "
                             "directory; observer never downloads models)")
        # Belt and braces: no hub call from this process, whatever a library decides.
        os.environ["HF_HUB_OFFLINE"] = "1"
        self.name = model_name or path.resolve().name
        # The registry is per process and by name: the path's hash keeps two models apart.
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        local_name = f"observer-local/{self.name}-{digest}"
        self.max_chars = max_chars
        self.batch_size = batch_size
        try:
            _register(fastembed, local_name, dimension=1)
            self.model = fastembed.TextEmbedding(
                model_name=local_name, specific_model_path=str(path), local_files_only=True,
                threads=threads, cuda=False, lazy_load=False,
            )
            probe = self._raw(["dimension probe"])
        except Exception as e:
            raise ValueError(f"{where}: the model does not load: {type(e).__name__}: {e}") from e
        self._dimension = int(probe.shape[1])
        self._id = f"fastembed:{self.name}/{self._dimension}"

    @property
    def id(self) -> str:
        return self._id

    @property
    def dimension(self) -> int:
        return self._dimension

    def _raw(self, texts: Sequence[str]) -> np.ndarray:
        rows = list(self.model.embed([t[: self.max_chars] for t in texts],
                                     batch_size=self.batch_size))
        return np.stack(rows).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return l2_normalised(self._raw(texts))
