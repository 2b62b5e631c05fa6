"""Prompts of the reasoner, versioned (`PROMPT_VERSION` is recorded in every checkpoint).

A prompt is first built as neutral segments (text, or an image placeholder), then rendered to one
string with the model's chat template when its tokenizer/processor has one, else with the plain
ChatML template below (what the Qwen family uses, and what the tiny test models read):

    <|im_start|>system
    {system}<|im_end|>
    <|im_start|>user
    Query: <|vision_start|><|image_pad|><|vision_end|>{query text}
    Candidate: {candidate text}
    {instruction} Answer Yes or No.<|im_end|>
    <|im_start|>assistant
    (next token: Yes | No)

A tokenizer without `<|im_start|>` gets "User: ...\\nAssistant:" instead. Images are written as the
processor's image token (`<|image_pad|>`), which the processor expands to the image's token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROMPT_VERSION = 1
SCORE_SYSTEM = "You judge whether a search result matches a search query."

# The question asked for each (query modality, candidate modality); "image,text" is an image with text.
_PAIR_QUESTIONS = {
    ("text", "text"): "Is the candidate text relevant to the query?",
    ("text", "image"): "Does the candidate image show what the query describes?",
    ("text", "image,text"): "Does the candidate (image and text) match what the query describes?",
    ("image", "text"): "Does the candidate text describe the query image?",
    ("image", "image"): "Does the candidate image show the same thing as the query image?",
    ("image", "image,text"): "Does the candidate (image and text) match the query image?",
    ("image,text", "text"): "Does the candidate text answer the query about the query image?",
    ("image,text", "image"): "Does the candidate image match the query image as changed or asked by the query text?",
    ("image,text", "image,text"): "Does the candidate (image and text) match the query image and text?",
}
GENERIC_QUESTION = "Does the candidate match the query?"


@dataclass(frozen=True)
class Segment:
    """A piece of a user turn: text, or one image (rendered as the processor's image token)."""

    kind: str  # "text" | "image"
    text: str = ""


def pair_question(query_modality: str, candidate_modality: str) -> str:
    return _PAIR_QUESTIONS.get((query_modality, candidate_modality), GENERIC_QUESTION)


def score_segments(
    *,
    query_text: str | None,
    query_image: bool,
    candidate_text: str | None,
    candidate_image: bool,
    answers: tuple[str, str] = ("Yes", "No"),
    task: str | None = None,
) -> list[Segment]:
    """The user turn of a pointwise relevance question (score mode)."""
    q_mod = "image,text" if query_image and query_text else "image" if query_image else "text"
    c_mod = "image,text" if candidate_image and candidate_text else "image" if candidate_image else "text"
    segments = []
    if task:
        segments.append(Segment("text", f"Task: {task}\n"))
    segments.append(Segment("text", "Query: "))
    if query_image:
        segments.append(Segment("image"))
    segments.append(Segment("text", f"{query_text or ''}\nCandidate: "))
    if candidate_image:
        segments.append(Segment("image"))
    question = pair_question(q_mod, c_mod)
    segments.append(Segment("text", f"{candidate_text or ''}\n{question} Answer {answers[0]} or {answers[1]}."))
    return segments


def retllm_segments(
    *, query_text: str | None, query_image: bool, candidate_text: str | None, candidate_image: bool
) -> list[Segment]:
    """The user turn of RetLLM's question: "Does the image match the caption ...? Please output True or False.",
    its composed variant (a reference image and a modification), and the same question for other pairs."""
    ask = "Please output True or False."
    if candidate_image and not query_image and query_text:  # caption -> image
        return [Segment("image"), Segment("text", f'Does the image match the caption "{query_text}"? {ask}')]
    if query_image and not query_text and candidate_text and not candidate_image:  # image -> caption
        return [Segment("image"), Segment("text", f'Does the image match the caption "{candidate_text}"? {ask}')]
    if query_image and query_text and candidate_image:  # composed: reference image + modification -> image
        return [
            Segment("text", "Reference image: "),
            Segment("image"),
            Segment("text", "\nCandidate image: "),
            Segment("image"),
            Segment(
                "text",
                f'\nDoes the candidate image match the reference image modified as follows: "{query_text}"? {ask}',
            ),
        ]
    segments = [Segment("text", "Query: ")]
    segments += [Segment("image")] if query_image else []
    segments.append(Segment("text", f"{query_text or ''}\nCandidate: "))
    segments += [Segment("image")] if candidate_image else []
    segments.append(Segment("text", f"{candidate_text or ''}\nDoes the candidate match the query? {ask}"))
    return segments


def _chat_template_owner(tokenizer: Any, processor: Any) -> Any:
    for owner in (processor, tokenizer):
        if owner is not None and getattr(owner, "chat_template", None):
            return owner
    return None


def render(segments: list[Segment], tokenizer: Any, processor: Any = None, *, system: str | None = SCORE_SYSTEM) -> str:
    """One prompt string ending where the assistant's answer starts."""
    owner = _chat_template_owner(tokenizer, processor)
    if owner is not None:
        content = [{"type": "image"} if s.kind == "image" else {"type": "text", "text": s.text} for s in segments]
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = image_placeholder(tokenizer, processor)
    user = "".join(image if s.kind == "image" else s.text for s in segments)
    if "<|im_start|>" in tokenizer.get_vocab():
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    head = f"{system}\n" if system else ""
    return f"{head}User: {user}\nAssistant:"


def image_placeholder(tokenizer: Any, processor: Any = None) -> str:
    """The text that stands for one image before the processor expands it."""
    token = getattr(processor, "image_token", None) or "<|image_pad|>"
    vocab = tokenizer.get_vocab()
    if "<|vision_start|>" in vocab and "<|vision_end|>" in vocab:
        return f"<|vision_start|>{token}<|vision_end|>"
    return token
