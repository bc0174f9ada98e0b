"""The server's request and response bodies (pydantic; FastAPI writes them into the OpenAPI schema) and its errors.

Bodies follow Text Embeddings Inference (TEI) where TEI has the route (`/embed`, `/predict`, `/info`), and the
`multitask` pipeline's answers elsewhere. Errors are TEI's `{"error": str, "error_type": str}`.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from starlette.exceptions import HTTPException


class ServeError(HTTPException):
    """An error answered as `{"error", "error_type"}` with an HTTP status (an `HTTPException`, so that FastAPI passes
    it through unchanged, also from inside its reading of the body)."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(status_code=status, detail=message)
        self.status, self.error_type, self.message = status, error_type, message


def validation(message: str) -> ServeError:
    return ServeError(422, "Validation", message)


def too_large(message: str) -> ServeError:
    return ServeError(413, "Validation", message)


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong")
    error_type: str = Field(description="Validation, NotFound, Unauthorized, Overloaded, Unhealthy or Backend")


class Pair(BaseModel):
    """Two texts for a pair task (`pair_classification`, `sentence_similarity`)."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    text_pair: StrictStr


Texts = Union[StrictStr, list[StrictStr]]
TaskInputs = Union[StrictStr, Pair, list[Union[StrictStr, Pair]]]


class _Body(BaseModel):
    """Keys of an Inference-API style `"parameters"` object are read as top-level fields (huggingface_hub's
    `InferenceClient` sends `{"inputs": ..., "parameters": {...}}` for some tasks)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _lift_parameters(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("parameters"), dict):
            lifted = {key: value for key, value in data["parameters"].items()
                      if key in cls.model_fields and key not in data and value is not None}
            data = {**data, **lifted}
        return data


class EmbedRequest(_Body):
    inputs: Texts = Field(description="A text or a list of texts")
    normalize: StrictBool = Field(True, description="L2-normalise the embeddings")
    truncate: StrictBool = Field(False, description="Read only the first max_input_length tokens of a longer text "
                                                    "(false: such a text is refused with 413)")
    truncation_direction: StrictStr = Field("right", description="Only `right` (the model's truncation side)")
    dimensions: StrictInt | None = Field(None, gt=0, description="Keep the first dimensions (Matryoshka)")
    prompt_name: StrictStr | None = Field(None, description="Not supported: the model has no named prompts")


class PredictRequest(_Body):
    inputs: Texts = Field(description="A text or a list of texts")
    truncate: StrictBool = False
    raw_scores: StrictBool = Field(False, description="Logits instead of probabilities")


class TaskRequest(_Body):
    inputs: TaskInputs = Field(description="A text (or list); a pair task takes {text, text_pair} pairs")
    truncate: StrictBool = Field(False, description="Allow reading only the first max_input_length tokens where "
                                                    "the task would truncate (token tasks read long texts in windows)")
    parameters: dict[str, Any] | None = Field(None, description="Inference API parameters (accepted; the answer "
                                                                "is the pipeline's)")


class MultitaskRequest(_Body):
    inputs: TaskInputs = Field(description="A text, a {text, text_pair} pair, or a list of them")
    tasks: list[StrictStr] | None = Field(None, description="Tasks to answer (default: every task of the input's kind)")
    return_embedding: StrictBool = Field(False, description="Add the sentence embedding of each text")
    truncate: StrictBool = False


class Label(BaseModel):
    label: str
    score: float


class Entity(BaseModel):
    entity_group: str
    score: float
    word: str
    start: int
    end: int


class Score(BaseModel):
    score: float


class EmbeddingAnswer(BaseModel):
    embedding: list[float]


TaskAnswer = Union[Label, list[Entity], list[Label], Score, EmbeddingAnswer]
TaskResponse = Union[TaskAnswer, list[TaskAnswer], list[list[Label]]]
MultitaskAnswer = dict[str, Union[TaskAnswer, list[float]]]
MultitaskResponse = Union[MultitaskAnswer, list[MultitaskAnswer]]
PredictResponse = Union[list[Label], list[list[Label]]]
EmbedResponse = list[list[float]]


class TaskInfo(BaseModel):
    name: str
    type: str
    labels: list[str] | None = None


class Info(BaseModel):
    """TEI's `/info` fields, then this server's."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool = False
    tokenization_workers: int = 1
    version: str
    sha: str | None = None
    docker_label: str | None = None
    backend: str
    hidden_size: int
    pooling: str
    normalize_embeddings: bool
    tasks: list[TaskInfo]


class Health(BaseModel):
    status: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in (
        (401, "Missing or wrong API key"), (404, "Unknown task"), (413, "Too many inputs, a text over the limit "
                                                                      "with truncate false, or a body too large"),
        (422, "Not JSON, no inputs, or a non-string input"), (429, "Queue full: retry later"),
        (503, "Shutting down"),
    )
}

__all__ = ["ServeError", "ErrorResponse", "EmbedRequest", "PredictRequest", "TaskRequest", "MultitaskRequest",
           "Pair", "Label", "Entity", "Score", "Info", "Health", "TaskInfo", "ERROR_RESPONSES", "EmbedResponse",
           "PredictResponse", "TaskResponse", "MultitaskResponse", "validation", "too_large"]
