"""Bodies of the OpenAI-compatible API (`/v1`), as OpenAI's API and its SDKs shape them.

A request is read as OpenAI documents it, and what this service cannot honour is refused
with a 400 that says so (`Unsupported`), never silently dropped: tools and functions, image,
audio and file content, more than one choice, a JSON response format, log probabilities.
Parameters that only tune sampling, and fields this API does not know (OpenAI adds new ones
often), are ignored. The personas' own prompt decides the conversation's system message,
so system and developer messages of the request are left out.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from personachat.errors import ChatError

# What the persona's system prompt replaces.
SYSTEM_ROLES = frozenset({"system", "developer"})
AUTO_OR_NONE = (None, "none", "auto")


class Unsupported(ChatError):
    """A request this API cannot honour (400)."""

    status_code = 400

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class ModelNotFound(ChatError):
    """OpenAI's answer for a model one may not use: 404 `model_not_found`."""

    status_code = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model {model[:100]!r} does not exist or you do not have access to it. "
            "Models are persona keys: GET /v1/models lists yours."
        )


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Only `text` parts are accepted; images, audio and files are refused (400).")
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        description="`system` and `developer` messages are replaced by the persona's system prompt; "
        "`tool` and `function` messages are refused (400)."
    )
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, description="Ignored.")

    def text(self) -> str:
        """The message's text; Unsupported for tool use and content that is not text."""
        extra = self.model_extra or {}
        if self.role in ("tool", "function") or extra.get("tool_calls") or extra.get("function_call"):
            raise Unsupported("tools_not_supported", "Tools and function calls are not supported by this API.")
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise Unsupported(
                    "unsupported_content",
                    f"Content parts of type {part.type[:40]!r} are not supported: send text only.",
                )
            texts.append(part.text)
        return "\n".join(texts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = Field(
        None, description="Send a last chunk with `usage` (null when the provider reports none) and no choices."
    )


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. Honoured: `model` (a persona key), `messages`,
    `stream`, `stream_options.include_usage`, `temperature`, `max_tokens` /
    `max_completion_tokens`. Ignored: `n: 1`, `top_p`, `stop`, `presence_penalty`,
    `frequency_penalty`, `logit_bias`, `seed`, `user`, `parallel_tool_calls`, the other
    `stream_options` and any field not named here. Refused (400): `tools`, `functions`,
    `tool_choice`/`function_call` other than none or auto, `n` > 1, a `response_format`
    other than text, `logprobs`, audio output, and content parts other than text."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=100, description="A persona key (GET /v1/models).")
    messages: list[ChatMessage] = Field(
        min_length=1,
        description="Must hold at least one user message.",
        json_schema_extra={
            "contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}
        },
    )
    stream: bool | None = Field(False, description="Answer as Server-Sent Events of `chat.completion.chunk`.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(
        None, ge=0, le=2, description="Used unless the persona pins its own temperature, which wins."
    )
    max_tokens: int | None = Field(None, ge=1, description="Capped at the model's max_output_tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, description="The same as max_tokens, which it overrides.")
    n: int | None = Field(None, ge=1, description="Only 1 (400 beyond).")
    top_p: float | None = Field(None, description="Ignored.")
    stop: str | list[str] | None = Field(None, description="Ignored.")
    presence_penalty: float | None = Field(None, description="Ignored.")
    frequency_penalty: float | None = Field(None, description="Ignored.")
    user: str | None = Field(None, description="Ignored: the user is the API key's.")
    tools: list[Any] | None = Field(None, description="Refused (400) unless empty.")
    functions: list[Any] | None = Field(None, description="Refused (400) unless empty.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Refused (400) unless none or auto.")
    function_call: str | dict[str, Any] | None = Field(None, description="Refused (400) unless none or auto.")
    response_format: dict[str, Any] | None = Field(None, description='Only `{"type": "text"}` (400 otherwise).')
    logprobs: bool | None = Field(None, description="Refused (400) when true.")

    def check_supported(self) -> None:
        """Unsupported (400) for what this API cannot honour."""
        tool_choices = (self.tool_choice, self.function_call)
        if self.tools or self.functions or any(choice not in AUTO_OR_NONE for choice in tool_choices):
            raise Unsupported("tools_not_supported", "Tools and function calls are not supported by this API.")
        if self.n is not None and self.n > 1:
            raise Unsupported("n_not_supported", "Only one choice (n=1) can be generated.")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            raise Unsupported("response_format_not_supported", "Only the text response format is supported.")
        if self.logprobs:
            raise Unsupported("logprobs_not_supported", "Log probabilities are not available.")
        extra = self.model_extra or {}
        if extra.get("audio") is not None or "audio" in (extra.get("modalities") or ()):
            raise Unsupported("unsupported_content", "Audio output is not supported: text only.")

    def conversation(self) -> list[dict[str, str]]:
        """The request's user and assistant messages as the model gets them, oldest first
        (Unsupported, 400, when there is no user message)."""
        self.check_supported()
        messages = [
            {"role": message.role, "content": message.text()}
            for message in self.messages
            if message.role not in SYSTEM_ROLES
        ]
        if not any(message["role"] == "user" for message in messages):
            raise Unsupported("invalid_request", "messages must include a user message.")
        return messages

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str = Field(description="`chatcmpl-<turn id>`.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time, seconds.")
    model: str = Field(description="The persona key that was asked for.")
    choices: list[Choice]
    usage: Usage | None = Field(None, description="When the provider reported it.")


class ModelObject(BaseModel):
    id: str = Field(description="The persona key: send it as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time a persona of one's own was made; 0 for the service's personas.")
    owned_by: Literal["builtin", "file", "user"] = Field(
        description="Where the persona comes from: built in, the ROLES_FILE, or the key's user."
    )
    name: str
    description: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, server_error, ...")
    param: str | None = None
    code: str | None = Field(None, description="A stable code: invalid_api_key, model_not_found, ...")


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError} for code in (400, 401, 403, 404, 409, 413, 429, 502, 503, 504)
}
